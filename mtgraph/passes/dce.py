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
from mtgraph.passes.base import Pass
from mtgraph.passes.lineage import Lineage
from mtgraph.passes.result import PassResult

__all__ = ["DCEPass"]


@dataclass(frozen=True)
class DCEPass(Pass):
    """Dead-code elimination: drop unreachable nodes and unused weights.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ("S", "D"))
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> params = params.updated(add={"b1.old": nn.Identity()})  # a key the graph does not use
        >>> from mtgraph.passes import DCEPass
        >>> result = DCEPass()(graph, params)
        >>> result.lineage.dropped, "b1.old" in result.params, result.graph == graph
        (('b1.old',), False, True)
    """

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
