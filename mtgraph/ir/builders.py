"""Builders of the standard architectures: STN, One-Net and trees from per-block task groups."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mtgraph.errors import IRError
from mtgraph.ir.canonical import canonicalize
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.names import check_task_name
from mtgraph.ir.nodes import Block, Head, Input, Node

__all__ = ["stn", "one_net", "from_groups", "group_key", "SHARED"]

#: Key suffix of a block instance used by every task.
SHARED = "shared"


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    tasks = tuple(tasks)
    if not tasks:
        raise IRError("at least one task is needed")
    for t in tasks:
        check_task_name(t)
    duplicates = sorted({t for t in tasks if tasks.count(t) > 1})
    if duplicates:
        raise IRError(f"task names must be unique; repeated: {duplicates}")
    return tasks


def _check_blocks(num_blocks: int) -> None:
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise IRError(f"num_blocks must be a positive int, got {num_blocks!r}")


def group_key(block: int, group: Iterable[str], tasks: Sequence[str]) -> str:
    """The weight key of block ``block`` used by ``group`` (``b3.S+E``, or ``b3.shared`` for all tasks).

    Args:
        block: the block index.
        group: the tasks sharing the block instance, in any order.
        tasks: every task of the graph; it fixes the order of names in the key.

    Returns:
        ``b{block}.`` followed by the group's tasks in task order joined by
        ``+``, or by ``shared`` when the group is every task (of two or more).

    Examples:
        >>> from mtgraph.ir import group_key
        >>> group_key(1, ["edges", "seg"], ["seg", "depth", "edges"])
        'b1.seg+edges'
        >>> group_key(1, ["seg", "depth", "edges"], ["seg", "depth", "edges"])
        'b1.shared'
    """
    members = [t for t in tasks if t in set(group)]
    suffix = SHARED if len(members) == len(tasks) and len(tasks) > 1 else "+".join(members)
    return f"b{block}.{suffix}"


def from_groups(num_blocks: int, tasks: Sequence[str], groups: Sequence[Iterable[Iterable[str]]]) -> MTGraph:
    """Build the tree in which block ``b`` is shared inside each group of ``groups[b]``.

    ``groups[b]`` partitions the tasks; each partition must refine the one
    before it (a task group can split as depth grows, never merge), which is
    the form MTSL and branched-network architectures are published in.

    Args:
        num_blocks: the backbone's block count.
        tasks: task names (identifiers, unique), in head order.
        groups: one partition of ``tasks`` per block.

    Returns:
        The tree, in canonical form, with weight keys from :func:`group_key`.

    Raises:
        IRError: a task name is invalid, reserved (see
            :data:`~mtgraph.ir.RESERVED_TASK_NAMES`) or repeated, ``groups`` does not have
            one partition per block, a partition does not cover every task
            exactly once, or a group merges tasks split at an earlier block.

    Examples:
        >>> import mtgraph
        >>> tasks = ["seg", "depth", "edges"]
        >>> graph = mtgraph.from_groups(2, tasks, [[tasks], [["seg", "edges"], ["depth"]]])
        >>> print(graph)
        %0 = input                                  # seg depth edges
        %1 = block 0 w=b0.shared (%0)               # seg depth edges
        %2 = block 1 w=b1.seg+edges (%1)            # seg edges
        %3 = block 1 w=b1.depth (%1)                # depth
        seg = head (%2)
        depth = head (%3)
        edges = head (%2)
        >>> mtgraph.from_groups(2, tasks, [[["seg"], ["depth", "edges"]], [tasks]])
        Traceback (most recent call last):
        ...
        mtgraph.errors.IRError: groups are not a tree: at block 1 group [...] takes tasks from different groups ...
    """
    tasks = _check_tasks(tasks)
    _check_blocks(num_blocks)
    if len(groups) != num_blocks:
        raise IRError(f"groups has {len(groups)} partitions; the backbone has {num_blocks} blocks (one partition per block)")
    nodes: list[Node] = [Input()]
    current: dict[str, int] = {t: 0 for t in tasks}
    previous: list[frozenset[str]] = [frozenset(tasks)]
    for b, partition in enumerate(groups):
        parts = [frozenset(g) for g in partition]
        _check_partition(b, parts, tasks)
        for part in parts:
            parent = next(p for p in previous if next(iter(part)) in p)
            if not part <= parent:
                raise IRError(
                    f"groups are not a tree: at block {b} group {sorted(part)} takes tasks from different groups "
                    f"of block {b - 1}; each block's groups must split the previous block's groups, never merge them"
                )
        for part in sorted(parts, key=lambda p: min(tasks.index(t) for t in p)):
            src = current[next(iter(part))]
            nodes.append(Block(block=b, weights=group_key(b, part, tasks), src=src))
            for t in part:
                current[t] = len(nodes) - 1
        previous = parts
    nodes.extend(Head(task=t, src=current[t]) for t in tasks)
    return canonicalize(MTGraph(tuple(nodes)))


def _check_partition(block: int, parts: list[frozenset[str]], tasks: tuple[str, ...]) -> None:
    seen: list[str] = [t for p in parts for t in p]
    if any(not p for p in parts):
        raise IRError(f"block {block}: a group is empty")
    unknown = sorted(set(seen) - set(tasks))
    if unknown:
        raise IRError(f"block {block}: groups name unknown tasks {unknown}; tasks are {list(tasks)}")
    repeated = sorted({t for t in seen if seen.count(t) > 1})
    if repeated:
        raise IRError(f"block {block}: tasks {repeated} are in more than one group")
    missing = [t for t in tasks if t not in seen]
    if missing:
        raise IRError(f"block {block}: tasks {missing} are in no group; every block's groups must cover every task")


def stn(num_blocks: int, tasks: Sequence[str]) -> MTGraph:
    """Single-task networks: every task has its own weights for every block.

    Args:
        num_blocks: the backbone's block count.
        tasks: task names (identifiers, unique), in head order.

    Returns:
        The graph in canonical form; task ``T``'s block ``b`` has key ``bB.T``.

    Raises:
        IRError: no task, a repeated, reserved or non-identifier task name,
            or ``num_blocks`` < 1.

    Examples:
        >>> import mtgraph
        >>> print(mtgraph.stn(2, ["seg", "depth"]))
        %0 = input                                  # seg depth
        %1 = block 0 w=b0.seg (%0)                  # seg
        %2 = block 0 w=b0.depth (%0)                # depth
        %3 = block 1 w=b1.seg (%1)                  # seg
        %4 = block 1 w=b1.depth (%2)                # depth
        seg = head (%3)
        depth = head (%4)
    """
    tasks = _check_tasks(tasks)
    return from_groups(num_blocks, tasks, [[[t] for t in tasks]] * num_blocks)


def one_net(num_blocks: int, tasks: Sequence[str]) -> MTGraph:
    """One shared network: every block computed once for all tasks.

    Args:
        num_blocks: the backbone's block count.
        tasks: task names (identifiers, unique), in head order.

    Returns:
        The graph in canonical form; block ``b`` has key ``bB.shared`` (``bB.T``
        for a single task ``T``).

    Raises:
        IRError: no task, a repeated, reserved or non-identifier task name,
            or ``num_blocks`` < 1.

    Examples:
        >>> import mtgraph
        >>> print(mtgraph.one_net(2, ["seg", "depth"]))
        %0 = input                                  # seg depth
        %1 = block 0 w=b0.shared (%0)               # seg depth
        %2 = block 1 w=b1.shared (%1)               # seg depth
        seg = head (%2)
        depth = head (%2)
        >>> mtgraph.one_net(0, ["seg"])
        Traceback (most recent call last):
        ...
        mtgraph.errors.IRError: num_blocks must be a positive int, got 0
        >>> mtgraph.one_net(2, ["input", "seg"])  # the name of an exported model's input
        Traceback (most recent call last):
        ...
        mtgraph.errors.IRError: task name 'input' is reserved; reserved task names are 'input': the name of ...
    """
    tasks = _check_tasks(tasks)
    return from_groups(num_blocks, tasks, [[list(tasks)]] * num_blocks)
