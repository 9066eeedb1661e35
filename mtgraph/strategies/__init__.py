"""Structural-learning strategies: mtsl, affinity, adashare, grouping, smtl.

Every strategy is reached through :func:`registry` (name -> :class:`Strategy`)
and takes one validated :class:`~mtgraph.Problem` and, where it has one, a
:class:`~mtgraph.Budget`; it returns a :class:`StrategyResult`. A strategy sees
blocks only: it never edits a backbone's code or names its layers.
"""

from mtgraph.strategies.protocol import Architecture, Strategy, replay, start_graph
from mtgraph.strategies.registry import get_strategy, registry
from mtgraph.strategies.result import Curve, Decision, Figure, Heatmap, StrategyResult, Table

__all__ = [
    "registry", "get_strategy", "Strategy", "Architecture", "replay", "start_graph",
    "Decision", "StrategyResult", "Heatmap", "Curve", "Table", "Figure",
]
