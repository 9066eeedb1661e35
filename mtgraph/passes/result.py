"""What a pass returns (:class:`PassResult`), and the helpers that assemble one.

A pass never mutates its inputs: the new store shares every unchanged module
with the old one (:meth:`~mtgraph.ParamStore.updated`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore
from mtgraph.passes.lineage import Lineage, LineageEntry

__all__ = ["PassResult", "make_result", "unchanged"]


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the new graph and store, the lineage of new weights, and whether anything changed.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.stn(2, ("S", "D"))
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> from mtgraph.passes import FusePass
        >>> result = FusePass(("S", "D"), block=0)(graph, params)
        >>> result.changed, result.params.keys()
        (True, ['b1.S', 'b1.D', 'head.S', 'head.D', 'b0.shared'])
        >>> print(result.lineage)
        b0.shared <- average(b0.S, b0.D)
        b0.S <- dropped
        b0.D <- dropped
    """

    graph: MTGraph
    params: ParamStore
    lineage: Lineage
    changed: bool


def make_result(
    old_graph: MTGraph,
    old_params: ParamStore,
    new_graph: MTGraph,
    added: Mapping[str, nn.Module] | None = None,
    entries: Sequence[LineageEntry] = (),
) -> PassResult:
    """Assemble a PassResult: add the new modules, drop keys the rewrite made unused, record the lineage.

    Only keys the old graph used and the new graph does not are dropped
    (unused keys the caller already had are ``dce``'s business). New
    modules the new graph does not use are discarded.
    """
    new_used = set(new_graph.weight_keys())
    old_used = set(old_graph.weight_keys())
    drop = tuple(k for k in old_params.keys() if k in old_used and k not in new_used)
    kept_entries = tuple(e for e in entries if e.new_key in new_used)
    modules = dict(added or {})
    add = {e.new_key: modules[e.new_key] for e in kept_entries}
    params = old_params.updated(add=add, drop=drop) if (add or drop) else old_params
    changed = new_graph != old_graph or bool(drop) or bool(add)
    return PassResult(graph=new_graph, params=params, lineage=Lineage(entries=kept_entries, dropped=drop), changed=changed)


def unchanged(graph: MTGraph, params: ParamStore) -> PassResult:
    """The result of a pass that had nothing to do."""
    return PassResult(graph=graph, params=params, lineage=Lineage(), changed=False)
