"""Where the tensors of a multi-tensor value come from: the skip connections of an architecture.

At a multi-tensor level (see :mod:`mtgraph.ir.signature`) a value carries
tensors computed several levels earlier, such as an encoder's skip features
passed across a decoder. The signature table says, per block, which output
tensors are carried inputs and which the block computes; following that back
along a graph's sources finds, for each tensor a node reads, the node that
computed it. When that is not the node's own source, the tensor skipped
levels: a :class:`LongEdge` (what a diagram draws as a skip connection).

Rules, per node kind: a Block computes the members its row marks computed
and passes the others on from its source; an identity Skip passes its
source's value on whole; a projection Skip and a Gate compute their value
(a gate mixes its sources). A Block reads, last, the input members it does
not pass on (:attr:`~mtgraph.ir.BlockSignature.consumed`); a Gate reads every
member of its sources; a Head reads every member of its source, or one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Gate, Head, Skip
from mtgraph.ir.signature import COMPUTED, BackboneSignature

__all__ = ["LongEdge", "long_edges", "member_origins"]


@dataclass(frozen=True)
class LongEdge:
    """Node ``consumer`` reads tensor ``member`` that node ``origin`` computed more than one level earlier.

    Attributes:
        origin: id of the node that computed the tensor.
        consumer: id of the node that reads it last (a block), or mixes (a gate) or decodes it (a head).
        member: the tensor's member name (see :attr:`~mtgraph.ir.BlockSignature.members`).

    Examples:
        >>> from mtgraph.ir.members import LongEdge
        >>> LongEdge(origin=2, consumer=7, member="enc1")
        LongEdge(origin=2, consumer=7, member='enc1')
    """

    origin: int
    consumer: int
    member: str


def member_origins(graph: MTGraph, signature: BackboneSignature, node: int, member: int) -> frozenset[int]:
    """The ids of the nodes that computed member ``member`` of node ``node``'s value.

    One node, except through a gate-free chain it is always one; a value
    passed on by an identity skip keeps its origins.

    Args:
        graph: a graph that verifies against ``signature``.
        signature: the backbone's signature table.
        node: the node whose value is read.
        member: the index of the tensor in that value.

    Returns:
        The origin node ids.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> from mtgraph.ir.members import member_origins
        >>> class Skipper(nn.Module):  # stage a's output is read again after stages b and c
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b, self.c = (nn.Sequential(nn.Conv2d(k, 4, 1)) for k in (3, 4, 4))
        ...         self.d = nn.Sequential(nn.Conv2d(8, 4, 1))
        ...     def forward(self, x):
        ...         a = self.a(x)
        ...         return self.d(torch.cat([self.c(self.b(a)), a], 1))
        >>> table = mtgraph.trace(Skipper(), torch.zeros(1, 3, 4, 4)).signature
        >>> [(row.name, row.members, row.carried) for row in table]
        [('a.0', ('a.0',), (-1,)), ('b.0', ('a.0', 'b.0'), (0, -1)), ('c..cat', ('c..cat',), (-1,)), ('d.0', ('d.0',), (-1,))]
        >>> graph = mtgraph.one_net(4, ["seg"])
        >>> member_origins(graph, table, 2, 0), member_origins(graph, table, 2, 1)  # node 2 passes on node 1's 'a.0'
        (frozenset({1}), frozenset({2}))
    """
    memo: dict[tuple[int, int], frozenset[int]] = {}
    return _origins(graph, signature, node, member, memo)


def _origins(
    graph: MTGraph, signature: BackboneSignature, node: int, member: int, memo: dict[tuple[int, int], frozenset[int]]
) -> frozenset[int]:
    key = (node, member)
    if key in memo:
        return memo[key]
    # Follow the chain iteratively: an encoder-decoder's skip tensor can be carried across many levels.
    chain: list[tuple[int, int]] = []
    found: frozenset[int] | None = None
    current, index = node, member
    while True:
        if (current, index) in memo:
            found = memo[(current, index)]
            break
        chain.append((current, index))
        item = graph.nodes[current]
        if isinstance(item, Block):
            carried = signature.blocks[item.block].carried[index]
            if carried == COMPUTED:
                found = frozenset({current})
                break
            current, index = item.src, carried
        elif isinstance(item, Skip) and not signature.blocks[item.block].shortcut.has_weights:
            current = item.src  # the identity: the value passes on whole
        else:  # the input, a projection skip, a gate (it mixes): this node computed the value
            found = frozenset({current})
            break
    for step in chain:
        memo[step] = found
    return found


def long_edges(
    graph: MTGraph, signature: BackboneSignature, head_members: Mapping[str, int] | None = None
) -> tuple[LongEdge, ...]:
    """Every tensor a node reads that was computed before its own source: the graph's skip connections.

    Args:
        graph: a graph that verifies against ``signature``.
        signature: the backbone's signature table.
        head_members: task -> the one member its head reads (a
            :class:`~mtgraph.MemberHead`); other heads read every member.

    Returns:
        The edges, by consumer then member order; none for a backbone whose
        boundaries all carry one tensor.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> from mtgraph.ir.members import long_edges
        >>> class Skipper(nn.Module):  # stage a's output is read again after stages b and c
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b, self.c = (nn.Sequential(nn.Conv2d(k, 4, 1)) for k in (3, 4, 4))
        ...         self.d = nn.Sequential(nn.Conv2d(8, 4, 1))
        ...     def forward(self, x):
        ...         a = self.a(x)
        ...         return self.d(torch.cat([self.c(self.b(a)), a], 1))
        >>> table = mtgraph.trace(Skipper(), torch.zeros(1, 3, 4, 4)).signature
        >>> graph = mtgraph.from_groups(4, ["S", "D"], [[["S", "D"]]] * 2 + [[["S"], ["D"]]] * 2)
        >>> print(graph, end="")
        %0 = input                                  # S D
        %1 = block 0 w=b0.shared (%0)               # S D
        %2 = block 1 w=b1.shared (%1)               # S D
        %3 = block 2 w=b2.S (%2)                    # S
        %4 = block 2 w=b2.D (%2)                    # D
        %5 = block 3 w=b3.S (%3)                    # S
        %6 = block 3 w=b3.D (%4)                    # D
        S = head (%5)
        D = head (%6)
        >>> long_edges(graph, table)  # each task's block 2 reads 'a.0', computed by the shared block 0
        (LongEdge(origin=1, consumer=3, member='a.0'), LongEdge(origin=1, consumer=4, member='a.0'))
    """
    memo: dict[tuple[int, int], frozenset[int]] = {}
    levels = graph.levels
    edges: list[LongEdge] = []
    for i, node in enumerate(graph.nodes):
        if isinstance(node, Block):
            reads = [(node.src, j) for j in signature.blocks[node.block].consumed]
        elif isinstance(node, Gate):
            reads = [(s, j) for s in node.srcs for j in range(len(signature.level(levels[s])))]
        elif isinstance(node, Head):
            arity = len(signature.level(levels[node.src]))
            wanted = (head_members or {}).get(node.task)
            reads = [(node.src, j) for j in range(arity) if wanted is None or j == wanted]
        else:
            continue
        names = None
        for src, j in reads:
            for origin in sorted(_origins(graph, signature, src, j, memo)):
                if origin != src:
                    names = names or signature.level_members(levels[src])
                    edges.append(LongEdge(origin=origin, consumer=i, member=names[j]))
    return tuple(edges)
