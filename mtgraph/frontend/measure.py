"""Measuring a traced graph for the block signature table: shapes, MACs and in-place writes.

:func:`~mtgraph.frontend.trace` needs, for every block, the shapes of the
tensors at its boundaries, its MACs per image and which of its input tensors
it writes in place (such a block gets a copy of its input, see
:func:`~mtgraph.frontend.partition.guard_input`). Measuring block by block
(extract a block, run it on a copy of its input under the MAC counter, pass
its output on) does all of the network's arithmetic once more, under a
counter that slows every operator down. :class:`GraphRun` measures the whole
graph in one run instead, node by node, before any block exists:

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
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
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


#: Leaf modules, functions and tensor methods whose call, for one configuration and one signature of its
#: arguments (shapes, strides, dtypes of the tensors; the other arguments' values), always gives a fresh tensor
#: of one shape, strides and dtype, or gives back its first argument written in place. On meta tensors their
#: kernels are Python decompositions costing up to a millisecond a call (BatchNorm), most of a meta run: a
#: :class:`GraphRun` runs each signature once and makes the result of a repeat without running it.
_REPEATABLE_MODULES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
)
_REPEATABLE_FUNCTIONS = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    torch.add, torch.sub, torch.mul, torch.relu, torch.relu_, torch.sigmoid, torch.tanh,
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh,
})
_REPEATABLE_METHODS = frozenset({
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
})


@dataclass(frozen=True)
class _InPlace:
    """A repeatable call gave back its first argument, its version moved ``steps`` times."""

    steps: int


@dataclass(frozen=True)
class _Fresh:
    """A repeatable call gave a new tensor of this shape, strides and dtype."""

    shape: torch.Size
    stride: tuple[int, ...]
    dtype: torch.dtype


def _argument_key(value: object) -> tuple[object, ...] | None:
    """What a call depends on of one argument: a meta tensor's signature, a plain value itself; None for others."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.shape, value.stride(), value.dtype) if value.is_meta else None
    if value is None or isinstance(value, (bool, int, float, str)):
        return (type(value), value)
    return None


def _call_key(head: tuple[object, ...], args: tuple[object, ...], kwargs: dict[str, object]) -> tuple[object, ...] | None:
    """``head`` and every argument's key, or None if an argument has none (or the first is not a meta tensor)."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    keys = [_argument_key(a) for a in args] + [_argument_key(v) for v in kwargs.values()]
    if any(k is None for k in keys):
        return None
    return (*head, tuple(keys), tuple(kwargs))


def _module_head(module: nn.Module) -> tuple[object, ...] | None:
    """What a repeatable module's call depends on besides its arguments; None for a module whose calls are not repeated."""
    if type(module) not in _REPEATABLE_MODULES or module._forward_hooks or module._forward_pre_hooks:
        return None
    tensors = tuple((name, t.shape, t.dtype) for name, t in itertools.chain(
        module.named_parameters(recurse=False), module.named_buffers(recurse=False)))
    return type(module), module.extra_repr(), module.training, tensors


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
      On meta tensors a normalisation or activation module, or an elementwise
      function or method (``_REPEATABLE_*``), met again with the same
      configuration and argument signature is not run: its result is made as
      the first call's was (a fresh meta tensor of its shape, strides and
      dtype, or the first argument with its version moved as the call moved
      it). The first call did every check the kernel does, so a repeat would
      pass them too; a call that counted MACs, or made a view, is always run.

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
        head = _module_head(self.fetch_attr(target)) if self.meta else None
        key = _call_key(head, args, kwargs) if head is not None else None
        return self._repeated(key, args, lambda: fx.Interpreter.call_module(self, target, args, kwargs))

    def call_function(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        repeatable = self.meta and target in _REPEATABLE_FUNCTIONS
        key = _call_key(("function", target), args, kwargs) if repeatable else None
        return self._repeated(key, args, lambda: fx.Interpreter.call_function(self, target, args, kwargs))

    def call_method(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        repeatable = self.meta and target in _REPEATABLE_METHODS
        key = _call_key(("method", target), args, kwargs) if repeatable else None
        return self._repeated(key, args, lambda: fx.Interpreter.call_method(self, target, args, kwargs))

    def _repeated(self, key: tuple[object, ...] | None, args: tuple[Any, ...], call: Callable[[], Any]) -> Any:
        """``call()``, or its result made again if a call with ``key`` was run before (see the class docstring)."""
        if key is None:
            return call()
        if key in self._repeats:
            recorded = self._repeats[key]
            return call() if recorded is None else _repeat(recorded, args[0])
        first: torch.Tensor = args[0]
        others = [a for a in args[1:] if isinstance(a, torch.Tensor) and a is not first]
        version, versions = first._version, [t._version for t in others]
        before = self.counter.get_total_flops() if self.counter is not None else 0
        value = call()
        counted = self.counter is not None and self.counter.get_total_flops() != before
        others_moved = any(t._version != v for t, v in zip(others, versions))
        self._repeats[key] = None if counted or others_moved else _recorded(value, first, first._version - version)
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


def _recorded(value: object, first: torch.Tensor, steps: int) -> _InPlace | _Fresh | None:
    """How to make ``value`` again from the call's first argument, whose version the call moved ``steps`` times.

    None if it cannot be: a view, or a new tensor made while writing into the first argument.
    """
    if value is first:
        return _InPlace(steps)
    if steps == 0 and isinstance(value, torch.Tensor) and value._base is None:
        return _Fresh(value.shape, value.stride(), value.dtype)
    return None


def _repeat(recorded: _InPlace | _Fresh, x: torch.Tensor) -> torch.Tensor:
    """The result ``recorded`` describes, for the call whose first argument is ``x``."""
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
