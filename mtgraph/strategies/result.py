"""What every strategy returns: the learned architecture and the evidence behind it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore

__all__ = ["Decision", "StrategyResult"]


@dataclass(frozen=True)
class Decision:
    """One structural decision a strategy took or declined, and why.

    ``where`` names the place (a block, a layer, a budget), ``what`` the
    decision (e.g. "fuse S+E"), ``accepted`` whether it was applied, and
    ``reason`` the numbers that decided it (similarity vs threshold, ...).
    """

    where: str
    what: str
    accepted: bool
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StrategyResult:
    """A learned multi-task architecture.

    ``graph`` and ``params`` compile, cost and export like any other; the
    ``pipeline`` string reproduces the structure from the initial graph;
    ``decisions`` log every structural choice; ``figures`` hold data for the
    report (name -> (labels, matrix) for heatmaps, name -> rows for tables);
    ``history`` holds training curves and metrics.
    """

    strategy: str
    graph: MTGraph
    params: ParamStore
    decisions: tuple[Decision, ...] = ()
    pipeline: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
