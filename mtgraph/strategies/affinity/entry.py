"""Branched multi-task networks behind the common front door: :class:`AffinityStrategy` (registered as ``"affinity"``).

:meth:`AffinityStrategy.learn` runs papers/001 on a :class:`~mtgraph.Problem`
within a :class:`~mtgraph.Budget`:

1. **Single-task networks** (fit phase ``"affinity-stn"``):
   :func:`~mtgraph.strategies.affinity.train_stn`, unless trained STN
   weights are given (``stn_params``).
2. **Affinity.** :func:`~mtgraph.strategies.affinity.probe_affinity` on K
   held-out images (the first K of the validation data; of the training
   data when there is none) gives ``A[d, i, j]`` at D locations.
3. **Tree search.** :func:`~mtgraph.strategies.affinity.best_tree` picks the
   tree of smallest clustering cost within the budget;
   :func:`~mtgraph.strategies.affinity.budget_path` gives the Pareto path of
   trees as the budget grows.
4. **Build and train** (fit phase ``"affinity-tree"``): the tree is built by
   ``fuse`` passes on the single-task networks
   (:func:`~mtgraph.strategies.affinity.build_tree`), from fresh weights or
   the STN's, and trained with uniform loss weights.

:func:`learn_affinity` is the entry point of earlier releases.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any, ClassVar, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtgraph.analysis.cost import cost
from mtgraph.budget import Budget
from mtgraph.errors import ConfigError, MTGraphError
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.builders import stn
from mtgraph.params import ParamStore
from mtgraph.problem import Problem
from mtgraph.strategies.affinity import evidence
from mtgraph.strategies.affinity.build import build_tree, check_stn_params, fuse_pipeline
from mtgraph.strategies.affinity.config import DEFAULT_BUDGET, AffinityConfig, config_for, default_locations
from mtgraph.strategies.affinity.cost import TreeCost
from mtgraph.strategies.affinity.locations import resolve_locations, split_points
from mtgraph.strategies.affinity.probe import probe_affinity, probe_images
from mtgraph.strategies.affinity.stn import TREE_PHASE, train_phase, train_stn
from mtgraph.strategies.affinity.tree_search import Linkage, Method, PathPoint, best_tree, budget_path
from mtgraph.strategies.protocol import Architecture
from mtgraph.strategies.random_trees import random_tree, tree_macs
from mtgraph.strategies.result import StrategyResult
from mtgraph.tasks import Task
from mtgraph.train import evaluate

__all__ = ["AffinityStrategy", "learn_affinity"]


class AffinityStrategy:
    """Branched multi-task networks (papers/001): what layers to share under a budget, from task affinity.

    Search space: trees whose branching points are the probed locations
    (tasks share a prefix of segments and split right after a location,
    never merge; the first segment is shared by every task with
    ``root_shared``).

    Examples:
        >>> from mtgraph.strategies import registry
        >>> strategy = registry()["affinity"]
        >>> strategy.name, strategy.uses_budget, strategy.config_type.__name__
        ('affinity', True, 'AffinityConfig')
    """

    name: ClassVar[str] = "affinity"
    paper: ClassVar[str] = "Branched Multi-Task Networks: Deciding What Layers To Share (Vandenhende et al., BMVC 2020)"
    search_space: ClassVar[str] = "trees whose branching points are the probed locations (ends of stages by default)"
    config_type: ClassVar[type] = AffinityConfig
    uses_budget: ClassVar[bool] = True

    def config_for(self, problem: Problem, epochs: float, *, batch_size: int = 16) -> AffinityConfig:
        """Half the epochs for the STNs, half for the tree, started from the STN (see :func:`~mtgraph.strategies.affinity.config_for`).

        Examples:
            >>> import mtgraph
            >>> from mtgraph.strategies.affinity import AffinityStrategy
            >>> AffinityStrategy().config_for(mtgraph.toy_problem(), 2).epochs
            1.0
        """
        return config_for(problem, epochs, batch_size=batch_size)

    def learn(
        self,
        problem: Problem,
        config: AffinityConfig | None = None,
        budget: Budget | None = None,
        *,
        progress: bool = False,
        stn_params: ParamStore | None = None,
    ) -> StrategyResult:
        """Learn a branched multi-task network within ``budget`` (see the module docstring for the steps).

        Args:
            problem: backbone, heads, tasks (at least two), data, seed and device.
            config: the options (None: :class:`AffinityConfig`'s defaults, the paper's settings).
            budget: parameters or GMac, absolute or relative (None:
                :data:`~mtgraph.strategies.affinity.DEFAULT_BUDGET`, halfway
                from One-Net to STN in parameters). With ``root_shared`` the
                most split tree costs less than the STN, so budgets near the
                STN's cost all pick it.
            progress: show progress bars.
            stn_params: trained weights of ``mtgraph.stn(num_blocks, tasks)``
                (e.g. ``train_stn(problem).params``); given, the single-task
                networks are not trained again, and they are never changed.

        Returns:
            A :class:`~mtgraph.strategies.result.StrategyResult` (``strategy="affinity"``,
            ``start="stn"``): the trained branched network; ``pipeline``, the
            ``fuse`` passes that built it from the single-task networks;
            ``decisions`` (the chosen tree with its cost, clustering cost and
            budget, the probe, one entry per location, and the budget path's
            other trees, declined with the reason); ``figures``: a
            :class:`~mtgraph.strategies.result.Heatmap` of the affinity per
            location, the ``"budget path"``
            :class:`~mtgraph.strategies.result.Curve` and the ``"tree"``
            :class:`~mtgraph.strategies.result.Table`; ``history``: the STN
            and tree training histories (``"stn"``, ``"train"``), with
            validation data their metrics (``"stn_metrics"``, ``"metrics"``),
            and ``"affinity"`` (tensor, locations), ``"budget_path"``,
            ``"tree"`` and ``"budget"``.

        Raises:
            BudgetError: the budget is below the One-Net's cost (the message
                gives the minimum); raised before any training.
            ConfigError: fewer than 2 tasks, a single location with
                ``root_shared``, STN weights that do not fit, a config or
                budget of the wrong type.

        Examples:
            A one-step run whose budget only admits the One-Net;
            ``docs/strategies/affinity.md`` has a run that branches:

            >>> import mtgraph
            >>> from mtgraph import Budget
            >>> from mtgraph.strategies.affinity import AffinityConfig, AffinityStrategy
            >>> problem = mtgraph.toy_problem(blocks=3)
            >>> config = AffinityConfig(locations="all", stn_epochs=1, epochs=1, batch_size=4, probe_images=4)
            >>> result = AffinityStrategy().learn(problem, config, Budget.params(0, relative_to="one_net..stn"))
            >>> result.pipeline, result.history["affinity"]["locations"]
            ('fuse{tasks=seg+depth,block=0,init=copy,source_task=seg},fuse{tasks=seg+depth,block=1,init=copy,source_task=seg},fuse{tasks=seg+depth,block=2,init=copy,source_task=seg}', (0, 1, 2))
            >>> mtgraph.strategies.replay(problem, result.start, result.pipeline)[0] == result.graph
            True
        """
        config = AffinityConfig() if config is None else config
        budget = DEFAULT_BUDGET if budget is None else budget
        _check_arguments(problem, config, budget)
        names = problem.task_names
        locations = resolve_locations(problem.backbone, config.locations)
        if config.root_shared and len(locations) == 1:
            raise ConfigError(
                f"one location ({list(locations)}) with root_shared=True leaves only the One-Net; "
                "probe more locations (AffinityConfig(locations='all') or block indices) or set root_shared=False"
            )
        if stn_params is not None:
            check_stn_params(stn_params, problem)

        # Everything about the budget is known before training: fail fast.
        coster = TreeCost(problem.backbone, problem.heads, names, locations, budget.measure, exact=config.exact_cost)
        limit = evidence.BudgetLimit.resolve(budget, budget.resolve(problem), coster)

        history: dict[str, Any] = {}
        if stn_params is None:
            trained = train_stn(problem, config, progress=progress)
            stn_graph, stn_store = trained.graph, trained.params
            history["stn"] = trained.history
        else:
            stn_graph, stn_store = stn(problem.backbone.num_blocks, names), stn_params
            history["stn"] = None
        if problem.val_data is not None:
            history["stn_metrics"] = dict(
                evaluate(stn_graph, stn_store, problem.tasks, problem.val_data, batch_size=config.eval_batch_size)
            )

        probe_data, source = (problem.val_data, "val_data") if problem.val_data is not None else (problem.train_data, "train_data")
        images = probe_images(probe_data, config.probe_images)
        probe = probe_affinity(stn_graph, stn_store, images, locations=locations, batch_size=config.probe_batch_size)
        affinity = probe.affinity.numpy()

        linkage, method = cast(Linkage, config.linkage), cast(Method, config.search)
        choice = best_tree(
            affinity, names, limit.value, coster, root_shared=config.root_shared, linkage=linkage, method=method
        )
        path: list[PathPoint] = []
        if config.budget_path:
            path = budget_path(affinity, names, coster, root_shared=config.root_shared, linkage=linkage, method=method)
        groups = coster.groups(choice.tree)
        graph, params, pipeline = build_tree(
            problem, groups, stn_params=stn_store if config.init == "stn" else None, shared_init=config.shared_init
        )
        measured = coster.value_of(cost(graph, params))
        if not math.isclose(measured, choice.cost, rel_tol=1e-12, abs_tol=0.0):
            raise MTGraphError(
                f"internal error: the search costed tree {choice.tree} at {coster.format(choice.cost)} but the built "
                f"network measures {coster.format(measured)}; rerun with AffinityConfig(exact_cost=True) and report this"
            )

        fitted = train_phase(problem, config, graph, params, epochs=config.epochs, phase=TREE_PHASE, progress=progress)
        if fitted is not None:
            graph, params = fitted.graph, fitted.params
            history["train"] = fitted.history.to_state()
        if problem.val_data is not None:
            history["metrics"] = dict(
                evaluate(graph, params, problem.tasks, problem.val_data, batch_size=config.eval_batch_size)
            )

        decisions = [
            evidence.chosen_decision(choice, limit, coster, groups, config.linkage),
            evidence.probe_decision(probe, source),
            *evidence.level_decisions(probe, choice.tree, config.linkage),
            *evidence.path_decisions(path, choice, limit, coster),
        ]
        history.update(evidence.history_entries(probe, path, coster, choice, groups, limit))
        return StrategyResult(
            strategy=self.name,
            graph=graph,
            params=params,
            decisions=tuple(decisions),
            pipeline=pipeline,
            figures=dict(evidence.figures(probe, path, coster, groups, problem.backbone)),
            history=history,
            start="stn",
        )

    def sample_random(
        self, problem: Problem, rng: random.Random, budget: Budget | None = None, *, config: AffinityConfig | None = None
    ) -> Architecture:
        """A random tree of this strategy's search space within ±5 % of the budget's GMac.

        The tree branches only at the locations' split points
        (:func:`~mtgraph.strategies.affinity.split_points`: right after a
        location, the first segment shared with ``root_shared``), drawn by
        :func:`~mtgraph.strategies.random_trees.random_tree`.

        Args:
            problem: the problem.
            rng: the random source (the caller seeds it).
            budget: a GMac budget to match within ±5 % (None: any tree).
            config: gives ``locations`` and ``root_shared`` (None: the
                locations :meth:`config_for` chooses, root shared).

        Returns:
            The architecture (built from ``"stn"`` by ``fuse`` passes, fresh weights).

        Raises:
            ConfigError: a budget in parameters.
            BudgetError: no tree of the space within ±5 % of the budget.

        Examples:
            >>> import random
            >>> import mtgraph
            >>> from mtgraph import Budget
            >>> from mtgraph.strategies.affinity import AffinityStrategy
            >>> problem = mtgraph.toy_problem(("seg", "depth", "edges"), blocks=4)
            >>> arch = AffinityStrategy().sample_random(problem, random.Random(0), Budget.gmac(0.5, relative_to="one_net..stn"))
            >>> target = Budget.gmac(0.5, relative_to="one_net..stn").resolve(problem)
            >>> abs(mtgraph.cost(arch.graph, arch.params).gmac - target) <= 0.05 * target, arch.start
            (True, 'stn')
        """
        if config is None:
            config = AffinityConfig(locations=default_locations(problem))
        target = None
        if budget is not None:
            if budget.measure != "gmac":
                raise ConfigError(
                    f"random trees are matched in GMac; got a budget in {budget.measure} ({budget.describe()}): "
                    "give Budget.gmac(...)"
                )
            target = budget.resolve(problem)
        locations = resolve_locations(problem.backbone, config.locations)
        tree = random_tree(problem, rng, target, split_points=split_points(locations, root_shared=config.root_shared))
        return Architecture.build(
            problem, "stn", fuse_pipeline(tree, problem.task_names), label="random tree",
            details={"tree": [[list(g) for g in p] for p in tree], "gmac": tree_macs(problem, tree) / 1e9,
                     "locations": list(locations)},
        )

    def architecture(self, problem: Problem, result: StrategyResult) -> Architecture:
        """The learned tree with fresh weights, rebuilt from ``result.start`` by ``result.pipeline``.

        Examples:
            >>> import mtgraph
            >>> from mtgraph.strategies import StrategyResult
            >>> from mtgraph.strategies.affinity import AffinityStrategy, build_tree
            >>> problem = mtgraph.toy_problem()
            >>> graph, params, pipeline = build_tree(problem, [[["seg", "depth"]], [["seg"], ["depth"]]])
            >>> result = StrategyResult("affinity", graph, params, pipeline=pipeline, start="stn")
            >>> AffinityStrategy().architecture(problem, result).graph == graph
            True
        """
        return Architecture.build(problem, result.start, result.pipeline, label="learned",
                                  details={"tree": result.history.get("tree", {}).get("text", "")})


def _check_arguments(problem: Any, config: Any, budget: Any) -> None:
    if not isinstance(problem, Problem):
        raise ConfigError(f"problem must be an mtgraph.Problem, got {type(problem).__name__}")
    if not isinstance(config, AffinityConfig):
        raise ConfigError(f"config must be an AffinityConfig, got {type(config).__name__}")
    if not isinstance(budget, Budget):
        raise ConfigError(f"budget must be an mtgraph.Budget (e.g. Budget.params(0.5, relative_to='one_net..stn')), "
                          f"got {type(budget).__name__}")
    if len(problem.task_names) < 2:
        raise ConfigError(f"branched multi-task learning needs at least 2 tasks, got {list(problem.task_names)}")


def learn_affinity(
    backbone: Backbone,
    heads: Mapping[str, nn.Module] | None,
    tasks: Mapping[str, Task],
    train_data: Dataset | DataLoader,
    *,
    config: AffinityConfig | None = None,
    budget: Budget | None = None,
    val_data: Dataset | DataLoader | None = None,
    seed: int = 0,
    progress: bool = False,
    stn_params: ParamStore | None = None,
    device: str | torch.device | None = None,
) -> StrategyResult:
    """Kept for one release: use ``AffinityStrategy().learn(problem, config, budget)``.

    Builds the :class:`~mtgraph.Problem` (``heads=None``: each task's head
    from its factory) and runs :meth:`AffinityStrategy.learn`. The budget,
    formerly ``AffinityConfig(budget_kind=, budget=, budget_fraction=)``, is
    a :class:`~mtgraph.Budget`: ``Budget.params(f, relative_to="one_net..stn")``
    for a fraction ``f`` of the way from One-Net to STN, ``Budget.gmac(x)`` for
    an absolute GMac.

    Raises:
        ConfigError, DataError, BudgetError: as :class:`~mtgraph.Problem` and :meth:`AffinityStrategy.learn`.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.strategies.affinity import AffinityConfig, learn_affinity
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), torch.zeros(1, 3, 32, 32))
        >>> tasks = {"seg": T.segmentation(3, hidden=4), "depth": T.depth(hidden=4)}
        >>> config = AffinityConfig(locations="all", stn_epochs=0, epochs=0, probe_images=4)
        >>> result = learn_affinity(backbone, None, tasks, SceneDataset(4, size=32), config=config,
        ...                         budget=mtgraph.Budget.params(1.0, relative_to="one_net..stn"))
        >>> result.history["tree"]["text"]
        '{depth,seg} / {depth} {seg}'
    """
    problem = Problem.create(backbone, tasks, train_data, heads=heads, val_data=val_data, device=device, seed=seed)
    return AffinityStrategy().learn(problem, config, budget, progress=progress, stn_params=stn_params)
