"""Budgeted search over branching trees (papers/001 §3.2, Algorithm 1, fig. 5).

A *branching tree* over D candidate branch locations is a chain of task
partitions ``P_0 ⊒ P_1 ⊒ … ⊒ P_{D−1}``: ``P_l`` says which tasks share the
copy of encoder block ``f_l``, and each partition refines the one before it
(once two tasks have branched apart they never meet again). This module
scores trees with the BMTN clustering cost over an RSA affinity tensor,
enumerates them, and finds the tree of smallest cost that fits a resource
budget (parameters or GMac, computed by the caller). It is pure: no graphs,
no training, no torch.

Clustering cost — what the paper says and what we chose
-------------------------------------------------------
papers/001 §3.2: "``C_cluster = Σ_l C^l_cluster``, where ``C^l_cluster`` is
found by averaging the maximum distance between the dissimilarity scores of
the elements in every cluster", with task dissimilarity ``1 − A[l, i, j]``.
"Maximum distance inside a cluster" is the cluster diameter (complete
linkage); the sentence leaves open what a singleton cluster contributes to
the average. Three readings are implemented (``linkage=``):

* ``"diameter"`` (default, reading A′ of notes/methods-001-002.md §A.5):
  the mean diameter over clusters with at least two tasks; a level with no
  such cluster costs 0. A singleton has no pairwise distance, so it is left
  out of the average rather than counted as a zero.
* ``"diameter_all"`` (reading A): the mean over *all* clusters, singletons
  counting 0. This rewards peeling single tasks off (each singleton dilutes
  the average); in the notes' prototype it picked a tree that trained worse
  than the intended grouping at the same parameter count (−1.05 vs +3.74
  Δ_MTL over 5 seeds), which is why it is not the default.
* ``"element_max"`` (reading B): for each task its largest dissimilarity to
  a cluster-mate (0 for a singleton), averaged over all tasks.

Level ``l`` is scored with ``A[l]``, the affinity measured at the output of
block ``f_l`` (the paper indexes locations and tree depths alike). Note that
under every reading a level's cost can *rise* when a cluster splits (two
wide halves replace one wide cluster next to a tight one), so no search here
assumes the clustering cost is monotone in refinement.

Search methods and their assumptions
------------------------------------
* ``"exhaustive"``: rank every tree by clustering cost and walk the ranking,
  calling ``cost_fn`` lazily, until the first tree that fits (then settle
  ties). Exact, and assumes nothing about ``cost_fn``. Used when the number
  of trees is at most :data:`EXHAUSTIVE_LIMIT`.
* ``"branch_and_bound"``: depth-first over locations. It assumes that a
  tree's resource cost never decreases when any partition is refined (a
  split duplicates a block, so parameters and MACs grow); then the cheapest
  completion of a prefix ``P_0..P_l`` is "no further splits", and a prefix
  whose cheapest completion is over budget is pruned with all its subtrees.
  The partial clustering cost is an admissible bound because every level
  cost is ≥ 0. Exact under the assumption; a violation the search happens
  to observe (a split prefix cheaper than its parent) raises
  :class:`~mtgraph.errors.ConfigError`.
* ``"beam"``: the same level-by-level expansion keeping only the
  ``beam_width`` lowest partial costs whose cheapest completion fits.
  Heuristic (``TreeChoice.exact`` is False); same monotonicity assumption.

``"auto"`` takes exhaustive up to :data:`EXHAUSTIVE_LIMIT` trees (20k),
branch and bound up to :data:`BRANCH_AND_BOUND_LIMIT` (2M: seconds), beam
beyond. In practice: exact answers in seconds up to about 7 tasks at 5
locations or 8 tasks at 4; beam (heuristic) for more. Expanding a
location enumerates every refinement of a partition (up to Bell(N) of them),
so branch and bound and beam accept at most :data:`MAX_TASKS` tasks; the
paper's 40-task CelebA search is not described in the paper and is out of
scope here.

Ties are broken by lower clustering cost, then lower resource cost, then the
canonical tree key (:meth:`BranchingTree.key`), so a given affinity tensor
and cost function always give the same tree.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from numbers import Real
from typing import Literal, NamedTuple

import numpy as np

from mtgraph.errors import BudgetError, ConfigError

__all__ = [
    "BRANCH_AND_BOUND_LIMIT",
    "EXHAUSTIVE_LIMIT",
    "MAX_TASKS",
    "BranchingTree",
    "Linkage",
    "Method",
    "PathPoint",
    "TreeChoice",
    "best_tree",
    "budget_path",
    "count_trees",
    "enumerate_trees",
    "tree_dissimilarity",
]

Partition = tuple[frozenset[str], ...]
Linkage = Literal["diameter", "diameter_all", "element_max"]
Method = Literal["auto", "exhaustive", "branch_and_bound", "beam"]

_LINKAGES = ("diameter", "diameter_all", "element_max")
_METHODS = ("auto", "exhaustive", "branch_and_bound", "beam")

# Exhaustive search enumerates, scores and sorts every tree (about 60 µs each
# in CPython: 120k trees took 7 s) and may call cost_fn on each. 20k trees
# (about a second) covers 4 tasks at up to 6 locations and 5 tasks at up to
# 4 (5 with a shared root); branch and bound is far faster past that.
EXHAUSTIVE_LIMIT = 20_000
# Branch and bound is exact but exponential in the worst case: its bound on
# the levels still to choose is 0 (a fully split level costs 0), so a
# mid-range budget explores many prefixes. Measured on random affinities with
# block costs doubling per location (1 core): ≤ 2 s for 7 tasks at 5 free
# locations (2.2M trees), up to 13 s for 8 tasks at 4 locations with a shared
# root (1.9M trees), but 3–11 min for 8 tasks at 6 locations (45M trees).
# Past this many trees "auto" switches to beam search.
BRANCH_AND_BOUND_LIMIT = 2_000_000
# Expanding one location enumerates all refinements of a partition, up to
# Bell(N) of them: Bell(10) = 115,975, Bell(11) = 678,570. Beam search
# (width 32) on 10 tasks took 7–110 s in the same measurement, the slow end
# being tight budgets where most of the Bell(10) first splits are over budget.
MAX_TASKS = 10
DEFAULT_BEAM_WIDTH = 32

# RSA affinities are Spearman correlations in [-1, 1]; allow float noise.
_AFFINITY_TOLERANCE = 1e-6
# Budgets and costs are sums of floats (GMac); compare with a relative slack
# so a tree costing exactly the budget is not rejected by rounding.
_RELATIVE_BUDGET_SLACK = 1e-9


# --------------------------------------------------------------------------- #
# The tree value
# --------------------------------------------------------------------------- #


# Keys are recomputed for every enumerated tree; the distinct groups and
# partitions are few, so caching them makes ranking 10^5 trees cheap.
@lru_cache(maxsize=1 << 16)
def _block_key(block: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(block))


@lru_cache(maxsize=1 << 16)
def _partition_key(partition: Partition) -> tuple[tuple[str, ...], ...]:
    return tuple(_block_key(b) for b in partition)


def _canonical(blocks: Iterable[frozenset[str]]) -> Partition:
    """Blocks of a partition in their canonical (sorted) order."""
    return tuple(sorted(blocks, key=_block_key))


def _format_partition(partition: Partition) -> str:
    return " ".join("{" + ",".join(_block_key(b)) + "}" for b in partition)


@dataclass(frozen=True)
class BranchingTree:
    """A branching tree: for each location ``l``, a partition of the tasks.

    ``partitions[l]`` lists the task groups that share block ``l``; each
    partition must cover the same tasks and refine the previous one.
    Depth 0 may be the single group of all tasks or already split. Blocks
    are stored in a canonical order, so equal trees compare and hash equal
    however they were written.

    Raises:
        ConfigError: partitions that do not cover the same tasks, or a
            partition that does not refine the previous one.

    Examples:
        >>> from mtgraph.strategies.affinity import BranchingTree
        >>> tree = BranchingTree(((frozenset("abc"),), (frozenset("ab"), frozenset("c"))))
        >>> print(tree)
        {a,b,c} / {a,b} {c}
        >>> tree.groups(), tree.branches(1), tree.refines(BranchingTree.all_shared(["a", "b", "c"], 2))
        (((('a', 'b', 'c'),), (('a', 'b'), ('c',))), 2, True)
        >>> BranchingTree(((frozenset("ab"), frozenset("c")), (frozenset("abc"),)))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: location 1: group ['a', 'b', 'c'] spans several groups of location 0 ...
    """

    partitions: tuple[Partition, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "partitions", _validated_partitions(self.partitions))

    @classmethod
    def _trusted(cls, partitions: tuple[Partition, ...]) -> BranchingTree:
        # The enumerators build canonical, valid chains by construction;
        # skipping validation keeps enumerating 10^5 trees fast.
        tree = object.__new__(cls)
        object.__setattr__(tree, "partitions", partitions)
        return tree

    @classmethod
    def all_shared(cls, tasks: Sequence[str], num_locations: int) -> BranchingTree:
        """The One-Net tree: every task shares every block."""
        names = _checked_tasks(tasks)
        _check_locations(num_locations)
        return cls(((frozenset(names),),) * num_locations)

    @classmethod
    def fully_split(cls, tasks: Sequence[str], num_locations: int) -> BranchingTree:
        """The single-task tree: every task has its own copy of every block."""
        names = _checked_tasks(tasks)
        _check_locations(num_locations)
        return cls((tuple(frozenset((t,)) for t in names),) * num_locations)

    @property
    def tasks(self) -> frozenset[str]:
        """All tasks of the tree."""
        return frozenset().union(*self.partitions[0])

    @property
    def num_locations(self) -> int:
        """Number of locations (blocks) D."""
        return len(self.partitions)

    def groups(self) -> tuple[tuple[tuple[str, ...], ...], ...]:
        """For each block, the partition of the tasks as sorted name tuples.

        This is the form a ``split`` driver consumes: ``groups()[l]`` lists the
        task groups that get their own copy of block ``l``.
        """
        return tuple(_partition_key(p) for p in self.partitions)

    def key(self) -> tuple[tuple[tuple[str, ...], ...], ...]:
        """Canonical sortable key, used to break ties deterministically."""
        return self.groups()

    def branches(self, location: int) -> int:
        """Number of copies of block ``location`` the tree needs."""
        return len(self.partitions[location])

    def refines(self, other: BranchingTree) -> bool:
        """True if at every location each group lies inside one of ``other``'s."""
        if self.num_locations != other.num_locations or self.tasks != other.tasks:
            return False
        return all(
            _partition_refines(mine, theirs) for mine, theirs in zip(self.partitions, other.partitions, strict=True)
        )

    def __str__(self) -> str:
        return " / ".join(_format_partition(p) for p in self.partitions)


def _partition_refines(fine: Partition, coarse: Partition) -> bool:
    return all(any(block <= parent for parent in coarse) for block in fine)


def _validated_partitions(raw: object) -> tuple[Partition, ...]:
    """Check and canonicalise the ``partitions`` field of a BranchingTree."""
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
        raise ConfigError(f"BranchingTree.partitions must be a sequence of partitions, got {raw!r}")
    levels: list[Partition] = []
    for depth, part in enumerate(raw):
        if isinstance(part, (str, bytes)) or not isinstance(part, Iterable):
            raise ConfigError(f"location {depth}: a partition must be a sequence of task groups")
        blocks: list[frozenset[str]] = []
        for group in part:
            if isinstance(group, (str, bytes)) or not isinstance(group, Iterable):
                raise ConfigError(f"location {depth}: a task group must be a collection of task names, got {group!r}")
            block = frozenset(group)
            if not block:
                raise ConfigError(f"location {depth}: empty task group")
            bad = [t for t in block if not isinstance(t, str) or not t]
            if bad:
                raise ConfigError(f"location {depth}: task names must be non-empty strings, got {bad!r}")
            blocks.append(block)
        if not blocks:
            raise ConfigError(f"location {depth}: a partition needs at least one task group")
        seen: set[str] = set()
        for block in blocks:
            twice = seen & block
            if twice:
                raise ConfigError(f"location {depth}: task(s) {sorted(twice)} appear in more than one group")
            seen |= block
        levels.append(_canonical(blocks))
    if not levels:
        raise ConfigError("a BranchingTree needs at least one location")
    everything = frozenset().union(*levels[0])
    for depth in range(1, len(levels)):
        covered = frozenset().union(*levels[depth])
        if covered != everything:
            raise ConfigError(
                f"location {depth} covers {sorted(covered)} but location 0 covers "
                f"{sorted(everything)}; every location must partition the same tasks"
            )
        for block in levels[depth]:
            if not any(block <= parent for parent in levels[depth - 1]):
                raise ConfigError(
                    f"location {depth}: group {sorted(block)} spans several groups of "
                    f"location {depth - 1} ({_format_partition(levels[depth - 1])}); "
                    "tasks that branched apart cannot share a later block"
                )
    return tuple(levels)


def _checked_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tasks, (str, bytes)):
        raise ConfigError(f"tasks must be a sequence of task names, not the string {tasks!r}")
    names = tuple(tasks)
    if not names:
        raise ConfigError("tasks must name at least one task")
    bad = [t for t in names if not isinstance(t, str) or not t]
    if bad:
        raise ConfigError(f"task names must be non-empty strings, got {bad!r}")
    if len(set(names)) != len(names):
        dup = sorted({t for t in names if names.count(t) > 1})
        raise ConfigError(f"task names must be unique; repeated: {dup}")
    return names


def _check_locations(num_locations: int) -> None:
    if isinstance(num_locations, bool) or not isinstance(num_locations, int) or num_locations < 1:
        raise ConfigError(f"num_locations must be a positive integer, got {num_locations!r}")


# --------------------------------------------------------------------------- #
# Enumeration
# --------------------------------------------------------------------------- #


@lru_cache(maxsize=4096)
def _set_partitions(items: tuple[str, ...]) -> tuple[Partition, ...]:
    """All partitions of ``items`` (Bell(len) of them), canonical, in a fixed order."""
    if not items:
        return ((),)
    first, rest = items[0], items[1:]
    out: list[Partition] = []
    for sub in _set_partitions(rest):
        # ``first`` joins each existing group in turn, or starts its own.
        for i in range(len(sub)):
            out.append(_canonical(sub[:i] + (sub[i] | {first},) + sub[i + 1 :]))
        out.append(_canonical(sub + (frozenset((first,)),)))
    return tuple(out)


def _refinements(partition: Partition) -> Iterator[Partition]:
    """Every partition that refines ``partition`` (itself included)."""
    per_block = [_set_partitions(_block_key(b)) for b in partition]
    for choice in itertools.product(*per_block):
        yield _canonical(itertools.chain.from_iterable(choice))


def enumerate_trees(tasks: Sequence[str], num_locations: int, *, root_shared: bool = False) -> Iterator[BranchingTree]:
    """Yield every branching tree over ``tasks`` with ``num_locations`` locations.

    A tree is any chain of partitions where each refines the previous one
    (repeats allowed: a level may split nothing). With ``root_shared`` the
    first location holds all tasks in one group, as in papers/001 where the
    root block ``f_0`` is always shared. The order is deterministic.
    How many there are: :func:`count_trees` (e.g. 22 for 3 tasks and 4
    locations with a shared root, 1304 for 5 tasks; 12,915 for 6 tasks and
    3 free locations). Past a few tens of thousands, iterate lazily or
    use :func:`best_tree`, which switches to branch and bound.

    Args:
        tasks: the task names.
        num_locations: D, the number of locations (>= 1).
        root_shared: keep every task in one group at the first location.

    Yields:
        Every :class:`BranchingTree`, each once.

    Raises:
        ConfigError: empty or duplicate task names, or ``num_locations < 1``.

    Examples:
        >>> from mtgraph.strategies.affinity import enumerate_trees
        >>> for tree in enumerate_trees(["a", "b", "c"], 2, root_shared=True):
        ...     print(tree)
        {a,b,c} / {a,b,c}
        {a,b,c} / {a} {b,c}
        {a,b,c} / {a,b} {c}
        {a,b,c} / {a,c} {b}
        {a,b,c} / {a} {b} {c}
    """
    names = _checked_tasks(tasks)
    _check_locations(num_locations)
    everyone = frozenset(names)
    roots: Iterable[Partition] = [(everyone,)] if root_shared else _set_partitions(tuple(sorted(names)))

    def chains(parent: Partition, remaining: int) -> Iterator[tuple[Partition, ...]]:
        if remaining == 0:
            yield ()
            return
        for child in _refinements(parent):
            for rest in chains(child, remaining - 1):
                yield (child, *rest)

    for root in roots:
        for rest in chains(root, num_locations - 1):
            yield BranchingTree._trusted((root, *rest))


def count_trees(num_tasks: int, num_locations: int, *, root_shared: bool = False) -> int:
    """Number of trees :func:`enumerate_trees` yields, without enumerating them.

    Let ``F_D(n)`` count chains of ``D`` partitions of an ``n``-set. Given the
    first partition, the rest of the chain splits independently inside each
    of its groups, and inside a group of size ``k`` it is a chain of ``D``
    partitions whose first one is the whole group, i.e. any chain of ``D−1``
    partitions of that group: ``F_D(n) = Σ_k C(n−1, k−1) F_{D−1}(k) F_D(n−k)``
    (``k`` = size of the group holding a fixed element), ``F_0 = 1``. With a
    shared root the count is ``F_{D−1}(n)``.

    Args:
        num_tasks: N, the number of tasks (>= 1).
        num_locations: D, the number of locations (>= 1).
        root_shared: as for :func:`enumerate_trees`.

    Returns:
        The number of branching trees.

    Raises:
        ConfigError: ``num_tasks`` or ``num_locations`` below 1.

    Examples:
        >>> from mtgraph.strategies.affinity import count_trees
        >>> count_trees(3, 2, root_shared=True), count_trees(3, 4, root_shared=True), count_trees(5, 4, root_shared=True)
        (5, 22, 1304)
    """
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ConfigError(f"num_tasks must be a positive integer, got {num_tasks!r}")
    _check_locations(num_locations)
    depth = num_locations - 1 if root_shared else num_locations
    return _chain_counts(depth, num_tasks)[num_tasks]


@cache
def _chain_counts(depth: int, n: int) -> tuple[int, ...]:
    """``(F_depth(0), …, F_depth(n))``."""
    if depth == 0:
        return (1,) * (n + 1)
    inner = _chain_counts(depth - 1, n)
    counts = [1] + [0] * n
    for m in range(1, n + 1):
        counts[m] = sum(math.comb(m - 1, k - 1) * inner[k] * counts[m - k] for k in range(1, m + 1))
    return tuple(counts)


# --------------------------------------------------------------------------- #
# Clustering cost
# --------------------------------------------------------------------------- #


def _dissimilarity_tensor(affinity: object, tasks: tuple[str, ...]) -> np.ndarray:
    """Validate an affinity tensor ``[D, N, N]`` and return ``1 − A`` (symmetrised)."""
    try:
        a = np.asarray(affinity, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"affinity must be a numeric [D, N, N] array: {exc}") from exc
    n = len(tasks)
    if a.ndim != 3 or a.shape[0] < 1 or a.shape[1:] != (n, n):
        raise ConfigError(
            f"affinity must have shape [D, {n}, {n}] (D locations, one row and column "
            f"per task in the order {list(tasks)}), got {list(a.shape)}"
        )
    if not np.all(np.isfinite(a)):
        raise ConfigError("affinity contains NaN or infinite values")
    asym = np.abs(a - a.transpose(0, 2, 1))
    if asym.max() > _AFFINITY_TOLERANCE:
        loc, i, j = np.unravel_index(int(asym.argmax()), asym.shape)
        raise ConfigError(
            f"affinity must be symmetric per location: A[{loc}] differs between "
            f"({tasks[i]}, {tasks[j]}) and ({tasks[j]}, {tasks[i]}) by {asym.max():.3g}"
        )
    off = a[:, ~np.eye(n, dtype=bool)]
    if off.size and (off.min() < -1 - _AFFINITY_TOLERANCE or off.max() > 1 + _AFFINITY_TOLERANCE):
        raise ConfigError(
            f"affinity values must lie in [-1, 1] (rank correlations), got range [{off.min():.4g}, {off.max():.4g}]"
        )
    # Clipping makes every dissimilarity ≥ 0 exactly, which the branch-and-bound
    # bound (partial sums never decrease) relies on.
    return np.clip(1.0 - (a + a.transpose(0, 2, 1)) / 2.0, 0.0, 2.0)


class _Scorer:
    """Clustering cost of partitions and trees, with per-level caching."""

    def __init__(self, dis: np.ndarray, tasks: tuple[str, ...], linkage: str) -> None:
        if linkage not in _LINKAGES:
            raise ConfigError(f"linkage must be one of {list(_LINKAGES)}, got {linkage!r}")
        self._dis = dis.tolist()  # nested lists: scalar access is faster than numpy
        self._index = {t: i for i, t in enumerate(tasks)}
        self._num_tasks = len(tasks)
        self._linkage = linkage
        self._levels: dict[tuple[int, Partition], float] = {}

    def _diameter(self, level: int, block: frozenset[str]) -> float:
        rows = self._dis[level]
        idx = [self._index[t] for t in block]
        return max(rows[i][j] for i, j in itertools.combinations(idx, 2))

    def _element_max(self, level: int, block: frozenset[str]) -> float:
        rows = self._dis[level]
        idx = [self._index[t] for t in block]
        return math.fsum(max(rows[i][j] for j in idx if j != i) for i in idx)

    def level(self, level: int, partition: Partition) -> float:
        """``C^l``: the clustering cost of ``partition`` at location ``level``."""
        key = (level, partition)
        cached = self._levels.get(key)
        if cached is not None:
            return cached
        multi = [b for b in partition if len(b) >= 2]
        if not multi:
            value = 0.0
        elif self._linkage == "diameter":
            value = math.fsum(self._diameter(level, b) for b in multi) / len(multi)
        elif self._linkage == "diameter_all":
            value = math.fsum(self._diameter(level, b) for b in multi) / len(partition)
        else:
            value = math.fsum(self._element_max(level, b) for b in multi) / self._num_tasks
        self._levels[key] = value
        return value

    def tree(self, partitions: Sequence[Partition]) -> float:
        """``C = Σ_l C^l``, summed in location order (all searches sum alike)."""
        total = 0.0
        for level, partition in enumerate(partitions):
            total += self.level(level, partition)
        return total


def tree_dissimilarity(
    tree: BranchingTree,
    affinity: object,
    tasks: Sequence[str],
    *,
    linkage: Linkage = "diameter",
) -> float:
    """The BMTN clustering cost ``C = Σ_l C^l`` of ``tree``.

    ``affinity`` is the ``[D, N, N]`` RSA tensor, rows and columns in the order
    of ``tasks``; ``C^l`` is computed from ``1 − affinity[l]`` with the chosen
    ``linkage`` (see the module docstring for the paper's wording and the
    three readings; the default averages cluster diameters over clusters of
    at least two tasks).

    Args:
        tree: the tree to score.
        affinity: the ``[D, N, N]`` affinity (tensor, array or nested lists).
        tasks: the order of the affinity's rows and columns.
        linkage: ``"diameter"``, ``"diameter_all"`` or ``"element_max"``.

    Returns:
        The clustering cost (lower: tasks that share a block are more alike).

    Raises:
        ConfigError: a tree over other tasks or locations than ``affinity``, or a malformed affinity.

    Examples:
        >>> from mtgraph.strategies.affinity import BranchingTree, tree_dissimilarity
        >>> affinity = [[[1.0, 0.9, 0.1], [0.9, 1.0, 0.1], [0.1, 0.1, 1.0]]] * 2  # a ~ b, c apart; D = 2
        >>> copies = lambda tree: sum(tree.branches(l) for l in range(tree.num_locations))  # a toy resource cost
        >>> branched = BranchingTree(((frozenset("abc"),), (frozenset("ab"), frozenset("c"))))
        >>> round(tree_dissimilarity(branched, affinity, ["a", "b", "c"]), 6)  # 0.9 at level 0, 0.1 at level 1
        1.0
        >>> round(tree_dissimilarity(BranchingTree.all_shared(["a", "b", "c"], 2), affinity, ["a", "b", "c"]), 6)
        1.8
    """
    names = _checked_tasks(tasks)
    if not isinstance(tree, BranchingTree):
        raise ConfigError(f"tree must be a BranchingTree, got {type(tree).__name__}")
    if tree.tasks != frozenset(names):
        raise ConfigError(f"tree covers tasks {sorted(tree.tasks)} but tasks are {sorted(names)}")
    dis = _dissimilarity_tensor(affinity, names)
    if dis.shape[0] != tree.num_locations:
        raise ConfigError(f"affinity has {dis.shape[0]} locations but the tree has {tree.num_locations}")
    return _Scorer(dis, names, linkage).tree(tree.partitions)


# --------------------------------------------------------------------------- #
# Search
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class TreeChoice:
    """The tree a search picked, with its clustering and resource costs.

    ``method`` is the search that ran (``"exhaustive"``, ``"branch_and_bound"``
    or ``"beam"``); ``exact`` is False only for beam search. ``cost_calls``
    counts distinct trees handed to ``cost_fn``.

    Examples:
        >>> from mtgraph.strategies.affinity import best_tree
        >>> affinity = [[[1.0, 0.9, 0.1], [0.9, 1.0, 0.1], [0.1, 0.1, 1.0]]] * 2  # a ~ b, c apart; D = 2
        >>> copies = lambda tree: sum(tree.branches(l) for l in range(tree.num_locations))  # a toy resource cost
        >>> choice = best_tree(affinity, ["a", "b", "c"], 3, copies, root_shared=True)
        >>> print(choice.tree)
        {a,b,c} / {a,b} {c}
        >>> choice.cost, choice.method, choice.exact
        (3.0, 'exhaustive', True)
    """

    tree: BranchingTree
    dissimilarity: float
    cost: float
    method: str
    exact: bool
    cost_calls: int


class PathPoint(NamedTuple):
    """One step of the budget path: a tree and its two costs.

    Examples:
        >>> from mtgraph.strategies.affinity import BranchingTree, PathPoint
        >>> point = PathPoint(cost=2.0, dissimilarity=1.8, tree=BranchingTree.all_shared(["a", "b"], 2))
        >>> point.cost, str(point.tree)
        (2.0, '{a,b} / {a,b}')
    """

    cost: float
    dissimilarity: float
    tree: BranchingTree


@dataclass(frozen=True)
class _Scored:
    dissimilarity: float
    cost: float
    tree: BranchingTree

    def rank(self) -> tuple[float, float, tuple[tuple[tuple[str, ...], ...], ...]]:
        return (self.dissimilarity, self.cost, self.tree.key())


@dataclass(frozen=True)
class _Limit:
    """A budget: ``cost ≤ value`` (with float slack) or, for the path, ``cost < value``."""

    value: float
    strict: bool = False

    def admits(self, cost: float) -> bool:
        if self.strict:
            return cost < self.value
        return cost <= self.value + _RELATIVE_BUDGET_SLACK * max(1.0, abs(self.value))


class _CostOracle:
    """Calls the caller's ``cost_fn`` once per tree and checks what it returns."""

    def __init__(self, cost_fn: Callable[[BranchingTree], float]) -> None:
        if not callable(cost_fn):
            raise ConfigError(f"cost_fn must be callable, got {type(cost_fn).__name__}")
        self._fn = cost_fn
        self._cache: dict[BranchingTree, float] = {}

    @property
    def calls(self) -> int:
        return len(self._cache)

    def __call__(self, tree: BranchingTree) -> float:
        cached = self._cache.get(tree)
        if cached is not None:
            return cached
        value = self._fn(tree)
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ConfigError(f"cost_fn must return a finite number; for tree {tree} it returned {value!r}")
        if value < 0:
            raise ConfigError(f"cost_fn returned a negative cost {value!r} for tree {tree}")
        self._cache[tree] = float(value)
        return float(value)


class _Problem:
    """Everything one search needs: tasks, scorer, cached cost oracle."""

    def __init__(
        self,
        affinity: object,
        tasks: Sequence[str],
        cost_fn: Callable[[BranchingTree], float],
        root_shared: bool,
        linkage: str,
    ) -> None:
        self.tasks = _checked_tasks(tasks)
        dis = _dissimilarity_tensor(affinity, self.tasks)
        self.num_locations = int(dis.shape[0])
        self.root_shared = bool(root_shared)
        self.scorer = _Scorer(dis, self.tasks, linkage)
        self.cost = _CostOracle(cost_fn)
        self._ranked: list[tuple[float, tuple, BranchingTree]] | None = None

    def count(self) -> int:
        return count_trees(len(self.tasks), self.num_locations, root_shared=self.root_shared)

    def all_shared(self) -> BranchingTree:
        return BranchingTree._trusted(((frozenset(self.tasks),),) * self.num_locations)

    def roots(self) -> Sequence[Partition]:
        if self.root_shared:
            return [(frozenset(self.tasks),)]
        return _set_partitions(tuple(sorted(self.tasks)))

    def ranked(self) -> list[tuple[float, tuple, BranchingTree]]:
        """Every tree with its clustering cost, best first (computed once)."""
        if self._ranked is None:
            scored = [
                (self.scorer.tree(t.partitions), t.key(), t)
                for t in enumerate_trees(self.tasks, self.num_locations, root_shared=self.root_shared)
            ]
            scored.sort(key=lambda item: (item[0], item[1]))
            self._ranked = scored
        return self._ranked

    def completion(self, prefix: tuple[Partition, ...]) -> BranchingTree:
        """The cheapest tree starting with ``prefix``: no split after it."""
        tail = (prefix[-1],) * (self.num_locations - len(prefix))
        return BranchingTree._trusted(prefix + tail)

    def score(self, tree: BranchingTree) -> _Scored:
        return _Scored(self.scorer.tree(tree.partitions), self.cost(tree), tree)


def _better(candidate: _Scored, best: _Scored | None) -> bool:
    return best is None or candidate.rank() < best.rank()


def _exhaustive(problem: _Problem, limit: _Limit) -> _Scored | None:
    """Walk trees in clustering-cost order; the first that fits wins (then ties)."""
    best: _Scored | None = None
    for dissimilarity, _key, tree in problem.ranked():
        if best is not None and dissimilarity > best.dissimilarity:
            break
        cost = problem.cost(tree)
        if limit.admits(cost):
            found = _Scored(dissimilarity, cost, tree)
            if _better(found, best):
                best = found
    return best


def _check_monotone(problem: _Problem, parent: BranchingTree, child: BranchingTree) -> float:
    """Cost of ``child`` (a refinement of ``parent``); refuse a shrinking cost."""
    parent_cost, child_cost = problem.cost(parent), problem.cost(child)
    if child_cost < parent_cost - _RELATIVE_BUDGET_SLACK * max(1.0, abs(parent_cost)):
        raise ConfigError(
            "cost_fn is not monotone in splitting, which branch and bound and beam "
            f"search assume: tree {child} costs {child_cost:g} but it refines tree "
            f"{parent}, which costs {parent_cost:g}; use method='exhaustive'"
        )
    return child_cost


def _branch_and_bound(problem: _Problem, limit: _Limit) -> _Scored | None:
    """Exact depth-first search over locations (see the module docstring)."""
    scorer = problem.scorer
    depth = problem.num_locations
    best: _Scored | None = None

    def visit(prefix: tuple[Partition, ...], partial: float) -> None:
        nonlocal best
        tree = problem.completion(prefix)
        if not limit.admits(problem.cost(tree)):
            return  # no refinement of this prefix can fit (monotone cost)
        found = problem.score(tree)
        if _better(found, best):
            best = found
        level = len(prefix)
        if level == depth:
            return
        children = sorted(
            ((partial + scorer.level(level, child), child) for child in _refinements(prefix[-1])),
            key=lambda item: (item[0], _partition_key(item[1])),
        )
        for bound, child in children:
            # Later levels cost ≥ 0, so ``bound`` is a lower bound; ties are
            # still explored because resource cost breaks them.
            if best is not None and bound > best.dissimilarity:
                break
            child_prefix = (*prefix, child)
            _check_monotone(problem, tree, problem.completion(child_prefix))
            visit(child_prefix, bound)

    roots = sorted(problem.roots(), key=lambda p: (scorer.level(0, p), _partition_key(p)))
    for root in roots:
        bound = scorer.level(0, root)
        if best is not None and bound > best.dissimilarity:
            break
        visit((root,), bound)
    return best


def _beam(problem: _Problem, limit: _Limit, width: int) -> _Scored | None:
    """Level-by-level search keeping the ``width`` best feasible prefixes."""
    scorer = problem.scorer
    best: _Scored | None = None
    frontier: list[tuple[float, tuple[Partition, ...]]] = []
    # (prefix, partial clustering cost, completion of the parent prefix or None)
    candidates: list[tuple[tuple[Partition, ...], float, BranchingTree | None]]
    candidates = [((p,), scorer.level(0, p), None) for p in problem.roots()]
    for level in range(problem.num_locations):
        candidates.sort(key=lambda item: (item[1], tuple(_partition_key(p) for p in item[0])))
        frontier = []
        for prefix, partial, parent in candidates:
            if len(frontier) == width or (best is not None and partial > best.dissimilarity):
                break
            tree = problem.completion(prefix)
            cost = problem.cost(tree) if parent is None else _check_monotone(problem, parent, tree)
            if not limit.admits(cost):
                continue
            found = problem.score(tree)
            if _better(found, best):
                best = found
            frontier.append((partial, prefix))
        if level + 1 == problem.num_locations:
            break
        candidates = [
            ((*prefix, child), partial + scorer.level(level + 1, child), problem.completion(prefix))
            for partial, prefix in frontier
            for child in _refinements(prefix[-1])
        ]
    return best


def _resolve_method(method: str, problem: _Problem) -> str:
    if method not in _METHODS:
        raise ConfigError(f"method must be one of {list(_METHODS)}, got {method!r}")
    count = problem.count() if method in ("auto", "exhaustive") else 0
    if method == "auto":
        if count <= EXHAUSTIVE_LIMIT:
            method = "exhaustive"
        elif count <= BRANCH_AND_BOUND_LIMIT:
            method = "branch_and_bound"
        else:
            method = "beam"
    if method == "exhaustive" and count > EXHAUSTIVE_LIMIT:
        raise ConfigError(
            f"{count:,} trees for {len(problem.tasks)} tasks and {problem.num_locations} "
            f"locations exceed the exhaustive limit of {EXHAUSTIVE_LIMIT:,}; use "
            "method='branch_and_bound' or 'beam'"
        )
    if method in ("branch_and_bound", "beam") and len(problem.tasks) > MAX_TASKS:
        raise ConfigError(
            f"tree search supports at most {MAX_TASKS} tasks (a location can split "
            f"into Bell(N) groupings, {len(problem.tasks)} tasks given); papers/001 "
            "does not say how its 40-task search was done"
        )
    return method


def _run(problem: _Problem, method: str, limit: _Limit, beam_width: int) -> _Scored | None:
    if method == "exhaustive":
        return _exhaustive(problem, limit)
    if method == "branch_and_bound":
        return _branch_and_bound(problem, limit)
    return _beam(problem, limit, beam_width)


def _check_beam_width(beam_width: int) -> None:
    if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
        raise ConfigError(f"beam_width must be a positive integer, got {beam_width!r}")


def best_tree(
    affinity: object,
    tasks: Sequence[str],
    budget: float,
    cost_fn: Callable[[BranchingTree], float],
    *,
    root_shared: bool = False,
    linkage: Linkage = "diameter",
    method: Method = "auto",
    beam_width: int = DEFAULT_BEAM_WIDTH,
) -> TreeChoice:
    """The tree of smallest clustering cost whose resource cost fits ``budget``.

    ``affinity`` is the ``[D, N, N]`` RSA tensor in the order of ``tasks``;
    ``cost_fn(tree)`` returns the tree's exact resource cost (parameters or
    GMac of the compiled candidate) and is called at most once per tree.
    ``budget`` is inclusive. Ties: lower clustering cost, then lower resource
    cost, then :meth:`BranchingTree.key`. See the module docstring for the
    methods, their limits and the monotone-cost assumption.

    Args:
        affinity: the ``[D, N, N]`` RSA affinity.
        tasks: the order of the affinity's rows and columns.
        budget: the largest admissible resource cost (inclusive).
        cost_fn: a tree's resource cost.
        root_shared: keep every task in one group at the first location.
        linkage: the clustering cost's reading (see the module docstring).
        method: ``"auto"``, ``"exhaustive"``, ``"branch_and_bound"`` or ``"beam"``.
        beam_width: partial trees kept per level by beam search.

    Returns:
        The :class:`TreeChoice`.

    Raises:
        BudgetError: the budget is below the all-shared tree's cost. That
            tree is the cheapest one whenever splitting never lowers the
            cost, which is what every network cost satisfies.
        ConfigError: a malformed affinity, task list, budget or option, or a
            cost that drops when a tree is refined (branch and bound).

    Examples:
        >>> from mtgraph.strategies.affinity import best_tree
        >>> affinity = [[[1.0, 0.9, 0.1], [0.9, 1.0, 0.1], [0.1, 0.1, 1.0]]] * 2  # a ~ b, c apart; D = 2
        >>> copies = lambda tree: sum(tree.branches(l) for l in range(tree.num_locations))  # a toy resource cost
        >>> print(best_tree(affinity, ["a", "b", "c"], 3, copies, root_shared=True).tree)  # room for one split
        {a,b,c} / {a,b} {c}
        >>> print(best_tree(affinity, ["a", "b", "c"], 10, copies, root_shared=True).tree)
        {a,b,c} / {a} {b} {c}
        >>> best_tree(affinity, ["a", "b", "c"], 1, copies)
        Traceback (most recent call last):
        ...
        mtgraph.errors.BudgetError: budget 1 is below the cheapest tree, ... which costs 2; the budget must be at least 2
    """
    if isinstance(budget, bool) or not isinstance(budget, Real) or math.isnan(budget):
        raise ConfigError(f"budget must be a number, got {budget!r}")
    _check_beam_width(beam_width)
    problem = _Problem(affinity, tasks, cost_fn, root_shared, linkage)
    resolved = _resolve_method(method, problem)
    shared = problem.all_shared()
    minimum = problem.cost(shared)
    limit = _Limit(float(budget))
    if not limit.admits(minimum):
        raise BudgetError(
            f"budget {float(budget):g} is below the cheapest tree, all tasks shared at "
            f"every location ({shared}), which costs {minimum:g}; the budget must be at "
            f"least {minimum:g}"
        )
    found = _run(problem, resolved, limit, beam_width)
    if found is None:  # unreachable while all-shared fits; kept for a clear message
        raise BudgetError(f"no tree fits budget {float(budget):g}; minimum is {minimum:g}")
    return TreeChoice(
        tree=found.tree,
        dissimilarity=found.dissimilarity,
        cost=found.cost,
        method=resolved,
        exact=resolved != "beam",
        cost_calls=problem.cost.calls,
    )


def budget_path(
    affinity: object,
    tasks: Sequence[str],
    cost_fn: Callable[[BranchingTree], float],
    *,
    root_shared: bool = False,
    linkage: Linkage = "diameter",
    method: Method = "auto",
    beam_width: int = DEFAULT_BEAM_WIDTH,
) -> list[PathPoint]:
    """The trees :func:`best_tree` picks as the budget grows (papers/001 fig. 5).

    Returns ``(cost, dissimilarity, tree)`` points sorted by increasing cost,
    each strictly lower in clustering cost than the one before: the Pareto
    front of resource cost vs clustering cost, starting at the all-shared
    tree. ``best_tree`` at any budget ``b`` returns the last point with
    ``cost ≤ b``. Exhaustively this costs one ``cost_fn`` call per tree;
    otherwise it runs one search per point, from the unlimited budget down.
    The arguments are those of :func:`best_tree`, without the budget.

    Returns:
        The :class:`PathPoint` list, by increasing cost.

    Raises:
        ConfigError: as for :func:`best_tree`.

    Examples:
        >>> from mtgraph.strategies.affinity import budget_path
        >>> affinity = [[[1.0, 0.9, 0.1], [0.9, 1.0, 0.1], [0.1, 0.1, 1.0]]] * 2  # a ~ b, c apart; D = 2
        >>> copies = lambda tree: sum(tree.branches(l) for l in range(tree.num_locations))  # a toy resource cost
        >>> for point in budget_path(affinity, ["a", "b", "c"], copies, root_shared=True):
        ...     print(point.cost, round(point.dissimilarity, 6), point.tree)
        2.0 1.8 {a,b,c} / {a,b,c}
        3.0 1.0 {a,b,c} / {a,b} {c}
        4.0 0.9 {a,b,c} / {a} {b} {c}
    """
    _check_beam_width(beam_width)
    problem = _Problem(affinity, tasks, cost_fn, root_shared, linkage)
    resolved = _resolve_method(method, problem)
    if resolved == "exhaustive":
        points = _exhaustive_front(problem)
    else:
        points = []
        limit = _Limit(math.inf)
        while (found := _run(problem, resolved, limit, beam_width)) is not None:
            points.append(PathPoint(found.cost, found.dissimilarity, found.tree))
            limit = _Limit(found.cost, strict=True)
    # Beam search can miss a tree, so keep only strict improvements.
    points.sort(key=lambda p: (p.cost, p.dissimilarity, p.tree.key()))
    front: list[PathPoint] = []
    for point in points:
        if not front or point.dissimilarity < front[-1].dissimilarity:
            front.append(point)
    return front


def _exhaustive_front(problem: _Problem) -> list[PathPoint]:
    """One pass in clustering-cost order: a tree is on the front iff it is
    cheaper than every tree with a lower clustering cost."""
    points: list[PathPoint] = []
    cheapest_so_far = math.inf
    for _dis, group in itertools.groupby(problem.ranked(), key=lambda item: item[0]):
        members = [(problem.cost(tree), key, dis, tree) for dis, key, tree in group]
        cost, _key, dis, tree = min(members, key=lambda m: (m[0], m[1]))
        if cost < cheapest_so_far:
            points.append(PathPoint(cost, dis, tree))
            cheapest_so_far = cost
    return points
