"""Random groupings of tasks into separate networks: the search space :meth:`GroupingStrategy.sample_random` draws from.

A grouping is a set partition of the tasks; each block becomes one
full-size network (One-Net split at the input). With ``T`` the trunk MACs
and ``H`` every task's head once (:class:`~.units.NetworkUnit`), a grouping
into ``m`` networks costs exactly ``m·T + H`` whatever the blocks are, so
the reachable costs are the ``k`` values ``m = 1 .. k``; a draw at a budget
picks uniformly among all groupings whose cost is within ±5 % of it.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence

from mtgraph.errors import BudgetError, ConfigError
from mtgraph.strategies.grouping.units import NetworkUnit

__all__ = ["stirling2", "random_partition", "groupings_near"]

#: How far a random grouping's GMac may be from the budget's, relative to it.
TOLERANCE = 0.05


@functools.cache
def stirling2(n: int, m: int) -> int:
    """The number of ways to partition ``n`` items into exactly ``m`` non-empty blocks (Stirling numbers, 2nd kind).

    Examples:
        >>> from mtgraph.strategies.grouping import stirling2
        >>> [stirling2(4, m) for m in range(1, 5)]  # Bell(4) = 15 groupings of 4 tasks
        [1, 7, 6, 1]
    """
    if n == m:
        return 1
    if m == 0 or m > n:
        return 0
    return stirling2(n - 1, m - 1) + m * stirling2(n - 1, m)


def random_partition(items: Sequence[str], blocks: int, rng: random.Random) -> list[list[str]]:
    """A uniformly random partition of ``items`` into exactly ``blocks`` non-empty blocks.

    Each block keeps the order of ``items``; blocks are ordered by their first
    item. The last item either forms a block of its own (``S(n−1, m−1)`` ways)
    or joins one of the ``m`` blocks of a partition of the others
    (``m·S(n−1, m)`` ways), chosen with those weights: every partition is
    equally likely.

    Args:
        items: distinct names.
        blocks: the number of blocks, 1 to ``len(items)``.
        rng: the random generator.

    Returns:
        The blocks.

    Raises:
        ConfigError: ``blocks`` out of range or repeated items.

    Examples:
        >>> import random
        >>> from mtgraph.strategies.grouping import random_partition
        >>> random_partition(["seg", "depth", "edges"], 2, random.Random(0))
        [['seg'], ['depth', 'edges']]
    """
    names = list(items)
    if len(set(names)) != len(names):
        raise ConfigError(f"items must be distinct, got {names}")
    if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= len(names):
        raise ConfigError(f"blocks must be an integer from 1 to {len(names)}, got {blocks!r}")

    def draw(n: int, m: int) -> list[list[str]]:
        if m == n:
            return [[x] for x in names[:n]]
        if m == 1:
            return [names[:n]]
        last = names[n - 1]
        if rng.randrange(stirling2(n, m)) < stirling2(n - 1, m - 1):
            return [*draw(n - 1, m - 1), [last]]
        parts = draw(n - 1, m)
        parts[rng.randrange(m)].append(last)
        return parts

    return sorted(draw(len(names), blocks), key=lambda block: names.index(block[0]))


def groupings_near(unit: NetworkUnit, num_tasks: int, target_gmac: float) -> list[int]:
    """The numbers of networks ``m`` whose groupings cost within ±5 % of ``target_gmac`` (``m·T + H``).

    Args:
        unit: the problem's trunk and head MACs.
        num_tasks: k; a grouping has 1 to k networks.
        target_gmac: the budget in GMac.

    Returns:
        The admissible ``m``, increasing.

    Raises:
        BudgetError: none is within ±5 %; the message lists every reachable
            cost and names the closest.

    Examples:
        >>> from mtgraph.strategies.grouping import NetworkUnit, groupings_near
        >>> unit = NetworkUnit(trunk_macs=1_000_000, heads_macs=200_000)  # m networks: (m + 0.2) MMac
        >>> groupings_near(unit, 3, 2.2e-3)
        [2]
        >>> groupings_near(unit, 3, 1.7e-3)
        Traceback (most recent call last):
        ...
        mtgraph.errors.BudgetError: no grouping of 3 tasks costs within ±5% of 0.0017 GMac: ... closest is 0.0012 GMac (1 network)...
    """
    costs = {m: unit.gmac(m) for m in range(1, num_tasks + 1)}
    near = [m for m, gmac in costs.items() if abs(gmac - target_gmac) <= TOLERANCE * target_gmac]
    if near:
        return near
    closest = min(costs, key=lambda m: (abs(costs[m] - target_gmac), m))
    listed = ", ".join(f"{m}: {gmac:.6g}" for m, gmac in costs.items())
    raise BudgetError(
        f"no grouping of {num_tasks} tasks costs within ±5% of {target_gmac:.6g} GMac: m separate networks cost "
        f"m × {unit.trunk_macs / 1e9:.6g} (trunk) + {unit.heads_macs / 1e9:.6g} (heads) GMac, so the reachable costs are "
        f"{{{listed}}}; the closest is {costs[closest]:.6g} GMac ({closest} network{'s' if closest > 1 else ''}); "
        f"ask for that budget (Budget.gmac({costs[closest]:.6g}))"
    )
