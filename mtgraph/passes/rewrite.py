"""Rebuilding a graph task path by task path, with hash-consing, so rewrites come out canonical."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from mtgraph.errors import PassError
from mtgraph.ir.canonical import canonicalize, remove_dead, renumber
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Head, Input, Node

__all__ = ["PathRewriter", "Visitor", "rewrite_paths"]


class PathRewriter:
    """Builds a graph node by node with hash-consing: adding a node equal to one already added returns its id.

    Sources of added nodes are ids in the graph being built. Because equal
    nodes get one id, a rebuilt graph has no duplicates (cse is implied).
    """

    def __init__(self) -> None:
        self.nodes: list[Node] = [Input()]
        self._ids: dict[Node, int] = {Input(): 0}

    def add(self, node: Node) -> int:
        """Add ``node`` (or find its equal) and return its id."""
        if isinstance(node, (Input, Head)):
            raise PassError(f"internal error: {type(node).__name__} nodes are added by the rewriter itself")
        existing = self._ids.get(node)
        if existing is not None:
            return existing
        self.nodes.append(node)
        self._ids[node] = len(self.nodes) - 1
        return len(self.nodes) - 1

    def finish(self, heads: Mapping[str, int], tasks: Sequence[str]) -> MTGraph:
        """The built graph with one head per task (in ``tasks`` order), dead nodes removed, canonical order."""
        graph = MTGraph(tuple(self.nodes) + tuple(Head(task=t, src=heads[t]) for t in tasks))
        return canonicalize(remove_dead(graph))


#: ``visit(task, old_id, node, rewriter)`` gets an old node with its sources already
#: translated for ``task`` and returns the node to add, or the id of a built node to use instead.
Visitor = Callable[[str, int, Node, PathRewriter], "Node | int"]


def rewrite_paths(graph: MTGraph, visit: Visitor, rewriter: PathRewriter | None = None) -> MTGraph:
    """Rebuild ``graph`` one task path at a time, letting ``visit`` replace nodes per task.

    Each task's path is translated in topological order: every node's
    sources are mapped to their rebuilt ids *for that task*, then ``visit``
    decides what the task uses in its place. Nodes that come out equal for
    several tasks are built once, so tasks keep sharing exactly as long as
    their rebuilt paths agree: a task whose node was replaced diverges from
    that point on (its later call sites keep their weight keys but get new
    inputs), while other tasks keep the original nodes. The result is
    canonical (no duplicates, no dead nodes, canonical order).
    """
    rewriter = rewriter or PathRewriter()
    heads: dict[str, int] = {}
    for task in graph.tasks:
        mapping: dict[int, int] = {}
        for i in graph.path(task):
            node = graph.nodes[i]
            if isinstance(node, Input):
                mapping[i] = 0
            elif isinstance(node, Head):
                heads[task] = mapping[node.src]
            else:
                out = visit(task, i, renumber(node, mapping), rewriter)
                mapping[i] = out if isinstance(out, int) else rewriter.add(out)
    return rewriter.finish(heads, graph.tasks)
