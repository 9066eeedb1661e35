"""Measuring a traced graph for the block signature table: shapes, MACs and in-place writes.

:func:`~mtgraph.frontend.trace` needs, for every block, the shapes of the
tensors at its boundaries, its MACs per image and which of its input tensors
it writes in place (such a block gets a copy of its input, see
:func:`~mtgraph.frontend.partition.guard_input`). Measuring block by block
(extract a block, run it on a copy of its input under the MAC counter, pass
its output on) runs the network once more per block's
worth of arithmetic, and counting is slow. :class:`GraphRun` measures the
whole graph in one run instead, node by node, before any block exists:

* on "meta" tensors (:func:`run_graph` with ``meta=True``): a tensor with a
  shape and a dtype but no data, so the run does no arithmetic. A network
  that needs real values (a branch on a tensor's value in a leaf module, an
  operator without a meta kernel, a tensor created on the CPU inside the
  forward) fails on meta tensors and is run for real instead;
* MACs are attributed to nodes from one counter spanning the run (its total
  before and after each node), so a block's MACs are the sum over its nodes:
  what counting the block alone gives, since the block runs the same
  operators on the same shapes;
* an in-place write is recorded on the node that made it (the version
  counter of one of its input tensors moved), so a block writes into its
  input exactly when one of its nodes wrote into a tensor sharing that
  input's version counter (the tensor itself or a view of it), which is
  what running the block on a copy of its input shows.

Examples:
    >>> import torch, torch.fx as fx
    >>> from torch import nn
    >>> from mtgraph.frontend.measure import run_graph
    >>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True)))
    >>> output, run = run_graph(gm, torch.zeros(1, 3, 8, 8), meta=True, count=True)
    >>> output.is_meta, [(n.name, run.flops[n] // 2) for n in gm.graph.nodes if n.op == "call_module"]
    (True, [('_0', 3888), ('_1', 0)])
    >>> conv = next(n for n in gm.graph.nodes if n.name == "_0")
    >>> conv.meta["mtgraph_shape"], [n.name for n in run.writes]  # the in-place ReLU wrote the conv's output
    ((4, 6, 6), ['_1'])
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mtgraph.analysis.macs import mac_counter, no_fused_attention

__all__ = ["GraphRun", "MetaCall", "run_graph", "same_version_counter", "AmbiguousWrite", "dtype_name"]


def dtype_name(dtype: torch.dtype) -> str:
    """The name of a torch dtype as the signature table writes it (``torch.float32`` -> ``"float32"``).

    Examples:
        >>> import torch
        >>> from mtgraph.frontend.measure import dtype_name
        >>> dtype_name(torch.float16)
        'float16'
    """
    return str(dtype).removeprefix("torch.")


def _tensors(value: object) -> tuple[torch.Tensor, ...]:
    """The tensors a node's value holds: itself, or the tensors of a flat tuple or list."""
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, (tuple, list)):
        return tuple(v for v in value if isinstance(v, torch.Tensor))
    return ()


class AmbiguousWrite(Exception):
    """A block writes in place into one of several input tensors that share storage (views of one another).

    Measured block by block, each input tensor is copied on its own, so the
    write changes only the one it went through; one run of the whole graph
    cannot tell which that was. :func:`~mtgraph.frontend.trace` then measures
    block by block.

    Examples:
        >>> from mtgraph.frontend.measure import AmbiguousWrite
        >>> issubclass(AmbiguousWrite, Exception)
        True
    """


def same_version_counter(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether an in-place write into ``a`` shows in ``b``'s version: one tensor, its views, or its detached copies.

    Tested by moving ``a``'s version counter (which changes no data), so
    call it only on tensors that nothing else watches the version of.

    Examples:
        >>> import torch
        >>> from mtgraph.frontend.measure import same_version_counter
        >>> x = torch.zeros(4)
        >>> same_version_counter(x, x[:2]), same_version_counter(x, x.detach()), same_version_counter(x, x.clone())
        (True, True, False)
    """
    if a is b:
        return True
    version = b._version
    torch.autograd.graph.increment_version(a)
    return b._version != version


#: Leaf modules whose call, for one configuration and one input signature (shape, strides, dtype), always gives a
#: fresh tensor of one shape, strides and dtype, or gives back its input written in place. On meta tensors their
#: kernels are Python decompositions costing about a millisecond a call (BatchNorm), most of a meta run: a
#: :class:`GraphRun` runs each signature once and makes the result of a repeat without running it.
_REPEATABLE = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
)


@dataclass(frozen=True)
class _InPlace:
    """A repeatable module's call gave back its input, its version moved ``steps`` times."""

    steps: int


@dataclass(frozen=True)
class _Fresh:
    """A repeatable module's call gave a new tensor of this shape, strides and dtype."""

    shape: torch.Size
    stride: tuple[int, ...]
    dtype: torch.dtype


def _repeat_key(module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> tuple[object, ...] | None:
    """What a repeatable module's meta call depends on, or None when the call may not be repeated without running it."""
    if type(module) not in _REPEATABLE or kwargs or len(args) != 1 or module._forward_hooks or module._forward_pre_hooks:
        return None
    x = args[0]
    if not isinstance(x, torch.Tensor) or not x.is_meta:
        return None
    tensors = tuple((name, t.shape, t.dtype) for name, t in itertools.chain(
        module.named_parameters(recurse=False), module.named_buffers(recurse=False)))
    return type(module), module.extra_repr(), module.training, tensors, x.shape, x.stride(), x.dtype


class GraphRun(fx.Interpreter):
    """One run of a traced graph recording, node by node, what the block signature table needs.

    * every node computing a tensor gets ``mtgraph_shape`` (its shape without
      the batch dimension) and ``mtgraph_dtype`` in its ``meta``, when
      ``shapes`` is true;
    * with a ``counter`` (one :func:`~mtgraph.analysis.macs.mac_counter`
      entered around the whole run), ``flops[node]`` is what the counter
      counted while the node ran, and ``writes[node]`` the tensors among the
      node's inputs whose version counter the node moved (it wrote into them
      in place); ``values[node]`` and ``versions[node]`` are each tensor
      node's value and its version when it was computed;
    * ``meta``: whether the run is on meta tensors (set by :func:`run_graph`).
      On meta tensors a normalisation or activation module (``_REPEATABLE``)
      met again with the same configuration and input signature is not run:
      its result is made as the first call's was (a fresh meta tensor of its
      shape, strides and dtype, or the input with its version moved as the
      call moved it). The first call did every check the kernel does, so a
      repeat would pass them too; a call that counted MACs is always run.

    Examples:
        >>> import torch, torch.fx as fx
        >>> from torch import nn
        >>> from mtgraph.frontend.measure import GraphRun
        >>> gm = fx.symbolic_trace(nn.Linear(8, 4))
        >>> run = GraphRun(gm, counter=None, shapes=True)
        >>> tuple(run.run(torch.zeros(2, 8)).shape)
        (2, 4)
        >>> [(n.name, n.meta["mtgraph_shape"]) for n in gm.graph.nodes if n.op in ("placeholder", "call_function")]
        [('input_1', (8,)), ('linear', (4,))]
    """

    def __init__(self, gm: fx.GraphModule, counter: FlopCounterMode | None, shapes: bool) -> None:
        super().__init__(gm)
        self.counter = counter
        self.shapes = shapes
        self.meta = False
        self._repeats: dict[tuple[object, ...], _InPlace | _Fresh | None] = {}
        self.flops: dict[fx.Node, int] = {}
        self.writes: dict[fx.Node, tuple[torch.Tensor, ...]] = {}
        self.values: dict[fx.Node, torch.Tensor] = {}
        self.versions: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        if self.counter is None:
            value = super().run_node(n)
        else:
            inputs = [t for node in n.all_input_nodes for t in _tensors(self.env.get(node))]
            versions = [t._version for t in inputs]
            before = self.counter.get_total_flops()
            value = super().run_node(n)
            self.flops[n] = self.counter.get_total_flops() - before
            written = tuple(t for t, version in zip(inputs, versions) if t._version != version)
            if written:
                self.writes[n] = written
        if isinstance(value, torch.Tensor):
            if self.shapes:
                n.meta["mtgraph_shape"] = tuple(value.shape[1:])
                n.meta["mtgraph_dtype"] = dtype_name(value.dtype)
            if self.counter is not None:
                self.values[n] = value
                self.versions[n] = value._version
        return value

    def call_module(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = _repeat_key(self.fetch_attr(target), args, kwargs) if self.meta else None
        if key is None:
            return super().call_module(target, args, kwargs)
        if key in self._repeats:
            recorded = self._repeats[key]
            return super().call_module(target, args, kwargs) if recorded is None else _repeat(recorded, args[0])
        x = args[0]
        version = x._version
        before = self.counter.get_total_flops() if self.counter is not None else 0
        value = super().call_module(target, args, kwargs)
        counted = self.counter is not None and self.counter.get_total_flops() != before
        self._repeats[key] = None if counted else _recorded(value, x, version)
        return value

    def macs(self, members: Sequence[fx.Node]) -> int:
        """MACs of a block made of ``members``: its nodes' FLOPs, halved (as counting the block alone halves them)."""
        return sum(self.flops.get(n, 0) for n in members) // 2

    def written_inputs(self, inputs: Sequence[fx.Node], members: Sequence[fx.Node]) -> list[int]:
        """Indices of the ``inputs`` (a block's input tensors) that the block made of ``members`` writes in place.

        Raises:
            AmbiguousWrite: the block writes into an input that shares storage with another of its inputs.
        """
        # Only an input whose version moved after it was computed can have been written (by any block).
        moved = [k for k, node in enumerate(inputs) if self.values[node]._version != self.versions[node]]
        if not moved:
            return []
        targets = [t for n in members for t in self.writes.get(n, ())]
        if not targets:
            return []
        written = [k for k in moved if any(same_version_counter(self.values[inputs[k]], t) for t in targets)]
        if written and any(
            same_version_counter(self.values[a], self.values[b]) for a, b in itertools.combinations(inputs, 2)
        ):
            raise AmbiguousWrite(f"block inputs {[n.name for n in inputs]} share storage and one is written in place")
        return written


def _recorded(value: object, x: torch.Tensor, version: int) -> _InPlace | _Fresh | None:
    """How to make ``value`` again from ``x`` (whose version was ``version`` before the call); None if it cannot be."""
    if value is x:
        return _InPlace(x._version - version)
    if isinstance(value, torch.Tensor) and value._base is None and x._version == version:
        return _Fresh(value.shape, value.stride(), value.dtype)
    return None


def _repeat(recorded: _InPlace | _Fresh, x: torch.Tensor) -> torch.Tensor:
    if isinstance(recorded, _InPlace):
        for _ in range(recorded.steps):
            torch.autograd.graph.increment_version(x)
        return x
    return torch.empty_strided(recorded.shape, recorded.stride, dtype=recorded.dtype, device="meta")


class MetaCall(nn.Module):
    """Calls ``module`` with "meta" copies of its parameters and buffers.

    On the meta device a tensor has a shape and a dtype but no data, so
    running a network on it costs no arithmetic; ``module``'s own tensors are
    only swapped for the call (``torch.func.functional_call``), never changed.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from mtgraph.frontend.measure import MetaCall
        >>> out = MetaCall(nn.Conv2d(3, 4, 3))(torch.zeros(1, 3, 8, 8, device="meta"))
        >>> out.is_meta, tuple(out.shape)
        (True, (1, 4, 6, 6))
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = module

    def forward(self, *inputs: object) -> object:
        # Each tensor once: functional_call ties the other names of a shared tensor to the same meta copy.
        tensors = [*self.inner.named_parameters(), *self.inner.named_buffers()]
        return torch.func.functional_call(self.inner, {name: t.to("meta") for name, t in tensors}, inputs)


class _Interpret(nn.Module):
    """A :class:`GraphRun` as a module call (so that :class:`MetaCall` can swap the graph's tensors)."""

    def __init__(self, run: GraphRun) -> None:
        super().__init__()
        self.gm = run.module
        self.run = run

    def forward(self, x: torch.Tensor) -> object:
        return self.run.run(x)


def run_graph(gm: fx.GraphModule, x: torch.Tensor, *, meta: bool, count: bool, shapes: bool = True) -> tuple[object, GraphRun]:
    """Run ``gm`` on ``x`` as a :class:`GraphRun`; return its output and the run.

    ``meta``: on meta copies of ``x`` and of the graph's tensors (no
    arithmetic), else on a copy of ``x`` (a backbone writing into its input
    must not change the caller's tensor). ``count``: under the MAC counter,
    recording MACs and in-place writes per node. ``shapes``: record each
    tensor node's shape and dtype. Call it without gradients and with the
    model in eval mode (:func:`~mtgraph.analysis.macs.evaluation_mode`).

    Examples:
        >>> import torch, torch.fx as fx
        >>> from torch import nn
        >>> from mtgraph.frontend.measure import run_graph
        >>> gm = fx.symbolic_trace(nn.Linear(8, 4))
        >>> output, run = run_graph(gm, torch.zeros(1, 8), meta=False, count=True)
        >>> output.is_meta, run.macs(list(gm.graph.nodes))
        (False, 32)
    """
    counter = mac_counter() if count else None
    graph_run = GraphRun(gm, counter, shapes)
    graph_run.meta = meta
    with no_fused_attention():
        if counter is None:
            return _call(graph_run, x, meta), graph_run
        with counter:
            return _call(graph_run, x, meta), graph_run


def _call(graph_run: GraphRun, x: torch.Tensor, meta: bool) -> object:
    if meta:
        return MetaCall(_Interpret(graph_run))(x.to("meta"))
    return graph_run.run(x.clone())
