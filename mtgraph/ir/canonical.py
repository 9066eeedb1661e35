"""Deterministic node order, common-subexpression merging and dead-node removal.

These are the mechanisms behind the ``cse`` and ``dce`` passes, kept here so
that builders can return graphs in canonical form without the pass machinery.
"""

from __future__ import annotations

import heapq

from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Gate, Head, Input, Node, Skip

__all__ = ["canonicalize", "remove_dead", "merge_duplicates", "renumber"]

_KIND_RANK = {Input: 0, Block: 1, Skip: 1, Gate: 2, Head: 3}


def renumber(node: Node, mapping: dict[int, int]) -> Node:
    """Return ``node`` with its source ids translated through ``mapping``.

    Args:
        node: the node.
        mapping: old node id -> new node id, for every source of ``node``.

    Returns:
        A node equal to ``node`` except for its sources.

    Examples:
        >>> from mtgraph.ir import Block
        >>> from mtgraph.ir.canonical import renumber
        >>> renumber(Block(block=1, weights="b1.seg", src=3), {3: 1})
        Block(block=1, weights='b1.seg', src=1)
    """
    if isinstance(node, (Block, Skip, Head)):
        return _replace_src(node, mapping[node.src])
    if isinstance(node, Gate):
        return Gate(task=node.task, srcs=tuple(mapping[s] for s in node.srcs), weights=node.weights)
    return node


def _replace_src(node: Block | Skip | Head, src: int) -> Node:
    if isinstance(node, Block):
        return Block(block=node.block, weights=node.weights, src=src)
    if isinstance(node, Skip):
        return Skip(block=node.block, src=src, weights=node.weights)
    return Head(task=node.task, src=src)


def _sort_key(graph: MTGraph, i: int, new_srcs: tuple[int, ...], task_index: dict[str, int]) -> tuple:
    node = graph.nodes[i]
    if isinstance(node, Head):
        # Heads go last, in task order.
        return (1, task_index[node.task])
    tasks = tuple(sorted(task_index[t] for t in graph.served[i] if t in task_index))
    detail = (
        type(node).__name__,
        getattr(node, "block", -1),
        getattr(node, "weights", None) or "",
        getattr(node, "task", ""),
    )
    return (0, graph.levels[i], _KIND_RANK[type(node)], tasks, new_srcs, detail)


def canonicalize(graph: MTGraph) -> MTGraph:
    """Reorder nodes deterministically, keeping topological order.

    Order: by backbone level, then blocks before gates, then by the tasks a
    node serves (in task order), then by source ids; heads last in task order.
    The task order (head order) is preserved. A topological sort with this key
    as priority makes the printed text stable whatever order the nodes were
    built in.

    Args:
        graph: the graph; nodes need not be in any particular order beyond
            sources coming first.

    Returns:
        The reordered graph, or ``graph`` itself when it has a cycle or a
        dangling source (left for :func:`~mtgraph.ir.verify` to report).

    Examples:
        >>> import mtgraph
        >>> from mtgraph.ir import Block, Head, Input, canonicalize
        >>> graph = mtgraph.MTGraph((Input(), Block(0, "b0.depth", 0), Block(0, "b0.seg", 0),
        ...                          Head("seg", 2), Head("depth", 1)))
        >>> print(canonicalize(graph))  # seg's block first: seg is the first task
        %0 = input                                  # seg depth
        %1 = block 0 w=b0.seg (%0)                  # seg
        %2 = block 0 w=b0.depth (%0)                # depth
        seg = head (%1)
        depth = head (%2)
    """
    n = len(graph.nodes)
    task_index = {t: k for k, t in enumerate(graph.tasks)}
    pending = [len(set(node.srcs)) for node in graph.nodes]
    users = graph.users
    mapping: dict[int, int] = {}
    heap: list[tuple[tuple, int]] = []
    for i in range(n):
        if pending[i] == 0:
            heapq.heappush(heap, (_sort_key(graph, i, (), task_index), i))
    order: list[int] = []
    while heap:
        _, i = heapq.heappop(heap)
        mapping[i] = len(order)
        order.append(i)
        for u in dict.fromkeys(users[i]):
            pending[u] -= 1
            if pending[u] == 0:
                new_srcs = tuple(mapping[s] for s in graph.nodes[u].srcs)
                heapq.heappush(heap, (_sort_key(graph, u, new_srcs, task_index), u))
    if len(order) != n:
        # A cycle or a dangling reference: leave the graph as it is for the verifier to report.
        return graph
    return MTGraph(tuple(renumber(graph.nodes[i], mapping) for i in order))


def remove_dead(graph: MTGraph) -> MTGraph:
    """Drop every node that reaches no head (the Input node is always kept).

    Args:
        graph: the graph.

    Returns:
        The graph without dead nodes, sources renumbered, order otherwise kept.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.ir import Block, Head, Input, remove_dead
        >>> graph = mtgraph.MTGraph((Input(), Block(0, "b0.old", 0), Block(0, "b0.seg", 0), Head("seg", 2)))
        >>> print(remove_dead(graph))
        %0 = input                                  # seg
        %1 = block 0 w=b0.seg (%0)                  # seg
        seg = head (%1)
    """
    keep = [i for i, s in enumerate(graph.served) if s or isinstance(graph.nodes[i], Input)]
    mapping = {old: new for new, old in enumerate(keep)}
    return MTGraph(tuple(renumber(graph.nodes[i], mapping) for i in keep))


def merge_duplicates(graph: MTGraph) -> MTGraph:
    """Merge structurally equal nodes (same kind, fields and sources) into one.

    Processing in topological order makes merging transitive: once two
    sources are merged, their equal consumers become equal too.

    Args:
        graph: the graph, in topological order.

    Returns:
        The graph with each set of equal nodes replaced by its first member
        (heads are never merged).

    Examples:
        >>> import mtgraph
        >>> from mtgraph.ir import Block, Head, Input, merge_duplicates
        >>> graph = mtgraph.MTGraph((Input(), Block(0, "b0.shared", 0), Block(0, "b0.shared", 0),
        ...                          Head("seg", 1), Head("depth", 2)))
        >>> print(merge_duplicates(graph))  # one block computed once for both tasks
        %0 = input                                  # seg depth
        %1 = block 0 w=b0.shared (%0)               # seg depth
        seg = head (%1)
        depth = head (%1)
    """
    mapping: dict[int, int] = {}
    seen: dict[Node, int] = {}
    nodes: list[Node] = []
    for i, node in enumerate(graph.nodes):
        renamed = renumber(node, mapping)
        if renamed in seen and not isinstance(renamed, Head):
            mapping[i] = seen[renamed]
            continue
        mapping[i] = len(nodes)
        seen[renamed] = len(nodes)
        nodes.append(renamed)
    return MTGraph(tuple(nodes))
