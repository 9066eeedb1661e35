"""The :class:`MTGraph` value: nodes in topological order, plus derived views."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from mtgraph.ir.nodes import Block, Gate, Head, Node, Skip

__all__ = ["MTGraph"]


@dataclass(frozen=True)
class MTGraph:
    """A multi-task architecture: a tuple of nodes in topological order.

    Node ``i`` may only name sources with ids ``< i``. The task order is the
    order of the ``Head`` nodes. Construction does not check invariants; call
    :func:`mtgraph.ir.verify` (the pass manager does so after every pass).

    Attributes:
        nodes: the nodes; a node's id is its position in this tuple.

    Examples:
        >>> import mtgraph
        >>> graph = mtgraph.from_groups(2, ["seg", "depth"], [[["seg", "depth"]], [["seg"], ["depth"]]])
        >>> print(graph)
        %0 = input                                  # seg depth
        %1 = block 0 w=b0.shared (%0)               # seg depth
        %2 = block 1 w=b1.seg (%1)                  # seg
        %3 = block 1 w=b1.depth (%1)                # depth
        seg = head (%2)
        depth = head (%3)
        >>> graph.tasks, graph.path("depth")
        (('seg', 'depth'), (0, 1, 3, 5))
        >>> graph.weight_keys()
        ('b0.shared', 'b1.seg', 'b1.depth', 'head.seg', 'head.depth')
    """

    nodes: tuple[Node, ...]

    @cached_property
    def tasks(self) -> tuple[str, ...]:
        """Task names in head order."""
        return tuple(n.task for n in self.nodes if isinstance(n, Head))

    @cached_property
    def heads(self) -> dict[str, int]:
        """Map task -> id of its Head node."""
        return {n.task: i for i, n in enumerate(self.nodes) if isinstance(n, Head)}

    @cached_property
    def users(self) -> tuple[tuple[int, ...], ...]:
        """For each node id, the ids of the nodes that consume it."""
        users: list[list[int]] = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            for s in node.srcs:
                if 0 <= s < len(users):
                    users[s].append(i)
        return tuple(tuple(u) for u in users)

    @cached_property
    def served(self) -> tuple[frozenset[str], ...]:
        """For each node id, the set of tasks whose head it (transitively) feeds."""
        served: list[set[str]] = [set() for _ in self.nodes]
        for i in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[i]
            if isinstance(node, Head):
                served[i].add(node.task)
            for s in node.srcs:
                if 0 <= s < i:
                    served[s] |= served[i]
        return tuple(frozenset(s) for s in served)

    @cached_property
    def levels(self) -> tuple[int, ...]:
        """For each node id, the backbone level of the value it produces."""
        levels: list[int] = []
        for node in self.nodes:
            if isinstance(node, (Block, Skip)):
                levels.append(node.block + 1)
            elif isinstance(node, Gate):
                levels.append(levels[node.srcs[0]] if node.srcs and node.srcs[0] < len(levels) else -1)
            elif isinstance(node, Head):
                levels.append(levels[node.src] if node.src < len(levels) else -1)
            else:
                levels.append(0)
        return tuple(levels)

    def path(self, task: str) -> tuple[int, ...]:
        """Ids of every node task ``task``'s output depends on, in order."""
        return tuple(i for i, s in enumerate(self.served) if task in s)

    def weight_keys(self) -> tuple[str, ...]:
        """Every ParamStore key the graph refers to, in first-use order."""
        keys: dict[str, None] = {}
        for node in self.nodes:
            key = getattr(node, "weights", None)
            if key is not None:
                keys[key] = None
        return tuple(keys)

    def __str__(self) -> str:
        from mtgraph.ir.text import print_graph

        return print_graph(self)

