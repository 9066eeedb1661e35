"""MTSL behind the common front door: :class:`MTSLStrategy` (registered as ``"mtsl"``), and :func:`learn_mtsl`."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtgraph.budget import Budget
from mtgraph.errors import ConfigError
from mtgraph.frontend import Backbone
from mtgraph.params import ParamStore
from mtgraph.problem import Problem
from mtgraph.strategies.mtsl import strategy as driver
from mtgraph.strategies.mtsl.config import MTSLConfig
from mtgraph.strategies.protocol import Architecture
from mtgraph.strategies.random_trees import random_tree, tree_from_graph, tree_macs, tree_pipeline
from mtgraph.strategies.result import StrategyResult
from mtgraph.tasks.task import Task

__all__ = ["MTSLStrategy", "learn_mtsl"]

#: Learning rate of :meth:`MTSLStrategy.config_for`: the paper's 1e-4 is for 80 epochs of Cityscapes from
#: ImageNet weights; a schedule of a few epochs from random weights barely moves at that rate.
SHORT_SCHEDULE_LR = 1e-3
#: Grouping images of :meth:`MTSLStrategy.config_for`: the paper's 800, or the whole set when smaller.
PAPER_GROUPING_IMAGES = 800


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
        """The paper's schedule scaled to ``epochs`` epochs (its proportions kept; see :meth:`MTSLConfig.with_budget`).

        Everything else is the paper's (γ 0.8, λ 0.2, the paper's loss
        balance, batch 16), except the learning rate, 1e-3 instead of 1e-4:
        the paper trains 80 epochs from ImageNet weights, a schedule of a few
        epochs from random weights barely moves at 1e-4. Grouping CKA is
        measured on 800 training images (appendix F), or all of them when
        there are fewer.

        Args:
            problem: the problem (its training set size sets the grouping subset).
            epochs: the budget E in epochs.
            batch_size: images per step.

        Returns:
            The configuration.

        Raises:
            ConfigError: ``epochs`` or ``batch_size`` out of range.

        Examples:
            >>> import mtgraph
            >>> from mtgraph.strategies import registry
            >>> config = registry()["mtsl"].config_for(mtgraph.toy_problem(samples=8), 4)
            >>> config.total_epochs, config.lr, config.grouping_images, config.gamma
            (4.0, 0.001, 8, 0.8)
        """
        size = len(problem.train_dataset)  # type: ignore[arg-type]
        images = max(4, min(PAPER_GROUPING_IMAGES, size))
        return MTSLConfig(lr=SHORT_SCHEDULE_LR, batch_size=batch_size, grouping_images=images).with_budget(epochs)

    def learn(
        self,
        problem: Problem,
        config: MTSLConfig | None = None,
        budget: Budget | None = None,
        *,
        progress: bool = False,
        initial: ParamStore | None = None,
    ) -> StrategyResult:
        """Learn a multi-task tree and its weights with MTSL (papers/000).

        Starts from single-task networks (all copies of a block equal, as the
        paper's identically initialised STNs), alternates CKA-aligned task
        learning and structural learning block by block (measure CKA, group,
        fuse by averaging, amalgamate by ATT), then fine-tunes; see
        :mod:`mtgraph.strategies.mtsl.strategy` and :class:`MTSLConfig`.

        Args:
            problem: backbone, heads, 2..10 tasks, data, device and seed.
            config: options (None: :class:`MTSLConfig`, the paper's values);
                ``config.device``, when set, overrides ``problem.device``.
            budget: must be None: MTSL has no cost budget (γ decides).
            progress: show a progress bar.
            initial: optional weights of the initial single-task networks (keys
                of ``mtgraph.stn(num_blocks, tasks)``), e.g. pretrained STNs.

        Returns:
            A :class:`StrategyResult` with strategy ``"mtsl"`` (``"mtsl-r"``
            with ``config.retrain``) and ``start="stn"``: ``pipeline`` (the
            ``fuse`` passes) applied to the single-task networks rebuilds
            ``graph`` exactly; one :class:`Decision` per considered group of
            every phase (CKA matrix, chosen grouping, values, reason);
            ``figures``: a :class:`~mtgraph.strategies.result.Heatmap` of CKA
            per phase and sibling set (``"phase 0 block 0 after input"``, ...)
            and the tree as a :class:`~mtgraph.strategies.result.Table`
            (``"tree"``); ``history``: training curves, ATT losses, the
            schedule in steps, the task loss weights, validation metrics,
            ``"tree"`` (:func:`tree_rows`) and ``"tree_text"`` (the IR text).

        Raises:
            ConfigError: not a Problem, a budget, a config that is not an MTSLConfig, fewer
                than 2 or more than 10 tasks, a schedule with more phases
                than the backbone has blocks, an ``initial`` store without the
                single-task networks' weights.

        Examples:
            One phase on four generated scenes (``docs/strategies/mtsl.md``
            has a longer run); the two copies of block 0 are still alike, so
            they fuse:

            >>> import mtgraph
            >>> from mtgraph.strategies import registry
            >>> from mtgraph.strategies.mtsl import MTSLConfig
            >>> problem = mtgraph.toy_problem(("seg", "depth"), blocks=2)
            >>> config = MTSLConfig(task_epochs=(1,), att_epochs=(1,), total_epochs=2, phases=1, batch_size=4,
            ...                     grouping_images=4, eval_batch_size=4)
            >>> result = registry()["mtsl"].learn(problem, config)
            >>> result.strategy, result.start, result.pipeline
            ('mtsl', 'stn', 'fuse{tasks=seg+depth,block=0,init=average}')
            >>> result.figures["tree"].rows
            ((0, 'seg+depth'), (1, 'seg | depth'))
            >>> registry()["mtsl"].learn(problem, config, mtgraph.Budget.gmac(1.0, relative_to="one_net"))
            Traceback (most recent call last):
            ...
            mtgraph.errors.ConfigError: MTSL has no cost budget (γ decides how much is shared); pass budget=None
        """
        if not isinstance(problem, Problem):
            raise ConfigError(f"problem must be an mtgraph.Problem (see Problem.create), got {type(problem).__name__}")
        if budget is not None:
            raise ConfigError("MTSL has no cost budget (γ decides how much is shared); pass budget=None")
        if config is None:
            config = MTSLConfig()
        if not isinstance(config, MTSLConfig):
            raise ConfigError(f"config must be an MTSLConfig, got {type(config).__name__}")
        return driver.run_mtsl(problem, config, progress=progress, initial=initial)

    def sample_random(self, problem: Problem, rng: random.Random, budget: Budget | None = None) -> Architecture:
        """A random tree (see :func:`~mtgraph.strategies.random_trees.random_tree`) within ±5 % of the budget's GMac.

        Examples:
            >>> import random
            >>> import mtgraph
            >>> from mtgraph.strategies import registry
            >>> arch = registry()["mtsl"].sample_random(mtgraph.toy_problem(), random.Random(0))
            >>> arch.start, arch.label
            ('stn', 'random tree')
        """
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
        """The learned tree with fresh weights (rebuilt from STN by the ``fuse`` pipeline).

        Examples:
            >>> import mtgraph
            >>> from mtgraph.strategies import registry
            >>> from mtgraph.strategies.mtsl import MTSLConfig
            >>> problem = mtgraph.toy_problem(("seg", "depth"), blocks=2)
            >>> config = MTSLConfig(task_epochs=(1,), att_epochs=(1,), total_epochs=2, phases=1, batch_size=4,
            ...                     grouping_images=4, eval_batch_size=4)
            >>> result = registry()["mtsl"].learn(problem, config)
            >>> registry()["mtsl"].architecture(problem, result).graph == result.graph
            True
        """
        tree = tree_from_graph(problem, result.graph)
        return Architecture.build(problem, "stn", tree_pipeline(problem, tree), label="learned",
                                  details={"tree": [[list(g) for g in p] for p in tree]})


def learn_mtsl(
    backbone: Backbone | nn.Module,
    heads: Mapping[str, nn.Module] | None,
    tasks: Mapping[str, Task] | Sequence[Task],
    train_data: Dataset | DataLoader,
    *,
    config: MTSLConfig | None = None,
    val_data: Dataset | DataLoader | None = None,
    seed: int = 0,
    progress: bool = False,
    initial: ParamStore | None = None,
    device: str | torch.device | None = None,
) -> StrategyResult:
    """The former entry point, kept for one release: builds a :class:`~mtgraph.Problem` and runs :class:`MTSLStrategy`.

    New code calls ``registry()["mtsl"].learn(problem, config)`` with a
    :class:`~mtgraph.Problem` (``mtgraph.Problem.create(...)`` takes the same
    backbone, tasks, data, heads, device and seed as this function).

    Args:
        backbone: a traced :class:`~mtgraph.Backbone`, or a module to trace.
        heads: task -> head module, or None to build each task's head with its factory.
        tasks: task name -> :class:`~mtgraph.tasks.Task` (or a sequence of them).
        train_data: map-style dataset, or a DataLoader over one.
        config: options (default :class:`MTSLConfig`).
        val_data: evaluated once at the end.
        seed: the run's seed.
        progress: show a progress bar.
        initial: optional weights of the initial single-task networks.
        device: where to train (the problem's device).

    Returns:
        What :meth:`MTSLStrategy.learn` returns.

    Raises:
        ConfigError: what :class:`~mtgraph.Problem` or :meth:`MTSLStrategy.learn` raise.
        DataError: empty data.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.strategies.mtsl import MTSLConfig, learn_mtsl
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        >>> tasks = {"seg": T.segmentation(3, hidden=4), "depth": T.depth(hidden=4)}
        >>> config = MTSLConfig(task_epochs=(1,), att_epochs=(1,), total_epochs=2, phases=1, batch_size=4,
        ...                     grouping_images=4, eval_batch_size=4)
        >>> learn_mtsl(model, None, tasks, SceneDataset(4, size=32, seed=0, num_classes=2), config=config).pipeline
        'fuse{tasks=seg+depth,block=0,init=average}'
    """
    problem = Problem.create(backbone, tasks, train_data, heads=heads, val_data=val_data, device=device, seed=seed)
    return MTSLStrategy().learn(problem, config, progress=progress, initial=initial)
