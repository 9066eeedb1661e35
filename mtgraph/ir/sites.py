"""Call-site identities: a name for each node that survives renumbering.

Two IR nodes share parameters iff they name the same weight key, but they are
different *call sites* when their inputs differ (AdaShare: a block executed
by one task after a skip and by another task after the full block). Values
that belong to a call site rather than to the weights, such as BatchNorm
running statistics, need a key that stays valid when passes renumber or
reorder nodes and when a graph is saved and parsed again.

A node's site id is a short hash of what it computes: its kind, block, weight
key and the site ids of its sources, recursively down to the input. Two nodes
get the same id iff ``cse`` would merge them (same computation on the same
value), so the id of a node depends only on the node's ancestry, never on its
position in ``graph.nodes``.
"""

from __future__ import annotations

import hashlib

from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Gate, Head, Input, Node, Skip

__all__ = ["call_site_ids", "SITE_ID_LENGTH"]

SITE_ID_LENGTH = 12
"""Hex digits of a site id (48 bits: collisions are not a concern at any realistic graph size)."""


def _describe(node: Node, source_ids: list[str]) -> str:
    if isinstance(node, Input):
        return "input"
    if isinstance(node, Block):
        return f"block {node.block} w={node.weights} ({source_ids[node.src]})"
    if isinstance(node, Skip):
        return f"skip {node.block} w={node.weights or ''} ({source_ids[node.src]})"
    if isinstance(node, Gate):
        return f"gate {node.task} w={node.weights} ({', '.join(source_ids[s] for s in node.srcs)})"
    if isinstance(node, Head):
        return f"head {node.task} ({source_ids[node.src]})"
    raise TypeError(f"unknown IR node type {type(node).__name__}")


def call_site_ids(graph: MTGraph) -> tuple[str, ...]:
    """The site id of every node of ``graph``, indexed like ``graph.nodes``.

    Relies on the graph's topological order (sources before users), which
    :func:`~mtgraph.ir.verify` guarantees for any graph that compiles.

    Args:
        graph: a graph in topological order.

    Returns:
        One hex string of ``SITE_ID_LENGTH`` digits per node.

    Raises:
        TypeError: a node is not one of the IR node kinds.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.ir.sites import call_site_ids
        >>> ids = call_site_ids(mtgraph.stn(1, ["seg", "depth"]))
        >>> len(ids), len(ids[1]), ids[1] == ids[2]  # the two blocks read one input but differ in weights
        (5, 12, False)
        >>> call_site_ids(mtgraph.stn(1, ["depth", "seg"]))[1] in ids  # reordering keeps each node's id
        True
    """
    ids: list[str] = []
    for node in graph.nodes:
        text = _describe(node, ids)
        ids.append(hashlib.sha256(text.encode()).hexdigest()[:SITE_ID_LENGTH])
    return tuple(ids)
