"""Task grouping behind the common front door: :class:`GroupingStrategy` (registered as ``"grouping"``).

Interim adapter over :func:`learn_grouping`; the strategy's own front-door work
(budget, random sampling from its search space, passes) replaces it.
"""

from __future__ import annotations

import random
from typing import ClassVar

from mtgraph.budget import Budget
from mtgraph.params import ParamStore
from mtgraph.problem import Problem
from mtgraph.strategies.grouping.strategy import GroupingConfig, learn_grouping
from mtgraph.strategies.protocol import Architecture
from mtgraph.strategies.result import StrategyResult

__all__ = ["GroupingStrategy"]


class GroupingStrategy:
    """Task grouping (papers/003).

    Examples:
        >>> from mtgraph.strategies import registry
        >>> registry()["grouping"].name
        'grouping'
    """

    name: ClassVar[str] = "grouping"
    paper: ClassVar[str] = "Which Tasks Should Be Learned Together in Multi-task Learning?"
    search_space: ClassVar[str] = "sets of separate networks, each serving a group of tasks"
    config_type: ClassVar[type] = GroupingConfig
    uses_budget: ClassVar[bool] = True

    def config_for(self, problem: Problem, epochs: float, *, batch_size: int = 16) -> GroupingConfig:
        """A configuration training about ``epochs`` epochs in all."""
        from mtgraph.strategies.grouping.strategy import config_for_budget

        return config_for_budget(epochs)

    def learn(
        self, problem: Problem, config: GroupingConfig | None = None, budget: Budget | None = None, *, progress: bool = False
    ) -> StrategyResult:
        """Run the strategy on ``problem``."""
        return learn_grouping(problem.backbone, dict(problem.heads), dict(problem.tasks), problem.train_data,
                       config=config if config is not None else GroupingConfig(), val_data=problem.val_data,
                       seed=problem.seed, progress=progress)

    def sample_random(self, problem: Problem, rng: random.Random, budget: Budget | None = None) -> Architecture:
        """A random architecture of this strategy's search space (not yet available through this adapter)."""
        raise NotImplementedError("grouping: sample_random is not implemented yet")

    def architecture(self, problem: Problem, result: StrategyResult) -> Architecture:
        """The learned graph with fresh weights."""
        params = ParamStore.create(result.graph, problem.backbone, problem.heads)
        return Architecture("learned", result.graph, params, result.start, result.pipeline)
