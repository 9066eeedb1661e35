"""Structural-learning strategies: mtsl, affinity, adashare, grouping, smtl.

Each strategy drives training and rewrite passes and returns a
:class:`~mtgraph.strategies.result.StrategyResult`. A strategy sees blocks
only: it never edits a backbone's code or names its layers.
"""

from mtgraph.strategies.result import Decision, StrategyResult

__all__ = ["Decision", "StrategyResult"]
