"""MTSL behind the common front door: :class:`MTSLStrategy` (registered as ``"mtsl"``)."""

from __future__ import annotations

import random
from typing import ClassVar

from mtgraph.budget import Budget
from mtgraph.errors import ConfigError
from mtgraph.problem import Problem
from mtgraph.strategies.mtsl.config import MTSLConfig
from mtgraph.strategies.mtsl.strategy import learn_mtsl
from mtgraph.strategies.protocol import Architecture
from mtgraph.strategies.random_trees import random_tree, tree_from_graph, tree_macs, tree_pipeline
from mtgraph.strategies.result import StrategyResult

__all__ = ["MTSLStrategy"]


class MTSLStrategy:
    """Multi-Task Structural Learning (papers/000): where single-task networks fuse, layer by layer.

    Search space: trees over the backbone's blocks (tasks share a prefix of
    blocks and split, never merge). MTSL has no cost budget: γ decides how
    much is shared.

    Examples:
        >>> from mtgraph.strategies import registry
        >>> strategy = registry()["mtsl"]
        >>> strategy.name, strategy.uses_budget, strategy.config_type.__name__
        ('mtsl', False, 'MTSLConfig')
    """

    name: ClassVar[str] = "mtsl"
    paper: ClassVar[str] = "Multi-Task Structural Learning using Local Task Similarity induced Neuron Creation and Removal"
    search_space: ClassVar[str] = "trees over the backbone's blocks (groups split with depth, never merge)"
    config_type: ClassVar[type] = MTSLConfig
    uses_budget: ClassVar[bool] = False

    def config_for(self, problem: Problem, epochs: float, *, batch_size: int = 16) -> MTSLConfig:
        """The paper's schedule scaled to ``epochs`` epochs (its proportions kept; see :meth:`MTSLConfig.with_budget`)."""
        size = len(problem.train_dataset)  # type: ignore[arg-type]
        return MTSLConfig(lr=1e-3, batch_size=batch_size, grouping_images=max(4, min(256, size))).with_budget(epochs)

    def learn(
        self, problem: Problem, config: MTSLConfig | None = None, budget: Budget | None = None, *, progress: bool = False
    ) -> StrategyResult:
        """Run MTSL on ``problem`` (see :func:`~mtgraph.strategies.mtsl.learn_mtsl`); a budget is refused."""
        if budget is not None:
            raise ConfigError("MTSL has no cost budget (γ decides how much is shared); pass budget=None")
        return learn_mtsl(problem.backbone, problem.heads, problem.tasks, problem.train_data, config=config,
                          val_data=problem.val_data, seed=problem.seed, progress=progress, device=problem.device)

    def sample_random(self, problem: Problem, rng: random.Random, budget: Budget | None = None) -> Architecture:
        """A random tree (see :func:`~mtgraph.strategies.random_trees.random_tree`) within ±5 % of the budget's GMac."""
        target = None
        if budget is not None:
            if budget.measure != "gmac":
                raise ConfigError(f"random trees are matched in GMac; got a budget in {budget.measure}")
            target = budget.resolve(problem)
        tree = random_tree(problem, rng, target)
        return Architecture.build(problem, "stn", tree_pipeline(problem, tree), label="random tree",
                                  details={"tree": [[list(g) for g in p] for p in tree],
                                           "gmac": tree_macs(problem, tree) / 1e9})

    def architecture(self, problem: Problem, result: StrategyResult) -> Architecture:
        """The learned tree with fresh weights (rebuilt from STN by the ``fuse`` pipeline)."""
        tree = tree_from_graph(problem, result.graph)
        return Architecture.build(problem, "stn", tree_pipeline(problem, tree), label="learned",
                                  details={"tree": [[list(g) for g in p] for p in tree]})
