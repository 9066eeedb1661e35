"""``cse``: merge structurally equal nodes and put the graph in canonical order.

Two nodes are equal when they have the same kind, fields and (merged)
sources: the same block with the same weights applied to the same value.
After cse, tasks whose nodes are identical share that computation, and the
printed text is in canonical order. No weights change, so no key is added or
dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtgraph.ir.canonical import canonicalize, merge_duplicates
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore
from mtgraph.passes.base import Pass
from mtgraph.passes.result import PassResult, make_result

__all__ = ["CSEPass"]


@dataclass(frozen=True)
class CSEPass(Pass):
    """Common-subexpression elimination: no two equal nodes, canonical node order.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> from mtgraph.ir import Block, Head, Input
        >>> graph = mtgraph.MTGraph((Input(), Block(0, "b0.shared", 0), Block(0, "b0.shared", 0),  # twice
        ...                          Block(1, "b1.S", 1), Block(1, "b1.D", 2), Head("S", 3), Head("D", 4)))
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> from mtgraph.passes import CSEPass
        >>> print(CSEPass()(graph, params).graph)
        %0 = input                                  # S D
        %1 = block 0 w=b0.shared (%0)               # S D
        %2 = block 1 w=b1.S (%1)                    # S
        %3 = block 1 w=b1.D (%1)                    # D
        S = head (%2)
        D = head (%3)
    """

    name = "cse"

    def apply(self, graph: MTGraph, params: ParamStore) -> PassResult:
        """Merge duplicates, then canonicalize."""
        return make_result(graph, params, canonicalize(merge_duplicates(graph)))
