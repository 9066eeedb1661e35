"""Allocating weight keys for new weights: a pass never reuses a name the graph or store holds."""

from __future__ import annotations

from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore

__all__ = ["KeyAllocator"]


class KeyAllocator:
    """Allocates new weight keys that clash with no key of the input graph or store (``b3.S``, then ``b3.S-2`` ...)."""

    def __init__(self, graph: MTGraph, params: ParamStore) -> None:
        self._taken = set(graph.weight_keys()) | set(params.keys())

    def new(self, base: str) -> str:
        """A key equal to ``base`` if free, else ``base-2``, ``base-3`` ..."""
        key, k = base, 2
        while key in self._taken:
            key = f"{base}-{k}"
            k += 1
        self._taken.add(key)
        return key
