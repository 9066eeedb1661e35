"""The :class:`ParamStore`: weight key -> module, made from a traced backbone and task heads."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from mtgraph.analysis.macs import evaluation_mode
from mtgraph.errors import HeadError
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Gate, Skip, head_weights

__all__ = ["ParamStore", "check_heads"]


def _first_layer_width(head: nn.Module) -> str:
    for module in head.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return f"{module.in_channels} input channels"
        if isinstance(module, nn.Linear):
            return f"{module.in_features} input features"
    return "a different input"


def check_heads(heads: Mapping[str, nn.Module], backbone: Backbone, tasks: tuple[str, ...] | None = None) -> None:
    """Check that ``heads`` has a module per task and each accepts the backbone's output.

    Raises HeadError naming the task and both shapes, or naming a head that
    writes into its input while other heads read the same value.
    """
    if not isinstance(heads, Mapping):
        raise HeadError(f"heads must be a mapping task name -> nn.Module, got {type(heads).__name__}")
    if tasks is not None:
        missing = [t for t in tasks if t not in heads]
        if missing:
            raise HeadError(f"no head given for tasks {missing}; heads were given for {list(heads)}")
    checked = [t for t in heads if tasks is None or t in tasks]
    for task in checked:
        head = heads[task]
        if not isinstance(head, nn.Module):
            raise HeadError(f"the head of task {task!r} must be an nn.Module, got {type(head).__name__}")
        probe = torch.zeros((1, *backbone.output_shape), dtype=backbone.input_dtype)
        version = probe._version
        with evaluation_mode(head):
            try:
                head(probe)
            except Exception as exc:
                raise HeadError(
                    f"the head of task {task!r} does not fit the backbone: the backbone outputs "
                    f"[N, {', '.join(map(str, backbone.output_shape))}] but the head expects "
                    f"{_first_layer_width(head)} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                ) from exc
        if probe._version != version and len(checked) > 1:
            # All heads read the same backbone output in a shared network: one writing into it changes the others'.
            raise HeadError(
                f"the head of task {task!r} modifies its input in place (for example nn.ReLU(inplace=True) as its "
                "first layer); several heads read the same backbone output, so make that first operation "
                "out of place (inplace=False)"
            )


class ParamStore:
    """Modules keyed by weight key, plus the Backbone they were copied from.

    A ParamStore is used as a value: passes return a new store (via
    :meth:`updated`) that shares the unchanged modules with the old one.
    Modules are never the user's own: blocks and heads are copied in.
    """

    def __init__(self, backbone: Backbone, modules: Mapping[str, nn.Module]) -> None:
        self.backbone = backbone
        self._modules: dict[str, nn.Module] = dict(modules)

    @classmethod
    def create(
        cls,
        graph: MTGraph,
        backbone: Backbone,
        heads: Mapping[str, nn.Module],
        gates: Mapping[str, nn.Module] | None = None,
    ) -> ParamStore:
        """Fresh modules for every key of ``graph``: block copies, head copies and the given gates.

        Block instances whose keys share a suffix (``b1.S``, ``b3.S``) are
        copied together, so weights tied across blocks of the backbone stay
        tied inside each copy.
        """
        check_heads(heads, backbone, graph.tasks)
        modules: dict[str, nn.Module] = {}
        memos: dict[str, dict[int, object]] = {}
        gates = dict(gates or {})
        for node in graph.nodes:
            key = getattr(node, "weights", None)
            if key is None or key in modules:
                continue
            if isinstance(node, (Block, Skip)):
                memo = memos.setdefault(key.partition(".")[2], {})
                modules[key] = copy.deepcopy(backbone.blocks[node.block].module, memo)
            elif isinstance(node, Gate):
                if key not in gates:
                    raise HeadError(f"gate weights {key!r} of task {node.task!r} were not given")
                modules[key] = gates[key]
        for task in graph.tasks:
            modules[head_weights(task)] = copy.deepcopy(heads[task])
        return cls(backbone, modules)

    def __getitem__(self, key: str) -> nn.Module:
        try:
            return self._modules[key]
        except KeyError:
            raise KeyError(f"weight key {key!r} is not in the ParamStore; keys: {sorted(self._modules)}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def keys(self) -> list[str]:
        """The weight keys, in insertion order."""
        return list(self._modules)

    def items(self) -> list[tuple[str, nn.Module]]:
        """(key, module) pairs, in insertion order."""
        return list(self._modules.items())

    def updated(self, add: Mapping[str, nn.Module] | None = None, drop: tuple[str, ...] | list[str] = ()) -> ParamStore:
        """A new store with ``add`` inserted (replacing same keys) and ``drop`` removed."""
        modules = {k: m for k, m in self._modules.items() if k not in set(drop)}
        modules.update(add or {})
        return ParamStore(self.backbone, modules)

    def restricted(self, graph: MTGraph) -> ParamStore:
        """A new store with only the keys ``graph`` uses (what ``dce`` keeps)."""
        used = set(graph.weight_keys()) | {head_weights(t) for t in graph.tasks}
        return ParamStore(self.backbone, {k: m for k, m in self._modules.items() if k in used})

    def __repr__(self) -> str:
        return f"ParamStore({len(self)} keys: {', '.join(self._modules)})"
