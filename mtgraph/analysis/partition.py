"""Which tasks share computation at each depth of an architecture, and how well that matches a designed clustering.

:func:`task_partition` reads a graph at one backbone block: two tasks are in
one group when their paths run through the same node there (a shared
``Block`` or ``Skip``; with gates, through any common node, grouped
transitively). For a tree this is exactly its partition at that block.

:func:`adjusted_rand_index` scores a partition against another (Hubert and
Arabie, 1985): 1 for the same grouping, about 0 for a grouping no better than
chance given the group sizes, negative for worse than chance. The evaluation
protocol uses it as a *structure-recovery* score: the learned architecture's
partition at each depth against a benchmark's designed task clusters.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from math import comb

from mtgraph.errors import ConfigError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Skip

__all__ = ["Partition", "task_partition", "task_partitions", "adjusted_rand_index", "check_partition"]

#: A partition of task names: disjoint groups covering every task.
Partition = tuple[tuple[str, ...], ...]


def check_partition(groups: Sequence[Sequence[str]], tasks: Sequence[str], *, what: str = "clusters") -> Partition:
    """``groups`` as a :data:`Partition` in task order, checked to cover every task of ``tasks`` exactly once.

    Raises:
        ConfigError: an empty group, a task in two groups, a task not in ``tasks``, or a task of ``tasks`` missing.

    Examples:
        >>> from mtgraph.analysis.partition import check_partition
        >>> check_partition([["depth", "normals"], ["seg"]], ["seg", "depth", "normals"])
        (('seg',), ('depth', 'normals'))
        >>> check_partition([["seg"], ["seg", "depth"]], ["seg", "depth"])
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: clusters name task 'seg' in more than one group
    """
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise ConfigError(f"{what} must be a sequence of groups of task names, got {type(groups).__name__}")
    order = {t: i for i, t in enumerate(tasks)}
    seen: set[str] = set()
    out = []
    for group in groups:
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence) or not group:
            raise ConfigError(f"{what}: every group must be a non-empty sequence of task names, got {group!r}")
        for task in group:
            if task not in order:
                raise ConfigError(f"{what} name task {task!r}, which is not one of the tasks {list(tasks)}")
            if task in seen:
                raise ConfigError(f"{what} name task {task!r} in more than one group")
            seen.add(task)
        out.append(tuple(sorted(group, key=order.__getitem__)))
    missing = [t for t in tasks if t not in seen]
    if missing:
        raise ConfigError(f"{what} leave out tasks {missing}; every task must be in exactly one group")
    return tuple(sorted(out, key=lambda g: order[g[0]]))


def task_partition(graph: MTGraph, block: int) -> Partition:
    """The tasks grouped by shared computation at backbone block ``block``, in task order.

    Args:
        graph: the architecture.
        block: the block index (0 = the first backbone block).

    Returns:
        The groups; a task whose path has no node at that block (it cannot
        happen in a verified graph) is a group of its own.

    Raises:
        ConfigError: ``block`` is outside the graph's blocks.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.analysis.partition import task_partition
        >>> graph = mtgraph.from_groups(2, ["seg", "edges", "depth"], [[["seg", "edges", "depth"]],
        ...                                                           [["seg", "edges"], ["depth"]]])
        >>> task_partition(graph, 0), task_partition(graph, 1)
        ((('seg', 'edges', 'depth'),), (('seg', 'edges'), ('depth',)))
    """
    blocks = [n.block for n in graph.nodes if isinstance(n, (Block, Skip))]
    if isinstance(block, bool) or not isinstance(block, int) or not blocks or not 0 <= block <= max(blocks):
        raise ConfigError(f"block must be an index in 0..{max(blocks, default=-1)}, got {block!r}")
    tasks = graph.tasks
    parent = {t: t for t in tasks}

    def find(task: str) -> str:
        while parent[task] != task:
            parent[task] = parent[parent[task]]
            task = parent[task]
        return task

    for i, node in enumerate(graph.nodes):
        if isinstance(node, (Block, Skip)) and node.block == block:
            served = [t for t in tasks if t in graph.served[i]]
            for other in served[1:]:
                parent[find(other)] = find(served[0])
    groups: dict[str, list[str]] = {}
    for task in tasks:
        groups.setdefault(find(task), []).append(task)
    return tuple(tuple(g) for g in groups.values())


def task_partitions(graph: MTGraph) -> tuple[Partition, ...]:
    """:func:`task_partition` at every block, first to last.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.analysis.partition import task_partitions
        >>> [len(p) for p in task_partitions(mtgraph.stn(3, ["seg", "depth"]))]
        [2, 2, 2]
    """
    count = 1 + max((n.block for n in graph.nodes if isinstance(n, (Block, Skip))), default=-1)
    return tuple(task_partition(graph, b) for b in range(count))


def adjusted_rand_index(first: Sequence[Sequence[str]], second: Sequence[Sequence[str]]) -> float:
    """The adjusted Rand index of two partitions of the same items (Hubert and Arabie, 1985).

    ``ARI = (Σ_ij C(n_ij, 2) − E) / (½ (Σ_i C(a_i, 2) + Σ_j C(b_j, 2)) − E)``
    with ``n_ij`` the items in group i of ``first`` and group j of
    ``second``, ``a_i``/``b_j`` the group sizes, ``E = Σ_i C(a_i, 2) Σ_j
    C(b_j, 2) / C(n, 2)``. When the denominator is 0 (both partitions put
    every item alone, or both put all items in one group) the partitions are
    identical and the index is 1, the convention of scikit-learn.

    Raises:
        ConfigError: the partitions do not cover the same items, or one names an item twice.

    Examples:
        >>> from mtgraph.analysis.partition import adjusted_rand_index
        >>> adjusted_rand_index([["a", "b"], ["c", "d"]], [["a", "b"], ["c", "d"]])
        1.0
        >>> adjusted_rand_index([["a", "b"], ["c", "d"]], [["a", "c"], ["b", "d"]])
        -0.5
    """
    label_a = _labels(first, "first")
    label_b = _labels(second, "second")
    if set(label_a) != set(label_b):
        raise ConfigError(
            f"the partitions cover different items: {sorted(set(label_a) ^ set(label_b))} are in only one of them"
        )
    items = sorted(label_a)
    n = len(items)
    if n < 2:
        return 1.0
    counts: dict[tuple[int, int], int] = {}
    for item in items:
        key = (label_a[item], label_b[item])
        counts[key] = counts.get(key, 0) + 1
    sizes_a = [sum(1 for i in items if label_a[i] == g) for g in set(label_a.values())]
    sizes_b = [sum(1 for i in items if label_b[i] == g) for g in set(label_b.values())]
    index = sum(comb(c, 2) for c in counts.values())
    sum_a = sum(comb(a, 2) for a in sizes_a)
    sum_b = sum(comb(b, 2) for b in sizes_b)
    # Exact rational arithmetic: the counts are integers, so the index is a ratio computed without rounding.
    expected = Fraction(sum_a * sum_b, comb(n, 2))
    maximum = Fraction(sum_a + sum_b, 2)
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def _labels(partition: Sequence[Sequence[str]], what: str) -> dict[str, int]:
    if isinstance(partition, (str, bytes)) or not isinstance(partition, Sequence):
        raise ConfigError(f"the {what} partition must be a sequence of groups, got {type(partition).__name__}")
    labels: dict[str, int] = {}
    for k, group in enumerate(partition):
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence):
            raise ConfigError(f"the {what} partition's groups must be sequences of items, got {group!r}")
        for item in group:
            if item in labels:
                raise ConfigError(f"the {what} partition names {item!r} more than once")
            labels[item] = k
    return labels
