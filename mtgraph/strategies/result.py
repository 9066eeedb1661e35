"""What every strategy returns: the learned architecture and the evidence behind it.

Figures are typed values (:class:`Heatmap`, :class:`Curve`, :class:`Table`),
so a report renders each by its type instead of guessing from its shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mtgraph.errors import ConfigError
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore

__all__ = ["Decision", "StrategyResult", "Heatmap", "Curve", "Table", "Figure", "STARTS"]

#: The initial architectures a strategy's pipeline applies to: single-task networks or One-Net.
STARTS = ("stn", "one_net")


@dataclass(frozen=True)
class Heatmap:
    """A labelled matrix (similarities, affinities, policies): ``values[i][j]`` for ``rows[i]``, ``columns[j]``.

    Raises:
        ConfigError: the matrix does not have one row per row label and one column per column label.

    Examples:
        >>> from mtgraph.strategies.result import Heatmap
        >>> cka = Heatmap("CKA at block 0", ("seg", "depth"), ("seg", "depth"), ((1.0, 0.8), (0.8, 1.0)))
        >>> cka.is_square, cka.values[0][1]
        (True, 0.8)
        >>> Heatmap("bad", ("a",), ("a", "b"), ((1.0,),))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: heatmap 'bad': expected 1 rows of 2 values, got [1]
    """

    title: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(str(r) for r in self.rows))
        object.__setattr__(self, "columns", tuple(str(c) for c in self.columns))
        values = tuple(tuple(float(v) for v in row) for row in self.values)
        if len(values) != len(self.rows) or any(len(row) != len(self.columns) for row in values):
            raise ConfigError(
                f"heatmap {self.title!r}: expected {len(self.rows)} rows of {len(self.columns)} values, "
                f"got {[len(row) for row in values]}"
            )
        object.__setattr__(self, "values", values)

    @property
    def is_square(self) -> bool:
        """Whether rows and columns carry the same labels (a similarity or affinity matrix)."""
        return self.rows == self.columns

    @classmethod
    def from_matrix(cls, title: str, labels: Sequence[str], matrix: Any) -> Heatmap:
        """A heatmap whose rows and columns carry the same ``labels``; ``matrix`` is nested sequences or an array.

        Examples:
            >>> import numpy as np
            >>> from mtgraph.strategies.result import Heatmap
            >>> Heatmap.from_matrix("RSA", ["a", "b"], np.eye(2)).values
            ((1.0, 0.0), (0.0, 1.0))
        """
        rows = matrix.tolist() if hasattr(matrix, "tolist") else matrix
        return cls(title, tuple(labels), tuple(labels), tuple(tuple(row) for row in rows))


@dataclass(frozen=True)
class Curve:
    """One or more series over a common x axis (a loss curve, a budget sweep, α over epochs).

    ``series`` maps a label to one y value per x (NaN where a series has no value).

    Raises:
        ConfigError: a series whose length differs from ``x``'s.

    Examples:
        >>> from mtgraph.strategies.result import Curve
        >>> curve = Curve("loss vs budget", "budget (networks)", "total loss", (1.0, 2.0), {"exact": (1.3, 1.2)})
        >>> curve.series["exact"]
        (1.3, 1.2)
    """

    title: str
    xlabel: str
    ylabel: str
    x: tuple[float, ...]
    series: Mapping[str, tuple[float, ...]]

    def __post_init__(self) -> None:
        x = tuple(float(v) for v in self.x)
        series = {str(k): tuple(math.nan if v is None else float(v) for v in ys) for k, ys in self.series.items()}
        wrong = {k: len(ys) for k, ys in series.items() if len(ys) != len(x)}
        if wrong:
            raise ConfigError(f"curve {self.title!r}: every series needs {len(x)} values (one per x), got {wrong}")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "series", series)


@dataclass(frozen=True)
class Table:
    """Rows of values under named columns (the learned tree, α per task, a budget table).

    Raises:
        ConfigError: a row with another number of cells than there are columns.

    Examples:
        >>> from mtgraph.strategies.result import Table
        >>> table = Table("gates", ("task", "alpha"), (("seg", 0.7), ("depth", 0.4)))
        >>> table.records()[1]
        {'task': 'depth', 'alpha': 0.4}
    """

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def __post_init__(self) -> None:
        rows = tuple(tuple(row) for row in self.rows)
        bad = [i for i, row in enumerate(rows) if len(row) != len(self.columns)]
        if bad:
            raise ConfigError(f"table {self.title!r}: rows {bad} do not have {len(self.columns)} cells")
        object.__setattr__(self, "columns", tuple(str(c) for c in self.columns))
        object.__setattr__(self, "rows", rows)

    def records(self) -> list[dict[str, Any]]:
        """The rows as ``{column: value}`` dicts."""
        return [dict(zip(self.columns, row)) for row in self.rows]


#: What a strategy result's figures hold.
Figure = Heatmap | Curve | Table


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
    ``start`` is the architecture the pipeline applies to (``"stn"`` or
    ``"one_net"``): ``run_passes(start graph, params, pipeline)`` rebuilds
    ``graph`` exactly.

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
    figures: dict[str, Figure] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    start: Literal["stn", "one_net"] = "one_net"

    def __post_init__(self) -> None:
        if self.start not in STARTS:
            raise ConfigError(f"StrategyResult.start must be one of {list(STARTS)}, got {self.start!r}")
