"""Safe multi-task learning behind the common front door: :class:`SMTLStrategy` (registered as ``"smtl"``).

Interim adapter over :func:`learn_smtl`; the strategy's own front-door work
(budget, random sampling from its search space, passes) replaces it.
"""

from __future__ import annotations

import random
from typing import ClassVar

from mtgraph.budget import Budget
from mtgraph.params import ParamStore
from mtgraph.problem import Problem
from mtgraph.strategies.protocol import Architecture
from mtgraph.strategies.result import StrategyResult
from mtgraph.strategies.smtl.config import SMTLConfig
from mtgraph.strategies.smtl.strategy import learn_smtl

__all__ = ["SMTLStrategy"]


class SMTLStrategy:
    """Safe multi-task learning (papers/004).

    Examples:
        >>> from mtgraph.strategies import registry
        >>> registry()["smtl"].name
        'smtl'
    """

    name: ClassVar[str] = "smtl"
    paper: ClassVar[str] = "Safe Multi-Task Learning"
    search_space: ClassVar[str] = "a public or a private encoder per task, mixed by a gate"
    config_type: ClassVar[type] = SMTLConfig
    uses_budget: ClassVar[bool] = False

    def config_for(self, problem: Problem, epochs: float, *, batch_size: int = 16) -> SMTLConfig:
        """A configuration training about ``epochs`` epochs in all."""
        return SMTLConfig(epochs=max(1, round(epochs)), batch_size=batch_size, lr=2e-3)

    def learn(
        self, problem: Problem, config: SMTLConfig | None = None, budget: Budget | None = None, *, progress: bool = False
    ) -> StrategyResult:
        """Run the strategy on ``problem``."""
        return learn_smtl(problem.backbone, dict(problem.heads), dict(problem.tasks), problem.train_data,
                       config=config if config is not None else SMTLConfig(), val_data=problem.val_data,
                       seed=problem.seed, progress=progress, device=problem.device)

    def sample_random(self, problem: Problem, rng: random.Random, budget: Budget | None = None) -> Architecture:
        """A random architecture of this strategy's search space (not yet available through this adapter)."""
        raise NotImplementedError("smtl: sample_random is not implemented yet")

    def architecture(self, problem: Problem, result: StrategyResult) -> Architecture:
        """The learned graph with fresh weights."""
        params = ParamStore.create(result.graph, problem.backbone, problem.heads)
        return Architecture("learned", result.graph, params, result.start, result.pipeline)
