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
from mtgraph.passes._infra import Pass, PassResult, make_result

__all__ = ["CSEPass"]


@dataclass(frozen=True)
class CSEPass(Pass):
    """Common-subexpression elimination: no two equal nodes, canonical node order."""

    name = "cse"

    def apply(self, graph: MTGraph, params: ParamStore) -> PassResult:
        """Merge duplicates, then canonicalize."""
        return make_result(graph, params, canonicalize(merge_duplicates(graph)))
