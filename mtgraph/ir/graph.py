"""The :class:`MTGraph` value: nodes in topological order, plus derived views."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from mtgraph.errors import IRError
from mtgraph.ir.nodes import Block, Gate, Head, Input, Node, Skip

__all__ = ["MTGraph"]


@dataclass(frozen=True)
class MTGraph:
    """A multi-task architecture: a tuple of nodes in topological order.

    Node ``i`` may only name sources with ids ``< i``. The task order is the
    order of the ``Head`` nodes. Construction checks only that every element
    is a node (each node checked its own fields when it was made; a list is
    stored as a tuple); the graph's invariants are :func:`mtgraph.ir.verify`'s
    (the pass manager verifies after every pass).

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

    def __post_init__(self) -> None:
        if isinstance(self.nodes, (str, bytes)) or not isinstance(self.nodes, (tuple, list)):
            raise IRError(f"MTGraph nodes must be a tuple of IR nodes, got {type(self.nodes).__name__}")
        for i, node in enumerate(self.nodes):
            if not isinstance(node, _NODE_TYPES):
                raise IRError(f"MTGraph node {i} is a {type(node).__name__}, not an IR node (Input, Block, Skip, Gate, Head)")
        object.__setattr__(self, "nodes", tuple(self.nodes))

    def replace(self, index: int, node: Node) -> MTGraph:
        """A new graph with node ``index`` replaced by ``node``, verified (this graph is unchanged).

        Args:
            index: the id of the node to replace.
            node: the new node (its sources are ids of this graph).

        Returns:
            The new graph; it passes :func:`~mtgraph.ir.verify` (structure
            only: no block count or weight keys are known here).

        Raises:
            IRError: ``index`` is not a node id of the graph, or ``node`` is not an IR node.
            VerifyError: the new graph breaks an invariant.

        Examples:
            >>> import mtgraph
            >>> from mtgraph.ir import Block
            >>> graph = mtgraph.stn(2, ["seg", "depth"])
            >>> print(graph.replace(3, Block(1, "b1.depth", 1)), end="")  # seg's block 1 now runs depth's weights
            %0 = input                                  # seg depth
            %1 = block 0 w=b0.seg (%0)                  # seg
            %2 = block 0 w=b0.depth (%0)                # depth
            %3 = block 1 w=b1.depth (%1)                # seg
            %4 = block 1 w=b1.depth (%2)                # depth
            seg = head (%3)
            depth = head (%4)
            >>> graph.replace(3, Block(1, "b1.seg", 3))
            Traceback (most recent call last):
            ...
            mtgraph.errors.VerifyError: node %3 (%3 = block 1 w=b1.seg (%3)) uses %3, which is not an earlier node
            ...
        """
        from mtgraph.ir.verify import verify

        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.nodes):
            raise IRError(f"cannot replace node {index!r}: the graph has nodes 0..{len(self.nodes) - 1}")
        graph = MTGraph(self.nodes[:index] + (node,) + self.nodes[index + 1:])
        verify(graph)
        return graph

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


_NODE_TYPES = (Input, Block, Skip, Gate, Head)

