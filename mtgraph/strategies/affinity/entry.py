"""Branched multi-task networks behind the common front door: :class:`AffinityStrategy` (registered as ``"affinity"``).

Interim adapter over :func:`learn_affinity`; the strategy's own front-door work
(budget, random sampling from its search space, passes) replaces it.
"""

from __future__ import annotations

import random
from typing import ClassVar

from mtgraph.budget import Budget
from mtgraph.params import ParamStore
from mtgraph.problem import Problem
from mtgraph.strategies.affinity.strategy import AffinityConfig, learn_affinity
from mtgraph.strategies.protocol import Architecture
from mtgraph.strategies.result import StrategyResult

__all__ = ["AffinityStrategy"]


class AffinityStrategy:
    """Branched multi-task networks (papers/001).

    Examples:
        >>> from mtgraph.strategies import registry
        >>> registry()["affinity"].name
        'affinity'
    """

    name: ClassVar[str] = "affinity"
    paper: ClassVar[str] = "Branched Multi-Task Networks: Deciding What Layers To Share"
    search_space: ClassVar[str] = "trees whose branching points are the chosen locations"
    config_type: ClassVar[type] = AffinityConfig
    uses_budget: ClassVar[bool] = True

    def config_for(self, problem: Problem, epochs: float, *, batch_size: int = 16) -> AffinityConfig:
        """A configuration training about ``epochs`` epochs in all."""
        from mtgraph.strategies.affinity.strategy import config_for_budget

        return config_for_budget(epochs)

    def learn(
        self, problem: Problem, config: AffinityConfig | None = None, budget: Budget | None = None, *, progress: bool = False
    ) -> StrategyResult:
        """Run the strategy on ``problem``."""
        return learn_affinity(problem.backbone, dict(problem.heads), dict(problem.tasks), problem.train_data,
                       config=config if config is not None else AffinityConfig(), val_data=problem.val_data,
                       seed=problem.seed, progress=progress, device=problem.device)

    def sample_random(self, problem: Problem, rng: random.Random, budget: Budget | None = None) -> Architecture:
        """A random architecture of this strategy's search space (not yet available through this adapter)."""
        raise NotImplementedError("affinity: sample_random is not implemented yet")

    def architecture(self, problem: Problem, result: StrategyResult) -> Architecture:
        """The learned graph with fresh weights."""
        params = ParamStore.create(result.graph, problem.backbone, problem.heads)
        return Architecture("learned", result.graph, params, result.start, result.pipeline)
