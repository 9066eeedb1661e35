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
    ``data`` holds the same numbers, machine-readable.

    Examples:
        >>> from mtgraph.strategies.result import Decision
        >>> decision = Decision("block 3", "fuse seg+depth", True, "CKA 0.91 >= γ 0.8", {"cka": 0.91})
        >>> decision.accepted, decision.data["cka"]
        (True, 0.91)
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

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph.strategies.result import StrategyResult
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.randn(2, 3, 8, 8))
        >>> graph = mtgraph.ir.one_net(backbone.num_blocks, ("a", "b"))
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"a": nn.Conv2d(4, 1, 1), "b": nn.Conv2d(4, 1, 1)})
        >>> result = StrategyResult(strategy="one_net", graph=graph, params=params)
        >>> result.strategy, result.graph.tasks, result.decisions
        ('one_net', ('a', 'b'), ())
    """

    strategy: str
    graph: MTGraph
    params: ParamStore
    decisions: tuple[Decision, ...] = ()
    pipeline: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
