"""How an inference budget in GMac becomes the paper's count of networks, and back.

papers/003 counts cost in networks ("SNT"): a full-size network costs 1
however many decoders it has (heads are left out), and a budget of 2 buys
two of them. mtgraph budgets are :class:`~mtgraph.Budget` values in GMac per
image, heads included, as :func:`mtgraph.cost` reports them. For a problem
with trunk MACs ``T`` (every backbone block once) and head MACs ``H`` (every
task's head once, as in One-Net), a solution of ``n`` full-size networks
serving every task once costs exactly ``n·T + H``: each task's head runs once,
on the network serving it, whichever network that is. So

* a GMac budget ``G`` buys ``n = (G − H) / T`` networks;
* ``n`` networks are the budget ``Budget.gmac((n·T + H) / 1e9)``;
* ``Budget.gmac(1, relative_to="one_net")`` is exactly one network, and
  ``Budget.gmac(b, relative_to="one_net")`` is ``b + (b − 1)·H/T`` networks
  (slightly more than ``b``: the heads are paid once, not once per network).

A cheaper network (the paper's half-size single-task networks) costs its own
trunk over ``T``; its head reads a narrower feature map, so it costs no more
than the full-size head of the same task (for heads built by the task
factories), and the solution's GMac stays within the budget.

Parameter budgets are refused: the paper's budget is inference time.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtgraph.budget import Budget
from mtgraph.errors import ConfigError
from mtgraph.problem import Problem

__all__ = ["NetworkUnit", "networks_in", "gmac_limit", "budget_of_networks"]


@dataclass(frozen=True)
class NetworkUnit:
    """One full-size network's trunk MACs and every task's head MACs once, per image.

    Attributes:
        trunk_macs: ``T``, the MACs of every backbone block once.
        heads_macs: ``H``, the MACs of one head per task (One-Net's heads).

    Raises:
        ConfigError: a trunk without MACs or negative head MACs.

    Examples:
        >>> from mtgraph.strategies.grouping import NetworkUnit
        >>> unit = NetworkUnit(trunk_macs=1_000_000, heads_macs=200_000)
        >>> unit.networks(2.2e-3), unit.gmac(2)
        (2.0, 0.0022)
    """

    trunk_macs: int
    heads_macs: int

    def __post_init__(self) -> None:
        if self.trunk_macs <= 0:
            raise ConfigError(f"a network's trunk must have MACs > 0 to count budgets in networks, got {self.trunk_macs}")
        if self.heads_macs < 0:
            raise ConfigError(f"head MACs must be >= 0, got {self.heads_macs}")

    @classmethod
    def of(cls, problem: Problem) -> NetworkUnit:
        """The unit of ``problem``: its backbone's MACs and the heads of its One-Net.

        Examples:
            >>> import mtgraph
            >>> from mtgraph.strategies.grouping import NetworkUnit
            >>> problem = mtgraph.toy_problem(("seg", "depth"))
            >>> unit = NetworkUnit.of(problem)
            >>> unit.trunk_macs == problem.backbone.macs, unit.gmac(1) == problem.reference_costs.one_net_gmac
            (True, True)
        """
        total = round(problem.reference_costs.one_net_gmac * 1e9)
        return cls(problem.backbone.macs, total - problem.backbone.macs)

    def networks(self, gmac: float) -> float:
        """How many full-size networks (serving every task once) a budget of ``gmac`` GMac buys: ``(G − H) / T``."""
        return (gmac * 1e9 - self.heads_macs) / self.trunk_macs

    def gmac(self, networks: float) -> float:
        """The GMac of ``networks`` full-size networks serving every task once: ``(n·T + H) / 1e9``."""
        return (networks * self.trunk_macs + self.heads_macs) / 1e9


def networks_in(problem: Problem, budget: Budget) -> float:
    """The budget ``budget`` in the paper's networks for ``problem`` (see the module docstring).

    Args:
        problem: gives the trunk and head MACs.
        budget: a GMac budget, absolute or relative.

    Returns:
        ``(G − H) / T`` for the budget's GMac ``G``.

    Raises:
        ConfigError: a parameter budget, or not a Budget.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.grouping import networks_in
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> networks_in(problem, mtgraph.Budget.gmac(1, relative_to="one_net"))
        1.0
        >>> networks_in(problem, mtgraph.Budget.params(2e6))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: task grouping budgets inference cost: give a GMac budget (Budget.gmac), got ...
    """
    return NetworkUnit.of(problem).networks(gmac_limit(problem, budget))


def gmac_limit(problem: Problem, budget: Budget) -> float:
    """The GMac limit of ``budget`` on ``problem``, refusing budgets in parameters (the paper budgets inference time).

    Raises:
        ConfigError: a parameter budget, or not a Budget.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.grouping import gmac_limit
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> gmac_limit(problem, mtgraph.Budget.gmac(1, relative_to="one_net")) == problem.reference_costs.one_net_gmac
        True
    """
    if not isinstance(budget, Budget):
        raise ConfigError(f"budget must be an mtgraph.Budget or None, got {type(budget).__name__}")
    if budget.measure != "gmac":
        raise ConfigError(f"task grouping budgets inference cost: give a GMac budget (Budget.gmac), got {budget.describe()}")
    return budget.resolve(problem)


def budget_of_networks(problem: Problem, networks: float) -> Budget:
    """The absolute GMac budget of ``networks`` full-size networks on ``problem`` (inverse of :func:`networks_in`).

    Args:
        problem: gives the trunk and head MACs.
        networks: the count of networks (> 0; fractions allowed, e.g. 1.5).

    Returns:
        ``Budget.gmac((n·T + H) / 1e9)``.

    Raises:
        ConfigError: ``networks`` is not a number > 0.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.grouping import budget_of_networks, networks_in
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> networks_in(problem, budget_of_networks(problem, 2.5))
        2.5
    """
    if isinstance(networks, bool) or not isinstance(networks, (int, float)) or not networks > 0:
        raise ConfigError(f"a budget in networks must be a number > 0, got {networks!r}")
    return Budget.gmac(NetworkUnit.of(problem).gmac(networks))
