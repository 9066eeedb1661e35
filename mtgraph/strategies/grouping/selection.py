"""Network selection under an inference budget (papers/003 §5.2–§5.3, §6).

Given candidate networks, each trained on a subset of the tasks with a
per-task validation loss and an inference cost ``c_n``, choose a set ``S``
minimising ``L(S) = Σ_t min_{n∈S} L(n, t)`` subject to ``Σ_{n∈S} c_n ≤ b``
and every task served. Each task is served by the chosen network with the
lowest loss on it; the other heads of a chosen network are auxiliary (they
helped training and are pruned at export).

Everything here is pure: losses in, a :class:`Solution` out. Training the
candidates, and training the chosen networks after an approximation, is the
caller's job (see the ``train`` hooks).

Exactness and ties
------------------
:func:`select_networks` is exact. It is a branch and bound after the
authors' supplement, whose pseudo-code is not in our copy of the paper; the
notes (methods-003-004.md §A.4) describe the reference code: depth first,
commit one network at a time, consider a network only if it fits the
remaining budget and improves some task, best improvement first. We keep
that and change two things, both exactness-preserving, because the plain
version took minutes for 7 tasks:

* **Branching.** Each step commits a network to the *first task not yet
  served*, together with the other unserved tasks it will serve. Every set
  of networks is then generated once, as its serving assignment, and what
  is left is always "serve these tasks within this much budget".
* **Bound: the best possible remaining loss.** Before the search, a subset
  dynamic programme computes, for every subset ``U`` of tasks, the Pareto
  front of (cost, loss) for serving exactly ``U``; ``G(U, r)`` is the
  lowest loss on ``U`` within budget ``r``, the exact optimum of the
  remaining problem. A branch is pruned when its committed loss plus
  ``G`` exceeds the incumbent, or when ``G`` says the unserved tasks
  cannot be served within the remaining budget.

A pre-filter also drops dominated candidates (another network is at least
as good on all its tasks and cheaper).

Losses and costs are compared as exact rationals (floats are dyadic, so they
are scaled to integers), and equal-loss solutions are ordered by lower total
cost, then fewer networks, then the sorted network names. So branch and
bound and :func:`brute_force_select` return the same solution, not just the
same loss.

Limits: the problem is NP-hard (set cover). The tables behind the bound have
``O(3^k)`` entries for ``k`` tasks (19,683 at k = 9). With the paper's
candidate set (all ``2^k − 1`` subsets plus ``k`` half-size singles) one
selection takes milliseconds at k = 5 and under a second at k = 9 (520
candidates); past about 12 tasks the tables, not the search, become the
limit. :func:`brute_force_select` is exponential in the number of
candidates and refuses to look at more than ``max_subsets`` subsets.

Costs are floats (SNT, GMac); a set fits when its cost is at most the budget
plus a relative slack of 1e-9, so ``0.5 + 0.5 + 1`` fits a budget of 2
whatever the rounding.
"""

from __future__ import annotations

import itertools
import math
import random
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Real
from types import MappingProxyType

import numpy as np

from mtgraph.errors import BudgetError, ConfigError
from mtgraph.options import check_names

__all__ = [
    "ApproximateSelection",
    "Candidate",
    "RandomBaseline",
    "Solution",
    "SweepPoint",
    "brute_force_select",
    "budget_sweep",
    "cheapest_cover",
    "early_stopping_approximation",
    "higher_order_approximation",
    "higher_order_candidates",
    "pessimal_select",
    "predict_from_pairs",
    "random_baseline",
    "random_solution",
    "rescore",
    "select_networks",
    "train_chosen",
]

_RELATIVE_BUDGET_SLACK = 1e-9
DEFAULT_MAX_SUBSETS = 2_000_000
DEFAULT_MAX_NODES = 2_000_000


# --------------------------------------------------------------------------- #
# Records
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Candidate:
    """A candidate network: per-task losses of the tasks it has heads for, and its cost.

    ``losses`` maps each task the network was trained on to its loss
    (validation loss for selection; early or predicted losses for the
    approximations). ``cost`` is its inference cost ``c_n`` (SNT, GMac, …).
    ``label`` tells apart networks with the same tasks (``"half-size"``);
    ``predicted`` marks losses that are a prediction (higher-order
    approximation) rather than measured, so the network still has to be
    trained. The name is the sorted task names joined with ``+``, plus
    ``[label]``.

    Raises:
        ConfigError: no losses, a non-finite loss, a negative cost or an empty label.

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate
        >>> net = Candidate({"seg": 0.5, "depth": 0.25}, cost=1.0)
        >>> net.name, sorted(net.tasks)
        ('depth+seg', ['depth', 'seg'])
        >>> Candidate({"seg": 0.5}, cost=0.5, label="half-size").name
        'seg[half-size]'
        >>> Candidate({"seg": float("nan")}, cost=1.0)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: loss of task 'seg' must be a finite number, got nan ...
    """

    losses: Mapping[str, float] = field(hash=False)
    cost: float
    label: str | None = None
    predicted: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.losses, Mapping) or not self.losses:
            raise ConfigError(f"a candidate needs a non-empty mapping task -> loss, got {self.losses!r}")
        clean: dict[str, float] = {}
        for task in sorted(self.losses):
            loss = self.losses[task]
            if not isinstance(task, str) or not task:
                raise ConfigError(f"task names must be non-empty strings, got {task!r}")
            if isinstance(loss, bool) or not isinstance(loss, Real) or not math.isfinite(loss):
                raise ConfigError(
                    f"loss of task {task!r} must be a finite number, got {loss!r} "
                    "(leave out a task the network does not solve)"
                )
            clean[task] = float(loss)
        object.__setattr__(self, "losses", MappingProxyType(clean))
        cost = self.cost
        if isinstance(cost, bool) or not isinstance(cost, Real) or not math.isfinite(cost) or cost < 0:
            raise ConfigError(f"cost of network {self.name} must be a finite number ≥ 0, got {cost!r}")
        object.__setattr__(self, "cost", float(cost))
        if self.label is not None and (not isinstance(self.label, str) or not self.label):
            raise ConfigError(f"label must be a non-empty string or None, got {self.label!r}")

    @property
    def tasks(self) -> frozenset[str]:
        """The tasks the network has heads for."""
        return frozenset(self.losses)

    @property
    def name(self) -> str:
        """``"d+n+s"`` or ``"s[half-size]"``: unique within a candidate set."""
        base = "+".join(sorted(self.losses))
        return f"{base}[{self.label}]" if self.label else base

    def __hash__(self) -> int:
        return hash((self.name, self.cost, self.predicted))


@dataclass(frozen=True)
class Solution:
    """A chosen set of networks and how it serves the tasks.

    ``networks`` are sorted by name; ``serving`` maps each task to the name
    of the network whose head is used for it; ``task_losses`` are those
    heads' losses, ``total_loss`` their sum and ``total_cost`` the summed
    cost of the networks. ``budget`` is the budget it was selected under
    (None for a rescored or retrained solution).

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, select_networks
        >>> table = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...          Candidate({"a": 0.75, "b": 0.75, "c": 1.5}, 1.0)]  # three singles and one 3-task network
        >>> solution = select_networks(table, ["a", "b", "c"], budget=2.0)
        >>> print(solution)
        {a+b+c -> a,b; c -> c} loss=2.5 cost=2
        >>> dict(solution.serving), solution.network("c").name
        ({'a': 'a+b+c', 'b': 'a+b+c', 'c': 'c'}, 'c')
        >>> solution.auxiliary_heads()  # a+b+c's head for c is not used
        {'a+b+c': ('c',)}
    """

    networks: tuple[Candidate, ...]
    serving: Mapping[str, str]
    task_losses: Mapping[str, float]
    total_loss: float
    total_cost: float
    budget: float | None = None

    def network(self, task: str) -> Candidate:
        """The network that serves ``task``."""
        if task not in self.serving:
            raise ConfigError(f"task {task!r} is not one of {sorted(self.serving)}")
        name = self.serving[task]
        return next(n for n in self.networks if n.name == name)

    def auxiliary_heads(self) -> dict[str, tuple[str, ...]]:
        """For each chosen network, the heads it has but does not serve (pruned at export)."""
        out: dict[str, tuple[str, ...]] = {}
        for net in self.networks:
            unused = tuple(sorted(t for t in net.tasks if self.serving.get(t) != net.name))
            if unused:
                out[net.name] = unused
        return out

    def __str__(self) -> str:
        parts = []
        for net in self.networks:
            served = sorted(t for t, n in self.serving.items() if n == net.name)
            parts.append(f"{net.name} -> {','.join(served) or '-'}")
        return f"{{{'; '.join(parts)}}} loss={self.total_loss:.6g} cost={self.total_cost:g}"


# --------------------------------------------------------------------------- #
# Shared helpers
# --------------------------------------------------------------------------- #


def _with_slack(budget: float) -> float:
    """The largest total cost accepted for ``budget`` (absorbs float rounding)."""
    return budget + _RELATIVE_BUDGET_SLACK * max(1.0, abs(budget))


def _fits(total_cost: float, budget: float) -> bool:
    return total_cost <= _with_slack(budget)


def _checked_budget(budget: float) -> float:
    if isinstance(budget, bool) or not isinstance(budget, Real) or math.isnan(budget):
        raise ConfigError(f"budget must be a number, got {budget!r}")
    return float(budget)


def _checked_candidates(candidates: Iterable[Candidate], tasks: tuple[str, ...]) -> list[Candidate]:
    """Candidates sorted by name, unique names, every task served by someone.

    Candidates that serve none of ``tasks`` are dropped: their heads are for
    tasks outside this selection.
    """
    if isinstance(candidates, Candidate):
        raise ConfigError("candidates must be a sequence of Candidate, got a single Candidate")
    pool = list(candidates)
    for c in pool:
        if not isinstance(c, Candidate):
            raise ConfigError(f"candidates must be Candidate records, got {type(c).__name__}")
    seen: dict[str, Candidate] = {}
    for c in pool:
        if c.name in seen:
            raise ConfigError(
                f"two candidates are both named {c.name!r}; give networks with the same tasks different labels"
            )
        seen[c.name] = c
    wanted = set(tasks)
    useful = sorted((c for c in pool if c.tasks & wanted), key=lambda c: c.name)
    served = set().union(*(c.tasks for c in useful)) if useful else set()
    missing = [t for t in tasks if t not in served]
    if missing:
        raise ConfigError(f"no candidate network solves task(s) {missing}; every task needs at least one")
    return useful


def _serving_order(candidate: Candidate) -> tuple[float, int, str]:
    # Ties between equal-loss heads: cheaper network, then fewer heads, then name.
    return (candidate.cost, len(candidate.losses), candidate.name)


def _make_solution(networks: Sequence[Candidate], tasks: tuple[str, ...], budget: float | None) -> Solution:
    """Assign every task to the chosen network with the lowest loss on it."""
    chosen = tuple(sorted(networks, key=lambda c: c.name))
    serving: dict[str, str] = {}
    task_losses: dict[str, float] = {}
    for task in tasks:
        options = [n for n in chosen if task in n.losses]
        if not options:
            raise ConfigError(f"task {task!r} is not served by any of {[n.name for n in chosen]}")
        best = min(options, key=lambda n: (n.losses[task], *_serving_order(n)))
        serving[task] = best.name
        task_losses[task] = best.losses[task]
    return Solution(
        networks=chosen,
        serving=MappingProxyType(serving),
        task_losses=MappingProxyType(task_losses),
        total_loss=math.fsum(task_losses[t] for t in tasks),
        total_cost=math.fsum(n.cost for n in chosen),
        budget=budget,
    )


# --------------------------------------------------------------------------- #
# Feasibility
# --------------------------------------------------------------------------- #


def cheapest_cover(candidates: Sequence[Candidate], tasks: Sequence[str]) -> tuple[float, tuple[Candidate, ...]]:
    """The lowest total cost of a set of candidates that serves every task.

    Exact weighted set cover by depth-first search: branch on the uncovered
    task with the fewest candidates, prune on cost. Any budget below this
    cost is infeasible. Returns the cost and one cheapest set.

    Args:
        candidates: the candidate networks.
        tasks: the tasks to serve.

    Returns:
        ``(cost, networks sorted by name)``.

    Raises:
        ConfigError: bad task names, bad candidates, or a task no candidate serves.

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, cheapest_cover
        >>> table = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...          Candidate({"a": 0.75, "b": 0.75, "c": 1.5}, 1.0)]  # three singles and one 3-task network
        >>> cost, networks = cheapest_cover(table, ["a", "b", "c"])
        >>> cost, [n.name for n in networks]
        (1.0, ['a+b+c'])
    """
    names = check_names("cheapest_cover", "tasks", tasks)
    pool = _checked_candidates(candidates, names)
    # Only the cheapest network for each set of (relevant) tasks matters here.
    cheapest: dict[frozenset[str], Candidate] = {}
    for c in pool:
        key = c.tasks & frozenset(names)
        if key not in cheapest or c.cost < cheapest[key].cost:
            cheapest[key] = c
    options = sorted(cheapest.values(), key=lambda c: (c.cost, c.name))
    best: list[tuple[float, tuple[Candidate, ...]]] = []

    def search(uncovered: frozenset[str], chosen: tuple[Candidate, ...], spent: float) -> None:
        if best and spent >= best[0][0]:
            return
        if not uncovered:
            best[:] = [(spent, chosen)]
            return
        task = min(uncovered, key=lambda t: (sum(t in c.tasks for c in options), t))
        for c in options:  # sorted by cost, so the first too-expensive one ends the loop
            if best and math.fsum([spent, c.cost]) >= best[0][0]:
                break
            if task in c.tasks:
                search(uncovered - c.tasks, (*chosen, c), math.fsum([spent, c.cost]))

    search(frozenset(names), (), 0.0)
    cost, chosen = best[0]
    return math.fsum(c.cost for c in chosen), tuple(sorted(chosen, key=lambda c: c.name))


def _require_feasible(pool: Sequence[Candidate], tasks: tuple[str, ...], budget: float) -> None:
    minimum, cover = cheapest_cover(pool, tasks)
    if not _fits(minimum, budget):
        raise BudgetError(
            f"budget {budget:g} cannot serve every task: the cheapest feasible set of networks "
            f"({', '.join(c.name for c in cover)}) costs {minimum:g}; the budget must be at least {minimum:g}"
        )


# --------------------------------------------------------------------------- #
# Exact selection
# --------------------------------------------------------------------------- #


def _undominated(pool: Sequence[Candidate], tasks: tuple[str, ...]) -> list[Candidate]:
    """Drop ``n`` when some ``n'`` is at least as good on all of ``n``'s tasks.

    ``n'`` must have a loss no higher on every one of ``n``'s (relevant)
    tasks, hence solve all of them, and be cheaper, or equally cheap with a
    smaller name. Any solution using ``n`` is then matched or beaten, under
    the full tie order, by the same solution with ``n'`` instead, so the
    optimum survives. The relation is a strict order on (cost, name), so
    every dropped network has a surviving dominator.
    """
    if len(pool) < 2:
        return list(pool)
    loss = np.array([[c.losses.get(t, math.inf) for t in tasks] for c in pool], dtype=np.float64)
    cost = np.array([c.cost for c in pool], dtype=np.float64)
    order = np.arange(len(pool))  # ``pool`` is sorted by name
    kept = []
    for i, n in enumerate(pool):
        mine = np.isfinite(loss[i])
        # inf <= finite is False, so this also demands that n' solves n's tasks.
        as_good = np.all(loss[:, mine] <= loss[i, mine], axis=1)
        earlier = (cost < cost[i]) | ((cost == cost[i]) & (order < i))
        if not np.any(as_good & earlier):
            kept.append(n)
    return kept


def _dyadic_scale(values: Iterable[float]) -> int:
    """A power of two that turns every float in ``values`` into an exact integer."""
    return max((Fraction(v).denominator for v in values), default=1)


def _pareto(entries: Iterable[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(costs, losses) of the non-dominated (cost, loss) pairs: costs up, losses strictly down."""
    costs: list[int] = []
    losses: list[int] = []
    for cost, loss in sorted(entries):
        if not losses or loss < losses[-1]:
            costs.append(cost)
            losses.append(loss)
    return costs, losses


class _Selector:
    """Exact selection over one candidate pool, for any budget up to ``max_budget``.

    Losses and costs are converted to integers on a common power-of-two
    scale, so sums and comparisons are exact: equal-loss solutions really
    tie and are ordered by the tie rule, whatever the summation order.
    """

    def __init__(self, pool: Sequence[Candidate], tasks: tuple[str, ...], max_budget: float) -> None:
        # ``max_budget`` already includes the float slack; it may be inf.
        self.pool = list(pool)
        self.tasks = tasks
        relevant = [[c.losses.get(t) for t in tasks] for c in self.pool]
        loss_scale = _dyadic_scale(v for row in relevant for v in row if v is not None)
        finite_budget = [max_budget] if math.isfinite(max_budget) else []
        self._cost_scale = _dyadic_scale([c.cost for c in self.pool] + finite_budget)
        # Per candidate: (task index, scaled loss) for the tasks it solves.
        self.entries = [
            [(t, int(Fraction(v) * loss_scale)) for t, v in enumerate(row) if v is not None] for row in relevant
        ]
        self.cost = [int(Fraction(c.cost) * self._cost_scale) for c in self.pool]
        self.full = (1 << len(tasks)) - 1
        self.ceiling = self._scaled_budget(max_budget)
        self.blocks = self._blocks()
        self.fronts = self._remaining_loss_fronts()

    def _scaled_budget(self, budget: float) -> int:
        """Largest integer total cost within ``budget`` (slack included), capped at buying everything."""
        everything = sum(self.cost)
        if not math.isfinite(budget):
            return everything
        return min(everything, math.floor(Fraction(budget) * self._cost_scale))

    def _blocks(self) -> dict[int, list[tuple[int, int, int]]]:
        """For each task subset (bit mask): every (cost, loss on the subset, candidate) able to serve it."""
        blocks: dict[int, list[tuple[int, int, int]]] = {}
        for i, (entries, cost) in enumerate(zip(self.entries, self.cost, strict=True)):
            if cost > self.ceiling:
                continue
            sums = {0: 0}
            for t, value in entries:
                for mask, total in list(sums.items()):
                    sums[mask | (1 << t)] = total + value
            for mask, total in sums.items():
                if mask:
                    blocks.setdefault(mask, []).append((cost, total, i))
        for options in blocks.values():
            options.sort()
        return blocks

    def _remaining_loss_fronts(self) -> list[tuple[list[int], list[int]]]:
        """For every task subset ``U``: the (cost, loss) Pareto front of serving exactly ``U``.

        A subset DP: the block holding ``U``'s lowest task is served by one
        network, the rest recursively. ``G(U, r)``, the last front entry with
        cost ≤ r, is the best possible loss on ``U`` within budget ``r``
        (exact: a network used for two blocks here pays twice, and serving
        both blocks with one copy is cheaper still).
        """
        best_per_block = {mask: _pareto((c, loss) for c, loss, _ in options) for mask, options in self.blocks.items()}
        fronts: list[tuple[list[int], list[int]]] = [([0], [0])] + [([], [])] * self.full
        for whole in range(1, self.full + 1):
            low = whole & -whole
            combos: list[tuple[int, int]] = []
            for block in _blocks_with(low, whole ^ low):
                if block not in best_per_block:
                    continue
                b_costs, b_losses = best_per_block[block]
                r_costs, r_losses = fronts[whole ^ block]
                for rc, rl in zip(r_costs, r_losses, strict=True):
                    for bc, bl in zip(b_costs, b_losses, strict=True):
                        if rc + bc <= self.ceiling:
                            combos.append((rc + bc, rl + bl))
            fronts[whole] = _pareto(combos)
        return fronts

    def _best_remaining(self, tasks: int, room: int) -> int | None:
        """``G(tasks, room)``; None when those tasks cannot be served within ``room``."""
        costs, losses = self.fronts[tasks]
        idx = bisect_right(costs, room) - 1
        return losses[idx] if idx >= 0 else None

    def _set_key(self, chosen: Iterable[int]) -> tuple[int, int, int, tuple[str, ...]]:
        """The tie order of a set of networks: (loss, cost, count, names), exact."""
        members = sorted(set(chosen))
        per_task: dict[int, int] = {}
        for i in members:
            for t, value in self.entries[i]:
                if t not in per_task or value < per_task[t]:
                    per_task[t] = value
        names = tuple(sorted(self.pool[i].name for i in members))
        return (sum(per_task.values()), sum(self.cost[i] for i in members), len(members), names)

    def solve(self, budget: float) -> tuple[Candidate, ...]:
        """The optimal set of networks for ``budget`` (slack included, ≤ the selector's max)."""
        ceiling = min(self._scaled_budget(budget), self.ceiling)
        best_key: tuple[int, int, int, tuple[str, ...]] | None = None
        best_set: tuple[int, ...] = ()

        def node(unserved: int, room: int, committed: int, chosen: tuple[int, ...]) -> None:
            nonlocal best_key, best_set
            if not unserved:
                key = self._set_key(chosen)
                if best_key is None or key < best_key:
                    best_key, best_set = key, chosen
                return
            # Commit one network to serve the first unserved task, together
            # with a choice of other unserved tasks it also serves.
            low = unserved & -unserved
            branches = []
            for block in _blocks_with(low, unserved ^ low):
                for cost, loss, i in self.blocks.get(block, ()):
                    if cost > room:
                        break  # options are sorted by cost
                    rest = self._best_remaining(unserved ^ block, room - cost)
                    if rest is not None:
                        branches.append((committed + loss + rest, cost, i, block, loss))
            branches.sort()  # best possible total first
            for bound, cost, i, block, loss in branches:
                # Strict: equal-loss branches may still win the tie on cost or names.
                if best_key is not None and bound > best_key[0]:
                    break
                node(unserved ^ block, room - cost, committed + loss, (*chosen, i))

        node(self.full, ceiling, 0, ())
        return tuple(self.pool[i] for i in sorted(set(best_set)))


def _blocks_with(low: int, others: int) -> Iterator[int]:
    """Every bit mask made of ``low`` plus a subset of ``others``."""
    sub = others
    while True:
        yield sub | low
        if sub == 0:
            return
        sub = (sub - 1) & others


def select_networks(candidates: Sequence[Candidate], tasks: Sequence[str], budget: float) -> Solution:
    """The set of networks with the lowest total loss whose cost fits ``budget``.

    Exact branch and bound (module docstring). ``tasks`` fixes the tasks to
    serve and their order in the result; heads for other tasks are ignored.

    Args:
        candidates: the candidate networks (unique names).
        tasks: the tasks to serve.
        budget: the largest total cost allowed.

    Returns:
        The optimal :class:`Solution`.

    Raises:
        BudgetError: no set of candidates serving every task fits the
            budget (the message names the cheapest feasible cost).
        ConfigError: bad task names or candidates, or a task no candidate serves.

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, select_networks
        >>> table = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...          Candidate({"a": 0.75, "b": 0.75, "c": 1.5}, 1.0)]  # three singles and one 3-task network
        >>> print(select_networks(table, ["a", "b", "c"], budget=1.0))
        {a+b+c -> a,b,c} loss=3 cost=1
        >>> print(select_networks(table, ["a", "b", "c"], budget=2.0))
        {a+b+c -> a,b; c -> c} loss=2.5 cost=2
        >>> select_networks(table, ["a", "b", "c"], budget=0.5)
        Traceback (most recent call last):
        ...
        mtgraph.errors.BudgetError: budget 0.5 cannot serve every task: ... costs 1; the budget must be at least 1
    """
    names = check_names("select_networks", "tasks", tasks)
    limit = _checked_budget(budget)
    pool = _checked_candidates(candidates, names)
    _require_feasible(pool, names, limit)
    return _make_solution(_selector(pool, names, limit).solve(_with_slack(limit)), names, limit)


def _selector(pool: Sequence[Candidate], names: tuple[str, ...], max_budget: float) -> _Selector:
    ceiling = _with_slack(max_budget)
    return _Selector(_undominated([c for c in pool if c.cost <= ceiling], names), names, ceiling)


def brute_force_select(
    candidates: Sequence[Candidate],
    tasks: Sequence[str],
    budget: float,
    *,
    max_subsets: int = DEFAULT_MAX_SUBSETS,
) -> Solution:
    """Reference solver: try every subset of candidates that fits the budget.

    Same objective, constraint and tie order as :func:`select_networks`, with
    no pruning beyond the budget; used to check it.

    Args:
        candidates: the candidate networks.
        tasks: the tasks to serve.
        budget: the largest total cost allowed.
        max_subsets: give up after visiting this many subsets.

    Returns:
        The optimal :class:`Solution` (the same as :func:`select_networks`').

    Raises:
        ConfigError: more than ``max_subsets`` subsets (rather than running
            for hours), or bad inputs.
        BudgetError: no feasible set fits the budget.

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, brute_force_select, select_networks
        >>> table = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...          Candidate({"a": 0.75, "b": 0.75, "c": 1.5}, 1.0)]  # three singles and one 3-task network
        >>> print(brute_force_select(table, ["a", "b", "c"], budget=2.0))
        {a+b+c -> a,b; c -> c} loss=2.5 cost=2
        >>> str(brute_force_select(table, ["a", "b", "c"], 2.0)) == str(select_networks(table, ["a", "b", "c"], 2.0))
        True
    """
    names = check_names("brute_force_select", "tasks", tasks)
    limit = _checked_budget(budget)
    pool = _checked_candidates(candidates, names)
    _require_feasible(pool, names, limit)
    # Exact rational sums, so ties are real ties as in select_networks.
    ceiling = Fraction(_with_slack(limit)) if math.isfinite(limit) else None
    costs = [Fraction(c.cost) for c in pool]
    best: tuple[tuple[Fraction, Fraction, int, tuple[str, ...]], tuple[Candidate, ...]] | None = None
    visited = 0

    def extend(start: int, chosen: tuple[Candidate, ...], spent: Fraction) -> None:
        nonlocal best, visited
        visited += 1
        if visited > max_subsets:
            raise ConfigError(
                f"brute force visited more than {max_subsets:,} subsets of {len(pool)} candidates; use select_networks"
            )
        if chosen:
            per_task = [min(c.losses.get(t, math.inf) for c in chosen) for t in names]
            if all(math.isfinite(v) for v in per_task):
                loss = sum((Fraction(v) for v in per_task), Fraction(0))
                key = (loss, spent, len(chosen), tuple(sorted(c.name for c in chosen)))
                if best is None or key < best[0]:
                    best = (key, chosen)
        for i in range(start, len(pool)):
            if ceiling is None or spent + costs[i] <= ceiling:
                extend(i + 1, (*chosen, pool[i]), spent + costs[i])

    extend(0, (), Fraction(0))
    if best is None:  # unreachable: feasibility was checked above
        raise BudgetError(f"no set of candidates serves every task within budget {limit:g}")
    return _make_solution(best[1], names, limit)


def rescore(
    solution: Solution,
    candidates: Sequence[Candidate],
    tasks: Sequence[str],
    *,
    reselect_serving: bool = False,
) -> Solution:
    """Score a chosen set on another loss table (e.g. the test split).

    Networks are matched by name in ``candidates``. By default each task keeps
    the head chosen on validation (the honest protocol). With
    ``reselect_serving`` the head is re-chosen as the per-task minimum on
    the new table, which is what the authors' code does when it reports
    test losses (notes/methods-003-004.md §A.4).

    Args:
        solution: the chosen set.
        candidates: the other loss table (networks matched by name).
        tasks: the tasks to serve.
        reselect_serving: re-choose each task's head on the new table.

    Returns:
        The solution scored on the new table (``budget`` None).

    Raises:
        ConfigError: a chosen network or one of its losses is missing from the new table.

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, rescore, select_networks
        >>> table = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...          Candidate({"a": 0.75, "b": 0.75, "c": 1.5}, 1.0)]  # three singles and one 3-task network
        >>> solution = select_networks(table, ["a", "b", "c"], budget=2.0)
        >>> test = [Candidate({t: v + 0.5 for t, v in c.losses.items()}, c.cost) for c in table]  # worse everywhere
        >>> rescore(solution, test, ["a", "b", "c"]).total_loss
        4.0
    """
    names = check_names("rescore", "tasks", tasks)
    table = {c.name: c for c in candidates}
    missing = [n.name for n in solution.networks if n.name not in table]
    if missing:
        raise ConfigError(f"network(s) {missing} of the solution are not in the new loss table")
    nets = tuple(table[n.name] for n in solution.networks)
    if reselect_serving:
        return _make_solution(nets, names, None)
    serving: dict[str, str] = {}
    task_losses: dict[str, float] = {}
    for task in names:
        if task not in solution.serving:
            raise ConfigError(f"task {task!r} is not served by the solution")
        net = table[solution.serving[task]]
        if task not in net.losses:
            raise ConfigError(f"network {net.name} has no loss for task {task!r} in the new table")
        serving[task] = net.name
        task_losses[task] = net.losses[task]
    return Solution(
        networks=nets,
        serving=MappingProxyType(serving),
        task_losses=MappingProxyType(task_losses),
        total_loss=math.fsum(task_losses[t] for t in names),
        total_cost=math.fsum(n.cost for n in nets),
        budget=None,
    )


# --------------------------------------------------------------------------- #
# Budget sweep
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class SweepPoint:
    """One point of the loss-vs-budget curve.

    Attributes:
        budget: the budget.
        solution: the optimal solution at that budget.

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, budget_sweep
        >>> table = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...          Candidate({"a": 0.75, "b": 0.75, "c": 1.5}, 1.0)]  # three singles and one 3-task network
        >>> point = budget_sweep(table, ["a", "b", "c"], [2.0])[0]
        >>> point.budget, point.loss, point.solution.total_cost
        (2.0, 2.5, 2.0)
    """

    budget: float
    solution: Solution

    @property
    def loss(self) -> float:
        """Total loss of the solution at this budget."""
        return self.solution.total_loss


def budget_sweep(candidates: Sequence[Candidate], tasks: Sequence[str], budgets: Iterable[float]) -> list[SweepPoint]:
    """Optimal selection at each budget: the loss-vs-budget curve (papers/003 figs. 2–6).

    The optimal loss never increases with the budget (a larger budget admits
    every smaller solution).

    Args:
        candidates: the candidate networks.
        tasks: the tasks to serve.
        budgets: the budgets, in the order of the result.

    Returns:
        One :class:`SweepPoint` per budget.

    Raises:
        BudgetError: a budget is below the cheapest feasible cost (named).
        ConfigError: bad inputs.

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, budget_sweep
        >>> table = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...          Candidate({"a": 0.75, "b": 0.75, "c": 1.5}, 1.0)]  # three singles and one 3-task network
        >>> [(point.budget, point.loss) for point in budget_sweep(table, ["a", "b", "c"], [1, 2, 3])]
        [(1.0, 3.0), (2.0, 2.5), (3.0, 2.5)]
    """
    names = check_names("budget_sweep", "tasks", tasks)
    pool = _checked_candidates(candidates, names)
    levels = [_checked_budget(b) for b in budgets]
    if levels:
        minimum, cover = cheapest_cover(pool, names)
        low = [b for b in levels if not _fits(minimum, b)]
        if low:
            raise BudgetError(
                f"budget(s) {[f'{b:g}' for b in low]} cannot serve every task: the cheapest feasible set "
                f"({', '.join(c.name for c in cover)}) costs {minimum:g}"
            )
    if not levels:
        return []
    # One selector (and one subset DP) for the whole curve.
    selector = _selector(pool, names, max(levels))
    return [SweepPoint(b, _make_solution(selector.solve(_with_slack(b)), names, b)) for b in levels]


# --------------------------------------------------------------------------- #
# Higher-order approximation (§5.3.2)
# --------------------------------------------------------------------------- #


def predict_from_pairs(
    pairs: Iterable[Candidate],
    network_tasks: Iterable[str],
    *,
    singles: Iterable[Candidate] = (),
) -> dict[str, float]:
    """Predicted per-task losses of a network on ``network_tasks`` (≥ 3 tasks).

    papers/003 §5.3.2: the loss of task ``t`` in network ``N`` is the mean of
    ``t``'s loss over the trained pair networks ``{t, u}`` with ``u ∈ N``:
    ``L̂(N, t) = mean_{u ∈ N∖{t}} L({t, u}, t)``. Missing pair networks are
    skipped (the authors' code averages whatever pairs exist). If a task has
    no pair inside ``N`` at all, the paper gives no rule; we fall back to its
    single-task network's loss from ``singles`` (one per task), the only
    trained evidence left, and raise ConfigError if there is none (the
    authors' code silently drops the task from the network instead).

    The paper's worked example has an arithmetic slip: with pairs a&b =
    0.1&0.2, b&c = 0.3&0.4 and a&c = 0.5&0.6 it gives ``a = (0.1 + 0.6)/2 =
    0.35``, adding c's loss from a&c; the rule gives ``a = (0.1 + 0.5)/2 =
    0.30`` (b = 0.25 and c = 0.5 are right). This implements the rule.

    Args:
        pairs: trained two-task networks.
        network_tasks: the tasks of the network to predict (at least 3).
        singles: trained single-task networks (the fallback).

    Returns:
        Predicted loss per task of the network.

    Raises:
        ConfigError: fewer than 3 tasks, malformed pairs or singles, or a
            task with neither a pair nor a single.

    Examples:
        The paper's worked example:

        >>> from mtgraph.strategies.grouping import Candidate, predict_from_pairs
        >>> pairs = [Candidate({"a": 0.1, "b": 0.2}, 1.0), Candidate({"b": 0.3, "c": 0.4}, 1.0),
        ...          Candidate({"a": 0.5, "c": 0.6}, 1.0)]
        >>> predict_from_pairs(pairs, ["a", "b", "c"])
        {'a': 0.3, 'b': 0.25, 'c': 0.5}
    """
    members = frozenset(network_tasks)
    if len(members) < 3:
        raise ConfigError(f"higher-order prediction is for networks with at least 3 tasks, got {sorted(members)}")
    by_pair: dict[frozenset[str], Candidate] = {}
    for p in pairs:
        if len(p.tasks) != 2:
            raise ConfigError(f"pair networks must have exactly two tasks, got {p.name}")
        if p.tasks in by_pair:
            raise ConfigError(
                f"two pair networks for tasks {sorted(p.tasks)} ({by_pair[p.tasks].name}, {p.name}); "
                "pass the one to average"
            )
        by_pair[p.tasks] = p
    fallback: dict[str, Candidate] = {}
    for s in singles:
        if len(s.tasks) != 1:
            raise ConfigError(f"single-task networks must have one task, got {s.name}")
        (task,) = s.tasks
        if task in fallback:
            raise ConfigError(f"two single-task networks for {task!r} ({fallback[task].name}, {s.name})")
        fallback[task] = s
    predicted: dict[str, float] = {}
    for t in sorted(members):
        values = [by_pair[frozenset((t, u))].losses[t] for u in sorted(members - {t}) if frozenset((t, u)) in by_pair]
        if values:
            predicted[t] = math.fsum(values) / len(values)
        elif t in fallback:
            predicted[t] = fallback[t].losses[t]
        else:
            raise ConfigError(
                f"cannot predict the loss of task {t!r} in network {'+'.join(sorted(members))}: no trained pair "
                f"network {{{t}, u}} with u in it and no single-task network for {t!r}"
            )
    return predicted


def higher_order_candidates(
    trained: Sequence[Candidate],
    tasks: Sequence[str],
    *,
    cost: float | Callable[[frozenset[str]], float] | None = None,
    min_order: int = 3,
) -> list[Candidate]:
    """The HOA candidate set: the trained ≤2-task networks plus predicted larger ones.

    ``trained`` holds the networks with one or two tasks, trained to
    convergence (the paper: all of them, half-size singles included). One
    ``predicted=True`` candidate is added for every subset of ``tasks`` with
    at least ``min_order`` tasks, its losses from :func:`predict_from_pairs`
    (falling back to the unlabelled single-task network of a task that has
    no pair inside the subset). ``cost`` is the predicted networks' cost, a
    number or a function of the task set; by default the common cost of the
    pair networks (1 SNT in the paper).

    Args:
        trained: the trained networks with one or two tasks.
        tasks: the tasks.
        cost: cost of the predicted networks (number, or function of the task set).
        min_order: smallest predicted network (>= 3).

    Returns:
        ``trained`` followed by the predicted candidates.

    Raises:
        ConfigError: a trained network with more than two tasks, a bad
            ``min_order``, pair networks of different costs without ``cost``,
            or a loss that cannot be predicted.

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, higher_order_candidates
        >>> trained = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...            Candidate({"a": 0.5, "b": 0.75}, 1.0), Candidate({"b": 0.5, "c": 0.75}, 1.0),
        ...            Candidate({"a": 0.5, "c": 0.5}, 1.0)]  # singles and pairs
        >>> predicted = [c for c in higher_order_candidates(trained, ["a", "b", "c"]) if c.predicted]
        >>> [(c.name, dict(c.losses)) for c in predicted]
        [('a+b+c', {'a': 0.5, 'b': 0.625, 'c': 0.625})]
    """
    names = check_names("higher_order_candidates", "tasks", tasks)
    pool = list(trained)
    big = [c.name for c in pool if len(c.tasks) > 2]
    if big:
        raise ConfigError(
            f"higher-order approximation predicts every network with {min_order} or more tasks; "
            f"pass only trained networks with one or two tasks (got {big})"
        )
    if isinstance(min_order, bool) or not isinstance(min_order, int) or min_order < 3:
        raise ConfigError(f"min_order must be an integer ≥ 3, got {min_order!r}")
    wanted = frozenset(names)
    pairs = [c for c in pool if len(c.tasks) == 2 and c.tasks <= wanted]
    singles = [c for c in pool if len(c.tasks) == 1 and c.label is None and c.tasks <= wanted]
    cost_of = _predicted_cost(cost, pairs)
    predicted = []
    for size in range(min_order, len(names) + 1):
        for subset in itertools.combinations(names, size):
            members = frozenset(subset)
            losses = predict_from_pairs(
                [p for p in pairs if p.tasks <= members],
                members,
                singles=[s for s in singles if s.tasks <= members],
            )
            predicted.append(Candidate(losses, cost_of(members), predicted=True))
    return pool + predicted


def _predicted_cost(
    cost: float | Callable[[frozenset[str]], float] | None, pairs: Sequence[Candidate]
) -> Callable[[frozenset[str]], float]:
    if callable(cost):
        return cost
    if cost is not None:
        value = float(cost)
        return lambda _members: value
    costs = {p.cost for p in pairs}
    if len(costs) != 1:
        raise ConfigError(
            f"pair networks have costs {sorted(costs)}; pass cost= for the predicted higher-order networks"
        )
    value = costs.pop()
    return lambda _members: value


# --------------------------------------------------------------------------- #
# Approximations end to end: select on proxies, then train the chosen
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ApproximateSelection:
    """Selection made on proxy losses, and the same networks after full training.

    ``proxy`` is chosen on early (ESA) or predicted (HOA) losses; ``final``
    re-serves the same networks with the losses their training produced
    (None when no ``train`` hook was given).

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, early_stopping_approximation
        >>> table = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...          Candidate({"a": 0.75, "b": 0.75, "c": 1.5}, 1.0)]  # three singles and one 3-task network
        >>> selection = early_stopping_approximation(table, ["a", "b", "c"], budget=2.0)
        >>> print(selection.proxy)
        {a+b+c -> a,b; c -> c} loss=2.5 cost=2
        >>> selection.final is None  # no train hook
        True
    """

    proxy: Solution
    final: Solution | None


def train_chosen(
    solution: Solution,
    tasks: Sequence[str],
    train: Callable[[Candidate], Candidate],
    *,
    only_predicted: bool = False,
) -> Solution:
    """Train the chosen networks and re-serve the tasks on their final losses.

    ``train(candidate)`` trains that network (same tasks, same label) to
    convergence and returns its record with final validation losses. With
    ``only_predicted`` only networks whose losses were predicted are trained
    (HOA: the others are already trained). The set of networks is the one
    selected; only which head serves a task may change.

    Args:
        solution: the selection made on proxy losses.
        tasks: the tasks to serve.
        train: trains one network, returns its record with final losses.
        only_predicted: train only networks with predicted losses.

    Returns:
        The same networks, serving on their final losses (``budget`` None).

    Raises:
        ConfigError: ``train`` returned something other than the same network's record.

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, select_networks, train_chosen
        >>> table = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...          Candidate({"a": 0.75, "b": 0.75, "c": 1.5}, 1.0)]  # three singles and one 3-task network
        >>> def train(c):  # stands in for full training: halves every loss
        ...     return Candidate({t: v / 2 for t, v in c.losses.items()}, c.cost, c.label)
        >>> print(train_chosen(select_networks(table, ["a", "b", "c"], 2.0), ["a", "b", "c"], train))
        {a+b+c -> a,b; c -> c} loss=1.25 cost=2
    """
    names = check_names("train_chosen", "tasks", tasks)
    finished = []
    for net in solution.networks:
        if only_predicted and not net.predicted:
            finished.append(net)
            continue
        done = train(net)
        if not isinstance(done, Candidate) or done.name != net.name:
            got = done.name if isinstance(done, Candidate) else type(done).__name__
            raise ConfigError(f"train({net.name}) must return the trained record of the same network, got {got}")
        finished.append(done)
    return _make_solution(finished, names, None)


def early_stopping_approximation(
    early: Sequence[Candidate],
    tasks: Sequence[str],
    budget: float,
    train: Callable[[Candidate], Candidate] | None = None,
) -> ApproximateSelection:
    """ESA (papers/003 §5.3.1): select on early losses, then train the chosen networks.

    ``early`` are the candidates after a short run (one pass over 20% of the
    data in the paper); selecting on them is exact for those losses. The
    optional ``train`` hook trains each chosen network fully; the selection
    is no longer guaranteed optimal for the final losses.

    Args:
        early: candidates with their early losses.
        tasks: the tasks to serve.
        budget: the largest total cost allowed.
        train: trains one chosen network fully (optional).

    Returns:
        The :class:`ApproximateSelection`.

    Raises:
        BudgetError: nothing fits the budget.
        ConfigError: bad inputs.

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, early_stopping_approximation
        >>> table = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...          Candidate({"a": 0.75, "b": 0.75, "c": 1.5}, 1.0)]  # three singles and one 3-task network
        >>> def train(c):  # stands in for full training: halves every loss
        ...     return Candidate({t: v / 2 for t, v in c.losses.items()}, c.cost, c.label)
        >>> selection = early_stopping_approximation(table, ["a", "b", "c"], 2.0, train)
        >>> print(selection.final)
        {a+b+c -> a,b; c -> c} loss=1.25 cost=2
    """
    proxy = select_networks(early, tasks, budget)
    final = train_chosen(proxy, tasks, train) if train is not None else None
    return ApproximateSelection(proxy, final)


def higher_order_approximation(
    trained: Sequence[Candidate],
    tasks: Sequence[str],
    budget: float,
    train: Callable[[Candidate], Candidate] | None = None,
    *,
    cost: float | Callable[[frozenset[str]], float] | None = None,
) -> ApproximateSelection:
    """HOA (papers/003 §5.3.2): select among trained ≤2-task and predicted networks.

    Builds :func:`higher_order_candidates`, selects exactly on them, and, if a
    ``train`` hook is given, trains from scratch each chosen network whose
    losses were predicted.

    Args:
        trained: the trained networks with one or two tasks.
        tasks: the tasks to serve.
        budget: the largest total cost allowed.
        train: trains one predicted network (optional).
        cost: cost of the predicted networks (see :func:`higher_order_candidates`).

    Returns:
        The :class:`ApproximateSelection`.

    Raises:
        BudgetError: nothing fits the budget.
        ConfigError: bad inputs (see :func:`higher_order_candidates`).

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, higher_order_approximation
        >>> trained = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...            Candidate({"a": 0.5, "b": 0.75}, 1.0), Candidate({"b": 0.5, "c": 0.75}, 1.0),
        ...            Candidate({"a": 0.5, "c": 0.5}, 1.0)]  # singles and pairs
        >>> selection = higher_order_approximation(trained, ["a", "b", "c"], budget=1.0)
        >>> print(selection.proxy)  # the predicted 3-task network
        {a+b+c -> a,b,c} loss=1.75 cost=1
        >>> selection.proxy.networks[0].predicted
        True
    """
    pool = higher_order_candidates(trained, tasks, cost=cost)
    proxy = select_networks(pool, tasks, budget)
    final = train_chosen(proxy, tasks, train, only_predicted=True) if train is not None else None
    return ApproximateSelection(proxy, final)


# --------------------------------------------------------------------------- #
# Pessimal baseline (§6; notes §A.6)
# --------------------------------------------------------------------------- #


def pessimal_select(
    candidates: Sequence[Candidate], tasks: Sequence[str], budget: float, *, max_nodes: int = DEFAULT_MAX_NODES
) -> Solution:
    """The Pessimal baseline (papers/003 §6): the budget-saturated set of networks with the highest total loss.

    The paper: "a solution in which we choose the networks that lead to the
    worst overall performance, though the solution's performance on each task
    is still the best among the networks that solve that task". Adding a
    network never raises that total, so "worst within the budget" is taken
    among *budget-saturated* sets, as the authors' code does (no further
    candidate fits the remaining budget, the sets :func:`random_solution`
    draws); the authors approximate the maximum by 10^7 random draws, this
    search is exact: depth first over the candidates (worst first), bounded
    by the current per-task minima (a set's total can only fall as networks
    join), pruned on budget and on sets that can no longer be saturated.
    Ties: lower cost, then fewer networks, then the sorted names (as
    :func:`select_networks`).

    Args:
        candidates: the candidate networks.
        tasks: the tasks to serve.
        budget: the largest total cost allowed.
        max_nodes: give up (ConfigError) after visiting this many search nodes.

    Returns:
        The worst saturated :class:`Solution` (tasks served by their best head in it).

    Raises:
        BudgetError: no set serving every task fits the budget.
        ConfigError: bad inputs, or more than ``max_nodes`` search nodes.

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, pessimal_select, select_networks
        >>> table = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...          Candidate({"a": 0.75, "b": 0.75, "c": 1.5}, 1.0)]  # three singles and one 3-task network
        >>> print(select_networks(table, ["a", "b", "c"], budget=2.0))  # the best choice
        {a+b+c -> a,b; c -> c} loss=2.5 cost=2
        >>> print(pessimal_select(table, ["a", "b", "c"], budget=2.0))  # the worst: a network that helps nothing
        {a -> -; a+b+c -> a,b,c} loss=3 cost=2
        >>> print(pessimal_select(table, ["a", "b", "c"], budget=4.0))  # saturated: every network is in
        {a -> -; a+b+c -> a,b; b -> -; c -> c} loss=2.5 cost=4
    """
    names = check_names("pessimal_select", "tasks", tasks)
    limit = _checked_budget(budget)
    pool = _checked_candidates(candidates, names)
    _require_feasible(pool, names, limit)
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 1:
        raise ConfigError(f"max_nodes must be a positive integer, got {max_nodes!r}")
    return _make_solution(_Pessimal(pool, names, _with_slack(limit), max_nodes).solve(), names, limit)


class _Pessimal:
    """The exact Pessimal search over one pool and budget (integers on power-of-two scales, as :class:`_Selector`)."""

    def __init__(self, pool: Sequence[Candidate], tasks: tuple[str, ...], ceiling: float, max_nodes: int) -> None:
        cost_scale = _dyadic_scale([c.cost for c in pool] + ([ceiling] if math.isfinite(ceiling) else []))
        cap = math.floor(Fraction(ceiling) * cost_scale) if math.isfinite(ceiling) else None
        costs = [int(Fraction(c.cost) * cost_scale) for c in pool]
        # A network that alone exceeds the budget can never join, and never breaks saturation.
        keep = [i for i in range(len(pool)) if cap is None or costs[i] <= cap]
        loss_scale = _dyadic_scale(v for i in keep for v in pool[i].losses.values())
        rows = {i: [int(Fraction(pool[i].losses[t]) * loss_scale) if t in pool[i].losses else None for t in tasks]
                for i in keep}
        # Worst networks first: a high incumbent early prunes the most.
        order = sorted(keep, key=lambda i: (-sum(v for v in rows[i] if v is not None), pool[i].name))
        self.pool = pool
        self.order = order
        self.cost = [costs[i] for i in order]
        self.rows = [rows[i] for i in order]
        self.names = [pool[i].name for i in order]
        self.cap = cap if cap is not None else sum(self.cost)
        self.tasks = tasks
        # Suffix sums: the most the candidates from position j on can still spend.
        self.spend_after = [sum(self.cost[j:]) for j in range(len(order) + 1)]
        self.max_nodes = max_nodes

    def _bound(self, j: int, room: int, mins: list[int | None]) -> int | None:
        """Highest total loss reachable from here (None: some task can no longer be served)."""
        total = 0
        for t, current in enumerate(mins):
            if current is not None:
                total += current
                continue
            options = [v for row, cost in zip(self.rows[j:], self.cost[j:]) if (v := row[t]) is not None and cost <= room]
            if not options:
                return None
            total += max(options)
        return total

    def solve(self) -> tuple[Candidate, ...]:
        best_key: tuple[int, int, int, tuple[str, ...]] | None = None
        best: tuple[int, ...] = ()
        visited = 0
        n = len(self.order)

        def node(j: int, chosen: tuple[int, ...], spent: int, mins: list[int | None], cheapest_out: int | None) -> None:
            nonlocal best_key, best, visited
            visited += 1
            if visited > self.max_nodes:
                raise ConfigError(
                    f"the Pessimal search visited more than {self.max_nodes:,} nodes over {n} candidates; "
                    "pass a larger max_nodes or fewer candidates"
                )
            room = self.cap - spent
            # Saturation: at the end every left-out network must exceed the room left, and the room
            # can fall at most by what the remaining candidates cost.
            if cheapest_out is not None and room - self.spend_after[j] >= cheapest_out:
                return
            bound = self._bound(j, room, mins)
            if bound is None or (best_key is not None and bound < -best_key[0]):
                return
            if j == n:
                if cheapest_out is not None and cheapest_out <= room:
                    return
                total = sum(v for v in mins if v is not None)
                key = (-total, spent, len(chosen), tuple(sorted(self.names[i] for i in chosen)))
                if best_key is None or key < best_key:
                    best_key, best = key, chosen
                return
            if self.cost[j] <= room:
                joined = [v if w is None else (w if v is None else min(v, w)) for v, w in zip(mins, self.rows[j])]
                node(j + 1, (*chosen, j), spent + self.cost[j], joined, cheapest_out)
            out = self.cost[j] if cheapest_out is None else min(cheapest_out, self.cost[j])
            node(j + 1, chosen, spent, mins, out)

        node(0, (), 0, [None] * len(self.tasks), None)
        return tuple(self.pool[self.order[i]] for i in best)


# --------------------------------------------------------------------------- #
# Random baseline (§6; notes §A.6)
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class RandomBaseline:
    """Mean and spread of the Random baseline's total loss over ``draws`` draws.

    Attributes:
        budget: the budget of every draw.
        mean_loss: mean total loss.
        std_loss: population standard deviation of the total loss.
        draws: number of draws.
        seed: seed of the draws.

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, random_baseline
        >>> table = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...          Candidate({"a": 0.75, "b": 0.75, "c": 1.5}, 1.0)]  # three singles and one 3-task network
        >>> baseline = random_baseline(table, ["a", "b", "c"], budget=2.0, draws=100, seed=0)
        >>> baseline.draws, baseline.mean_loss >= 2.5  # never better than the optimum
        (100, True)
    """

    budget: float
    mean_loss: float
    std_loss: float
    draws: int
    seed: int


def random_solution(
    candidates: Sequence[Candidate],
    tasks: Sequence[str],
    budget: float,
    rng: random.Random,
    *,
    max_attempts: int = 100_000,
) -> Solution:
    """One draw of the Random baseline (the authors' procedure, notes §A.6).

    Visit the candidates in random order without replacement, adding each
    one that fits the remaining budget, until less than the cheapest
    candidate's cost remains (0.5 SNT in the paper); reject and redraw a set
    that leaves a task unserved. Such a set is budget-saturated: no further
    candidate fits. Tasks are served by the per-task minimum.

    Deviation: when every candidate has been visited before the remaining
    budget falls below the threshold, the authors' code discards the set and
    starts over; here the set is kept, since it is already saturated (every
    unvisited candidate was tried). In the paper's settings (36 candidates
    costing 33.5 SNT, budgets ≤ 5 SNT) that case never arises.

    Args:
        candidates: the candidate networks.
        tasks: the tasks to serve.
        budget: the largest total cost allowed.
        rng: the random generator.
        max_attempts: redraws before giving up.

    Returns:
        A budget-saturated :class:`Solution` serving every task.

    Raises:
        BudgetError: nothing fits the budget.
        ConfigError: bad inputs, or no valid draw in ``max_attempts`` attempts.

    Examples:
        >>> import random
        >>> from mtgraph.strategies.grouping import Candidate, random_solution
        >>> table = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...          Candidate({"a": 0.75, "b": 0.75, "c": 1.5}, 1.0)]  # three singles and one 3-task network
        >>> solution = random_solution(table, ["a", "b", "c"], 2.0, random.Random(0))
        >>> len(solution.networks), solution.total_cost  # saturated: no further network fits
        (2, 2.0)
    """
    names = check_names("random_solution", "tasks", tasks)
    limit = _checked_budget(budget)
    pool = _checked_candidates(candidates, names)
    _require_feasible(pool, names, limit)
    if not isinstance(rng, random.Random):
        raise ConfigError(f"rng must be a random.Random, got {type(rng).__name__}")
    return _draw(pool, names, limit, rng, max_attempts)


def _draw(
    pool: Sequence[Candidate], names: tuple[str, ...], limit: float, rng: random.Random, max_attempts: int
) -> Solution:
    threshold = min(c.cost for c in pool)
    wanted = frozenset(names)
    for _ in range(max_attempts):
        order = list(pool)
        rng.shuffle(order)
        chosen: list[Candidate] = []
        spent = 0.0
        for c in order:
            if _fits(math.fsum([spent, c.cost]), limit):
                chosen.append(c)
                spent = math.fsum(n.cost for n in chosen)
            if limit - spent < threshold:
                break
        if wanted <= frozenset().union(*(c.tasks for c in chosen)):
            return _make_solution(chosen, names, limit)
    raise ConfigError(
        f"no random draw served every task in {max_attempts:,} attempts at budget {limit:g}; "
        "the Random baseline is not meaningful for this candidate set"
    )


def random_baseline(
    candidates: Sequence[Candidate],
    tasks: Sequence[str],
    budget: float,
    *,
    draws: int = 1000,
    seed: int = 0,
    score_on: Sequence[Candidate] | None = None,
) -> RandomBaseline:
    """The Random baseline: mean total loss of ``draws`` random valid solutions.

    Draws use :func:`random_solution` with ``random.Random(seed)``, so the
    result is reproducible. With ``score_on`` (e.g. test losses, matched by
    network name) each draw is scored there with the per-task minimum, as
    the authors did; otherwise on the candidates' own losses. The paper
    averages 10^6 draws.

    Args:
        candidates: the candidate networks.
        tasks: the tasks to serve.
        budget: the budget of every draw.
        draws: number of draws (>= 1).
        seed: seed of ``random.Random``.
        score_on: another loss table to score the draws on.

    Returns:
        A :class:`RandomBaseline`.

    Raises:
        BudgetError: nothing fits the budget.
        ConfigError: bad inputs or ``draws``.

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, random_baseline
        >>> table = [Candidate({"a": 1.0}, 1.0), Candidate({"b": 1.0}, 1.0), Candidate({"c": 1.0}, 1.0),
        ...          Candidate({"a": 0.75, "b": 0.75, "c": 1.5}, 1.0)]  # three singles and one 3-task network
        >>> baseline = random_baseline(table, ["a", "b", "c"], budget=2.0, draws=100, seed=0)
        >>> round(baseline.mean_loss, 2)
        2.78
    """
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ConfigError(f"draws must be a positive integer, got {draws!r}")
    names = check_names("random_baseline", "tasks", tasks)
    limit = _checked_budget(budget)
    pool = _checked_candidates(candidates, names)
    _require_feasible(pool, names, limit)
    rng = random.Random(seed)
    totals = []
    for _ in range(draws):
        drawn = _draw(pool, names, limit, rng, max_attempts=100_000)
        if score_on is not None:
            drawn = rescore(drawn, score_on, names, reselect_serving=True)
        totals.append(drawn.total_loss)
    mean = math.fsum(totals) / len(totals)
    spread = math.sqrt(math.fsum((x - mean) ** 2 for x in totals) / len(totals))
    return RandomBaseline(float(budget), mean, spread, draws, seed)
