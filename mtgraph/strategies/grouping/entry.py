"""Task grouping behind the common front door: :class:`GroupingStrategy` (registered as ``"grouping"``)."""

from __future__ import annotations

import itertools
import random
from typing import ClassVar

from mtgraph.budget import Budget
from mtgraph.errors import ConfigError
from mtgraph.options import check_number
from mtgraph.problem import Problem
from mtgraph.strategies.grouping.config import GroupingConfig, planned_trainings
from mtgraph.strategies.grouping.partitions import groupings_near, random_partition, stirling2
from mtgraph.strategies.grouping.solution import groups_pipeline
from mtgraph.strategies.grouping.strategy import run_grouping
from mtgraph.strategies.grouping.units import NetworkUnit, gmac_limit
from mtgraph.strategies.protocol import Architecture
from mtgraph.strategies.result import StrategyResult

__all__ = ["GroupingStrategy"]


class GroupingStrategy:
    """Task grouping (papers/003): which tasks share a network at all, under an inference budget.

    Search space: sets of separate full-size networks, each serving a group
    of the tasks: One-Net split at the input (``split{block=0,groups=...}``).
    The budget is a GMac :class:`~mtgraph.Budget`; see
    :mod:`~mtgraph.strategies.grouping.units` for how it becomes the paper's
    count of networks (``Budget.gmac(1, relative_to="one_net")`` is exactly
    one network; :func:`~mtgraph.strategies.grouping.budget_of_networks`
    gives the budget of ``n`` networks).

    Examples:
        >>> from mtgraph.strategies import registry
        >>> strategy = registry()["grouping"]
        >>> strategy.name, strategy.uses_budget, strategy.config_type.__name__
        ('grouping', True, 'GroupingConfig')
    """

    name: ClassVar[str] = "grouping"
    paper: ClassVar[str] = "Which Tasks Should Be Learned Together in Multi-task Learning? (ICML 2020)"
    search_space: ClassVar[str] = "sets of separate networks, each serving a group of tasks (One-Net split at the input)"
    config_type: ClassVar[type] = GroupingConfig
    uses_budget: ClassVar[bool] = True

    def config_for(self, problem: Problem, epochs: float, *, batch_size: int = 32) -> GroupingConfig:
        """The exact method with ``epochs`` spread evenly over its ``2^k − 1`` candidate networks.

        Args:
            problem: gives the number of tasks k.
            epochs: the training budget of the whole run, in epochs (> 0).
            batch_size: training batch size.

        Returns:
            A :class:`GroupingConfig` whose ``epochs`` is ``epochs / (2^k − 1)``.

        Raises:
            ConfigError: ``epochs`` is not a number > 0.

        Examples:
            >>> import mtgraph
            >>> from mtgraph.strategies import registry
            >>> config = registry()["grouping"].config_for(mtgraph.toy_problem(("seg", "depth")), 6)
            >>> config.method, config.epochs  # 3 candidates
            ('exact', 2.0)
        """
        check_number("GroupingStrategy.config_for", "epochs", epochs, low=0, strict_low=True)
        base = GroupingConfig(batch_size=batch_size)
        return GroupingConfig(epochs=epochs / planned_trainings(base, len(problem.task_names)), batch_size=batch_size)

    def learn(
        self, problem: Problem, config: GroupingConfig | None = None, budget: Budget | None = None, *,
        progress: bool = False,
    ) -> StrategyResult:
        """Train candidate networks, select the set serving every task with the lowest loss within ``budget``, build it.

        Args:
            problem: backbone, heads, tasks, data (selection on ``val_data``
                when given, as the paper does), device and seed.
            config: :class:`GroupingConfig` (None: exact selection, Adam; see its docstring).
            budget: a GMac :class:`~mtgraph.Budget` (None: two full-size networks).
            progress: one line per candidate on stderr.

        Returns:
            A :class:`~mtgraph.strategies.result.StrategyResult` (``start="one_net"``):
            ``graph`` serves every task from the chosen networks,
            ``replay(problem, "one_net", pipeline)`` rebuilds it exactly, and
            the weights are the trained candidates'. ``figures``:
            ``"loss_vs_budget"`` (:class:`~mtgraph.strategies.result.Curve`:
            the selection, Random mean and Pessimal per budget),
            ``"pairwise"`` (:class:`~mtgraph.strategies.result.Heatmap`,
            when singles and pairs are fully trained), and the tables
            ``"selection"``, ``"candidates"``, ``"baselines"``. ``history``:
            every candidate record, which were trained or reused, the proxy
            and final solutions, the sweep rows, the budget in networks and
            GMac, cost and validation metrics.

        Raises:
            ConfigError: a parameter budget or a bad config.
            BudgetError: no set of candidates serving every task fits the budget
                (naming the cheapest feasible cost in networks and GMac).

        Examples:
            >>> import mtgraph
            >>> from mtgraph.strategies import registry, replay
            >>> from mtgraph.strategies.grouping import GroupingConfig
            >>> problem = mtgraph.toy_problem(("seg", "depth"))
            >>> config = GroupingConfig(epochs=1, batch_size=4, eval_batch_size=4, random_draws=0)
            >>> result = registry()["grouping"].learn(problem, config, mtgraph.Budget.gmac(2, relative_to="one_net"))
            >>> sorted(result.figures), replay(problem, result.start, result.pipeline)[0] == result.graph
            (['baselines', 'candidates', 'loss_vs_budget', 'pairwise', 'selection'], True)
        """
        return run_grouping(problem, config, budget, progress=progress)

    def sample_random(self, problem: Problem, rng: random.Random, budget: Budget | None = None) -> Architecture:
        """A uniformly random grouping of the tasks into separate networks, within ±5 % of ``budget``'s GMac.

        A grouping into ``m`` networks costs ``m·T + H`` GMac
        (:mod:`~mtgraph.strategies.grouping.partitions`), so only ``k``
        costs are reachable; every grouping with an admissible ``m`` is
        equally likely. Without a budget, any grouping.

        Args:
            problem: the problem.
            rng: the random generator.
            budget: a GMac budget, or None.

        Returns:
            The :class:`~mtgraph.strategies.protocol.Architecture` (start
            ``"one_net"``; ``details``: the groups, their number and the GMac).

        Raises:
            BudgetError: no grouping is within ±5 % (the reachable costs and the closest are named).
            ConfigError: a parameter budget, or an rng that is not a ``random.Random``.

        Examples:
            >>> import random, mtgraph
            >>> from mtgraph.strategies import registry
            >>> from mtgraph.strategies.grouping import budget_of_networks
            >>> problem = mtgraph.toy_problem(("seg", "depth", "edges"))
            >>> arch = registry()["grouping"].sample_random(problem, random.Random(0), budget_of_networks(problem, 2))
            >>> arch.details["groups"], arch.pipeline
            ([['seg', 'edges'], ['depth']], 'split{block=0,groups=seg+edges/depth}')
        """
        if not isinstance(rng, random.Random):
            raise ConfigError(f"rng must be a random.Random, got {type(rng).__name__}")
        names = problem.task_names
        unit = NetworkUnit.of(problem)
        if budget is None:
            counts = list(range(1, len(names) + 1))
        else:
            counts = groupings_near(unit, len(names), gmac_limit(problem, budget))
        # Every grouping equally likely: m is drawn in proportion to the number of groupings into m networks.
        ends = list(itertools.accumulate(stirling2(len(names), m) for m in counts))
        pick = rng.randrange(ends[-1])
        m = next(c for c, end in zip(counts, ends, strict=True) if pick < end)
        groups = random_partition(names, m, rng)
        return Architecture.build(problem, "one_net", groups_pipeline(groups), label="random grouping",
                                  details={"groups": groups, "networks": m, "gmac": unit.gmac(m)})

    def architecture(self, problem: Problem, result: StrategyResult) -> Architecture:
        """The learned grouping with fresh weights (rebuilt from One-Net by the recorded pipeline).

        Raises:
            ConfigError: ``result`` is not a grouping result, or keeps
                small-backbone networks (fresh small weights need a second
                backbone the problem does not carry).

        Examples:
            >>> import mtgraph
            >>> from mtgraph.strategies import registry
            >>> from mtgraph.strategies.grouping import GroupingConfig
            >>> problem = mtgraph.toy_problem(("seg", "depth"))
            >>> strategy = registry()["grouping"]
            >>> config = GroupingConfig(epochs=1, batch_size=4, eval_batch_size=4, random_draws=0, pessimal=False)
            >>> result = strategy.learn(problem, config)
            >>> strategy.architecture(problem, result).graph == result.graph
            True
        """
        if result.strategy != "grouping":
            raise ConfigError(f"not a task-grouping result (strategy {result.strategy!r})")
        small = result.history.get("small_keys") or []
        if small:
            raise ConfigError(
                f"the learned solution keeps small-backbone networks (keys {small[:3]}...); fresh weights for them "
                "need the small backbone, which the problem does not carry"
            )
        groups = [[t for t, n in result.history["serving"].items() if n == name]
                  for name in dict.fromkeys(result.history["serving"].values())]
        return Architecture.build(problem, result.start, result.pipeline, label="learned", details={"groups": groups})
