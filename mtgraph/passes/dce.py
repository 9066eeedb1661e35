"""``dce``: remove every node that reaches no head and every weight key the graph does not use.

Unlike the other passes, which drop only the keys they themselves made
unused, dce restricts the store to exactly the graph's keys (block, skip and
gate keys, and each task's head): ``ParamStore.restricted``. The dropped keys
are listed in the lineage.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtgraph.ir.canonical import remove_dead
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore
from mtgraph.passes._infra import Lineage, Pass, PassResult

__all__ = ["DCEPass"]


@dataclass(frozen=True)
class DCEPass(Pass):
    """Dead-code elimination: drop unreachable nodes and unused weights."""

    name = "dce"

    def apply(self, graph: MTGraph, params: ParamStore) -> PassResult:
        """Remove dead nodes, then every key the remaining graph does not use."""
        new_graph = remove_dead(graph)
        new_params = params.restricted(new_graph)
        dropped = tuple(k for k in params.keys() if k not in new_params)
        if not dropped:
            new_params = params
        changed = new_graph != graph or bool(dropped)
        return PassResult(graph=new_graph, params=new_params, lineage=Lineage(dropped=dropped), changed=changed)
