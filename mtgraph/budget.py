"""A cost budget for a learned architecture: parameters or GMac, absolute or relative to a reference.

Every strategy that trades quality for cost takes one :class:`Budget`:
affinity picks the best tree within it, task grouping the best set of
networks, and the evaluation protocol draws random architectures at the
learned one's cost. The same value means the same thing everywhere::

    Budget.gmac(0.7, relative_to="one_net")      # 0.7 × One-Net's GMac
    Budget.params(2e6)                           # two million parameters
    Budget.params(0.5, relative_to="one_net..stn")  # halfway from One-Net to STN
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mtgraph.errors import BudgetError, ConfigError

if TYPE_CHECKING:
    from mtgraph.analysis.cost import CostReport
    from mtgraph.problem import Problem

__all__ = ["Budget", "MEASURES", "REFERENCES"]

#: What a budget counts.
MEASURES = ("params", "gmac")
#: What a relative budget is relative to: a multiple of One-Net's or STN's cost, or a fraction of the way
#: from One-Net's cost (0) to STN's (1).
REFERENCES = ("one_net", "stn", "one_net..stn")


@dataclass(frozen=True)
class Budget:
    """A limit on a network's parameters or GMac per image.

    Attributes:
        measure: ``"params"`` (unique parameter tensors' elements, heads
            included) or ``"gmac"`` (multiply-accumulates per image, as
            :func:`mtgraph.cost` reports them).
        value: the amount; absolute when ``relative_to`` is None.
        relative_to: None, ``"one_net"`` or ``"stn"`` (value × that
            network's cost), or ``"one_net..stn"`` (value in [0, 1], the
            fraction of the way from One-Net's cost to STN's).

    Raises:
        ConfigError: an unknown measure or reference, a value that is not a
            finite number > 0 (>= 0 for a fraction), a fraction above 1.

    Examples:
        >>> from mtgraph import Budget
        >>> Budget.gmac(0.7, relative_to="one_net")
        Budget(measure='gmac', value=0.7, relative_to='one_net')
        >>> str(Budget.params(0.5, relative_to="one_net..stn"))
        '0.5 of the way from One-Net to STN in parameters'
        >>> Budget.gmac(-1)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: Budget.value must be a finite number > 0, got -1
    """

    measure: Literal["params", "gmac"]
    value: float
    relative_to: Literal["one_net", "stn", "one_net..stn"] | None = None

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ConfigError(f"Budget.measure must be one of {list(MEASURES)}, got {self.measure!r}")
        if self.relative_to is not None and self.relative_to not in REFERENCES:
            raise ConfigError(f"Budget.relative_to must be None or one of {list(REFERENCES)}, got {self.relative_to!r}")
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"Budget.value must be a finite number > 0, got {value!r}")
        if self.relative_to == "one_net..stn":
            if not 0 <= value <= 1:
                raise ConfigError(
                    f"Budget.value must be a fraction in [0, 1] (0: One-Net's cost, 1: STN's) when relative to "
                    f"'one_net..stn', got {value!r}"
                )
        elif value <= 0:
            raise ConfigError(f"Budget.value must be a finite number > 0, got {value!r}")
        object.__setattr__(self, "value", float(value))

    @classmethod
    def params(cls, value: float, relative_to: Literal["one_net", "stn", "one_net..stn"] | None = None) -> Budget:
        """A budget in parameters (see :class:`Budget` for ``relative_to``).

        Examples:
            >>> from mtgraph import Budget
            >>> Budget.params(1.5, relative_to="one_net").describe()
            '1.5 × One-Net in parameters'
        """
        return cls("params", value, relative_to)

    @classmethod
    def gmac(cls, value: float, relative_to: Literal["one_net", "stn", "one_net..stn"] | None = None) -> Budget:
        """A budget in GMac per image (see :class:`Budget` for ``relative_to``).

        Examples:
            >>> from mtgraph import Budget
            >>> Budget.gmac(0.25).describe()
            '0.25 GMac'
        """
        return cls("gmac", value, relative_to)

    def describe(self) -> str:
        """The budget in words.

        Examples:
            >>> from mtgraph import Budget
            >>> Budget.params(2e6).describe(), Budget.gmac(1, relative_to="stn").describe()
            ('2e+06 parameters', '1 × STN in GMac')
        """
        unit = "parameters" if self.measure == "params" else "GMac"
        if self.relative_to is None:
            return f"{self.value:g} {unit}"
        if self.relative_to == "one_net..stn":
            return f"{self.value:g} of the way from One-Net to STN in {unit}"
        reference = "One-Net" if self.relative_to == "one_net" else "STN"
        return f"{self.value:g} × {reference} in {unit}"

    __str__ = describe

    def resolve(self, problem: Problem) -> float:
        """The absolute limit for ``problem``: a parameter count or GMac.

        Args:
            problem: the problem whose One-Net and STN costs a relative budget refers to.

        Returns:
            The limit in the budget's measure.

        Examples:
            >>> import torch
            >>> from torch import nn
            >>> import mtgraph
            >>> from mtgraph import tasks as T
            >>> from mtgraph.data import SceneDataset
            >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            >>> problem = mtgraph.Problem.create(model, [T.depth(hidden=4), T.edges(hidden=4)],
            ...                                  SceneDataset(4, size=32, seed=0))
            >>> costs = problem.reference_costs
            >>> Budget = mtgraph.Budget
            >>> Budget.gmac(1.0, relative_to="one_net").resolve(problem) == costs.one_net_gmac
            True
            >>> Budget.params(1.0, relative_to="one_net..stn").resolve(problem) == costs.stn_params
            True
        """
        if self.relative_to is None:
            return self.value
        costs = problem.reference_costs
        one, stn = (
            (costs.one_net_params, costs.stn_params) if self.measure == "params" else (costs.one_net_gmac, costs.stn_gmac)
        )
        if self.relative_to == "one_net":
            return self.value * one
        if self.relative_to == "stn":
            return self.value * stn
        return one + self.value * (stn - one)

    def measure_of(self, report: CostReport) -> float:
        """A cost report's total in this budget's measure.

        Examples:
            >>> import torch
            >>> from torch import nn
            >>> import mtgraph
            >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
            >>> graph = mtgraph.one_net(backbone.num_blocks, ["seg"])
            >>> report = mtgraph.cost(graph, mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1)}))
            >>> mtgraph.Budget.params(1e6).measure_of(report) == report.total_params
            True
        """
        return float(report.total_params) if self.measure == "params" else float(report.gmac)

    def admits(self, report: CostReport, problem: Problem, *, tolerance: float = 0.0) -> bool:
        """Whether a network of cost ``report`` fits the budget (with a relative ``tolerance``, e.g. 0.05).

        Examples:
            >>> import torch
            >>> from torch import nn
            >>> import mtgraph
            >>> from mtgraph import tasks as T
            >>> from mtgraph.data import SceneDataset
            >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            >>> problem = mtgraph.Problem.create(model, [T.depth(hidden=4), T.edges(hidden=4)],
            ...                                  SceneDataset(4, size=32, seed=0))
            >>> graph = mtgraph.one_net(problem.backbone.num_blocks, problem.task_names)
            >>> report = mtgraph.cost(graph, mtgraph.ParamStore.create(graph, problem.backbone, problem.heads))
            >>> mtgraph.Budget.gmac(1.0, relative_to="one_net").admits(report, problem)
            True
            >>> mtgraph.Budget.gmac(0.5, relative_to="one_net").admits(report, problem)
            False
        """
        return self.measure_of(report) <= self.resolve(problem) * (1.0 + tolerance)

    def check_reachable(self, problem: Problem, cheapest: float) -> None:
        """Raise BudgetError when even the cheapest network of a strategy's space (``cheapest``) exceeds the budget.

        Args:
            problem: the problem.
            cheapest: the lowest cost the strategy can reach, in this budget's measure.

        Raises:
            BudgetError: the budget is below ``cheapest`` (both numbers are stated).

        Examples:
            >>> import torch
            >>> from torch import nn
            >>> import mtgraph
            >>> from mtgraph import tasks as T
            >>> from mtgraph.data import SceneDataset
            >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            >>> problem = mtgraph.Problem.create(model, [T.depth(hidden=4)], SceneDataset(4, size=32, seed=0))
            >>> mtgraph.Budget.params(10).check_reachable(problem, cheapest=500)
            Traceback (most recent call last):
            ...
            mtgraph.errors.BudgetError: budget 10 parameters (10) is below the cheapest network this strategy can build (500)
        """
        limit = self.resolve(problem)
        if cheapest > limit * (1.0 + 1e-9):
            raise BudgetError(
                f"budget {self.describe()} ({limit:g}) is below the cheapest network this strategy can build ({cheapest:g})"
            )
