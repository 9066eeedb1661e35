"""AdaShare behind the common front door: :class:`AdaShareStrategy` (registered as ``"adashare"``).

Interim adapter over :func:`learn_adashare`; the strategy's own front-door work
(budget, random sampling from its search space, passes) replaces it.
"""

from __future__ import annotations

import random
from typing import ClassVar

from torch.utils.data import DataLoader

from mtgraph.budget import Budget
from mtgraph.params import ParamStore
from mtgraph.problem import Problem
from mtgraph.strategies.adashare.strategy import AdaShareConfig, learn_adashare
from mtgraph.strategies.protocol import Architecture
from mtgraph.strategies.result import StrategyResult

__all__ = ["AdaShareStrategy"]


class AdaShareStrategy:
    """AdaShare (papers/002).

    Examples:
        >>> from mtgraph.strategies import registry
        >>> registry()["adashare"].name
        'adashare'
    """

    name: ClassVar[str] = "adashare"
    paper: ClassVar[str] = "AdaShare: Learning What To Share For Efficient Deep Multi-Task Learning"
    search_space: ClassVar[str] = "a select-or-skip policy per task and skippable block over one backbone"
    config_type: ClassVar[type] = AdaShareConfig
    uses_budget: ClassVar[bool] = False

    def config_for(self, problem: Problem, epochs: float, *, batch_size: int = 16) -> AdaShareConfig:
        """A configuration training about ``epochs`` epochs in all."""
        search_epochs = problem.backbone.num_blocks
        steps_per_epoch = max(1, len(problem.train_dataset) // batch_size)  # type: ignore[arg-type]
        per_search_epoch = max(2, int(0.5 * epochs * steps_per_epoch / search_epochs))
        return AdaShareConfig(
            epochs=search_epochs,
            weight_steps=max(1, int(0.8 * per_search_epoch)),
            policy_steps=max(1, int(0.2 * per_search_epoch)),
            batch_size=batch_size,
            lambda_sparsity=0.001,
            lambda_sharing=0.05,
            retrain_steps=max(1, int(0.5 * epochs * steps_per_epoch)),
        )

    def learn(
        self, problem: Problem, config: AdaShareConfig | None = None, budget: Budget | None = None, *, progress: bool = False
    ) -> StrategyResult:
        """Run the strategy on ``problem``."""
        val = problem.val_data.dataset if isinstance(problem.val_data, DataLoader) else problem.val_data
        return learn_adashare(problem.backbone, dict(problem.heads), dict(problem.tasks), problem.train_dataset,
                       config=config if config is not None else AdaShareConfig(), val_data=val,
                       seed=problem.seed, progress=progress)

    def sample_random(self, problem: Problem, rng: random.Random, budget: Budget | None = None) -> Architecture:
        """A random architecture of this strategy's search space (not yet available through this adapter)."""
        raise NotImplementedError("adashare: sample_random is not implemented yet")

    def architecture(self, problem: Problem, result: StrategyResult) -> Architecture:
        """The learned graph with fresh weights."""
        params = ParamStore.create(result.graph, problem.backbone, problem.heads)
        return Architecture("learned", result.graph, params, result.start, result.pipeline)
