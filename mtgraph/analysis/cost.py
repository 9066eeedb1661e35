"""Honest cost accounting of an MTGraph: GMac and parameters, total, per node, per task.

Conventions (those of the papers' tables):

* MACs per image (batch of one), counted by
  :func:`mtgraph.analysis.macs.count_macs` (FlopCounterMode / 2: convolution,
  linear, matmul/bmm, attention), once per IR node: a node shared by several
  tasks counts once.
* Parameters deduplicated by tensor identity: a weight key called from
  several sites, or a tensor tied across keys, counts once.
* Per task: everything on the task's path (shared nodes included).
  Shared = nodes serving more than one task; task-specific = nodes serving
  one (the ``specific_*`` fields).

The cost is an interpreter over the IR: it walks the nodes in order, carrying
each value's signature (shapes and dtypes, a
:class:`~mtgraph.ir.TensorSignature` tuple) instead of a tensor (or, for a
module it had to run, that module's batch-of-one output, whatever its form),
and reads each node's MACs from the block signature table
(``params.signature``):

* a Block whose module is a copy of the traced block (same parameter and
  buffer names and shapes, :attr:`~mtgraph.ir.BlockSignature.state`) reading
  the value the table expects costs the table's MACs and produces the table's
  output; it is not run;
* a Skip costs nothing (identity) or its projection shortcut's MACs, also
  from the table;
* heads and gates are not in the table: each module is run once per input
  signature, on a batch of one zeros in eval mode, under the MAC counter
  (:func:`~mtgraph.analysis.macs.run_counted`);
* a module that is not a copy of its traced block (a narrower network's
  block, say), or a block reading a value of another shape, is measured the
  same way.

Nothing is paired with compile's output, and nothing is changed. The result
equals ``FlopCounterMode`` total / 2 of the compiled module on a batch of one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from mtgraph.analysis.macs import evaluation_mode, run_counted
from mtgraph.compile import check_compilable, shortcut_branch
from mtgraph.errors import CompileError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Gate, Head, Input, Skip
from mtgraph.ir.signature import BlockSignature, TensorSignature
from mtgraph.ir.text import format_node
from mtgraph.params import ParamStore

__all__ = ["NodeCost", "TaskCost", "CostReport", "cost", "format_macs", "format_params", "scaled_column"]


#: MAC units from the largest down: the first one in which a value is at least 1 is used.
MAC_UNITS = (("GMac", 10**9), ("MMac", 10**6), ("KMac", 10**3), ("Mac", 1))
#: Parameter-count units, likewise.
COUNT_UNITS = (("M", 10**6), ("k", 10**3), ("", 1))


def _significant(value: float) -> str:
    """``value`` with 3 significant digits and no exponent (``0.000123``, ``12.3``, ``123``)."""
    if value == 0:
        return "0"
    text = f"{value:.3g}"
    if "e" in text:  # tiny or huge: write it out instead of an exponent a table reader may miss
        text = f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"
    return text


def format_macs(macs: int) -> str:
    """MACs per image in the unit that shows 3 significant digits (GMac, MMac, KMac or Mac).

    Examples:
        >>> from mtgraph.analysis.cost import format_macs
        >>> format_macs(4320), format_macs(1_820_000_000), format_macs(12)
        ('4.32 KMac', '1.82 GMac', '12 Mac')
    """
    for unit, size in MAC_UNITS:
        if abs(macs) >= size:
            return f"{_significant(macs / size)} {unit}"
    return f"{macs} Mac"


def format_params(count: int) -> str:
    """A parameter count in the unit that shows 3 significant digits (M, k or none).

    Examples:
        >>> from mtgraph.analysis.cost import format_params
        >>> format_params(11_689_512), format_params(127)
        ('11.7 M params', '127 params')
    """
    for unit, size in COUNT_UNITS:
        if abs(count) >= size and size > 1:
            return f"{_significant(count / size)} {unit} params"
    return f"{count} params"


def scaled_column(values: Sequence[int], units: Sequence[tuple[str, int]] = MAC_UNITS) -> tuple[str, list[str]]:
    """One unit for a whole table column (the largest the column's maximum reaches) and the cells in it.

    Cells keep 3 significant digits, so a value far below the column's
    largest is still written (``0.00432``), never rounded to ``0.0000``.

    Args:
        values: the column's numbers (MACs or counts).
        units: (name, size) from the largest: :data:`MAC_UNITS` or :data:`COUNT_UNITS`.

    Returns:
        ``(unit name, cells)``.

    Examples:
        >>> from mtgraph.analysis.cost import COUNT_UNITS, scaled_column
        >>> scaled_column([4320, 288, 0])
        ('KMac', ['4.32', '0.288', '0'])
        >>> scaled_column([11_689_512, 9_536], COUNT_UNITS)
        ('M', ['11.7', '0.00954'])
    """
    largest = max((abs(v) for v in values), default=0)
    unit, size = next(((u, s) for u, s in units if largest >= s), units[-1])
    return unit, [_significant(v / size) for v in values]



@dataclass(frozen=True)
class NodeCost:
    """Cost of one IR node: its MACs per image, its own parameters, the tasks it serves, its output shape.

    ``shape`` is the shape of the node's output when it is one tensor (``()``
    otherwise); ``shapes`` holds the shape of every tensor of a value the
    interpreter knows the signature of (one entry per member of a
    multi-tensor value, such as an encoder-decoder level's skip features).

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ["seg"])
        >>> report = mtgraph.cost(graph, mtgraph.ParamStore.create(graph, backbone, {"seg": nn.Conv2d(4, 2, 1)}))
        >>> report.nodes[1]
        NodeCost(node=1, text='%1 = block 0 w=b0.seg (%0)', tasks=('seg',), macs=3888, params=112, shape=(4, 6, 6), shapes=((4, 6, 6),))
    """

    node: int
    text: str
    tasks: tuple[str, ...]
    macs: int
    params: int
    shape: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class TaskCost:
    """Cost of one task's whole path, and how much of it is shared with other tasks.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ["seg", "depth"])
        >>> heads = {"seg": nn.Conv2d(4, 2, 1), "depth": nn.Conv2d(4, 1, 1)}
        >>> mtgraph.cost(graph, mtgraph.ParamStore.create(graph, backbone, heads)).tasks["seg"]
        TaskCost(macs=4176, params=122, shared_macs=3888, specific_macs=288)
    """

    macs: int
    params: int
    shared_macs: int
    specific_macs: int


@dataclass(frozen=True)
class CostReport:
    """The cost of a compiled multi-task network (see module docstring for conventions).

    ``str(report)`` is a table per task, each column in the unit that fits it
    (GMac, MMac, KMac; M or k parameters), headed by the input size the
    numbers are for.

    Attributes:
        total_macs: MACs per image of the whole network, shared nodes once.
        total_params: parameters, each tensor counted once.
        shared_macs: MACs of nodes serving more than one task.
        specific_macs: MACs of nodes serving one task.
        shared_params: parameters of nodes serving more than one task.
        specific_params: parameters used only by single-task nodes.
        nodes: the cost of every node, in node order.
        tasks: task -> the cost of its path.
        input_shape: the shape of one input image (no batch dimension) the
            MACs are counted for.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ["seg", "depth"])
        >>> heads = {"seg": nn.Conv2d(4, 2, 1), "depth": nn.Conv2d(4, 1, 1)}
        >>> report = mtgraph.cost(graph, mtgraph.ParamStore.create(graph, backbone, heads))
        >>> report.total_macs, report.shared_macs, report.specific_macs, report.total_params
        (4320, 3888, 432, 127)
        >>> sorted(report.to_dict())[:4]
        ['gmac', 'input_shape', 'nodes', 'shared_macs']
        >>> print(report)
        cost per image of input [3, 8, 8] (batch of one); shared = in nodes serving several tasks
        task   KMac  params  shared KMac  task-specific KMac
        seg    4.18     122         3.89               0.288
        depth  4.03     117         3.89               0.144
        total  4.32     127         3.89               0.432
    """

    total_macs: int
    total_params: int
    shared_macs: int
    specific_macs: int
    shared_params: int
    specific_params: int
    nodes: tuple[NodeCost, ...]
    tasks: dict[str, TaskCost]
    input_shape: tuple[int, ...] = ()

    @property
    def gmac(self) -> float:
        """Total GMac per image."""
        return self.total_macs / 1e9

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every number in the report."""
        data = asdict(self)
        data["gmac"] = self.gmac
        return data

    def __str__(self) -> str:
        rows = [*self.tasks.items()]
        labels = [task for task, _ in rows] + ["total"]
        # One MAC unit for the three MAC columns (the one the total needs), so shared and
        # task-specific read side by side; parameters get their own.
        mac_unit, _ = scaled_column([self.total_macs])
        macs = [(u, s) for u, s in MAC_UNITS if u == mac_unit]
        columns = [
            ([tc.macs for _, tc in rows] + [self.total_macs], macs, "{}"),
            ([tc.params for _, tc in rows] + [self.total_params], COUNT_UNITS, "params{}"),
            ([tc.shared_macs for _, tc in rows] + [self.shared_macs], macs, "shared {}"),
            ([tc.specific_macs for _, tc in rows] + [self.specific_macs], macs, "task-specific {}"),
        ]
        headers, cells = [], []
        for values, units, header in columns:
            unit, column = scaled_column(values, units)
            headers.append(header.format((f" ({unit})" if unit else "") if header.startswith("params") else unit))
            cells.append(column)
        width = max(len(label) for label in labels + ["task"]) + 2
        widths = [max(len(h), *(len(c) for c in column)) for h, column in zip(headers, cells)]
        shape = f"input [{', '.join(map(str, self.input_shape))}]" if self.input_shape else "one input"
        lines = [f"cost per image of {shape} (batch of one); shared = in nodes serving several tasks",
                 f"{'task':<{width}}" + "  ".join(f"{h:>{w}}" for h, w in zip(headers, widths))]
        for k, label in enumerate(labels):
            lines.append(f"{label:<{width}}" + "  ".join(f"{column[k]:>{w}}" for column, w in zip(cells, widths)))
        return "\n".join(lines)


@dataclass(frozen=True)
class _Value:
    """What the interpreter knows of a node's value.

    ``signature`` is set when the value is one tensor or a flat tuple of
    tensors (a multi-tensor value) of known shapes and dtypes; ``example``
    holds the actual batch-of-one output of a module the interpreter ran
    (anything a module returns: a tensor, a tuple of tensors, or a tuple such
    as Safe MTL's decoder-gate pair, which has no signature), None for values
    known from the signature table only.
    """

    signature: tuple[TensorSignature, ...] | None
    example: Any = None

    @classmethod
    def of(cls, output: Any) -> _Value:
        if isinstance(output, torch.Tensor):
            return cls((_signature_of(output),), output)
        if (
            isinstance(output, tuple) and output
            and all(isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == 1 for t in output)
        ):  # a multi-tensor value (a member without the batch of one, such as mixing weights, is not one)
            return cls(tuple(_signature_of(t) for t in output), output)
        return cls(None, output)

    def argument(self) -> Any:
        """What a module consuming this value is called with: the example, else zeros of the signature."""
        if self.example is not None or self.signature is None:
            return self.example
        zeros = [torch.zeros((1, *t.shape), dtype=_dtype(t.dtype)) for t in self.signature]
        return zeros[0] if len(zeros) == 1 else tuple(zeros)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape (without batch) of a one-tensor value, () otherwise."""
        return self.signature[0].shape if self.signature is not None and len(self.signature) == 1 else ()

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shape (without batch) of every tensor of a value of known signature, () otherwise."""
        return () if self.signature is None else tuple(t.shape for t in self.signature)


class _Meter:
    """Runs modules under the MAC counter; a module on inputs known only by signature runs once per signature."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, tuple[tuple[TensorSignature, ...] | None, ...]], tuple[int, _Value]] = {}
        self._copies: dict[tuple[int, int], bool] = {}

    def run(self, module: nn.Module, inputs: tuple[_Value, ...], where: str) -> tuple[int, _Value]:
        """(MACs, output value) of ``module`` called on one argument per input value, in eval mode."""
        by_signature = all(v.example is None and v.signature is not None for v in inputs)
        key = (id(module), tuple(v.signature for v in inputs))
        if by_signature and key in self._seen:
            return self._seen[key]
        with evaluation_mode(module):
            try:
                macs, out = run_counted(module, *(v.argument() for v in inputs))
            except Exception as exc:
                shapes = ", ".join(" + ".join(str(list(shape)) for shape in v.shapes) or "(unknown)" for v in inputs)
                raise CompileError(
                    f"{where}: running its module {type(module).__name__} on a batch of one of shape {shapes} failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        measured = (macs, _Value.of(out))
        if by_signature:
            self._seen[key] = measured
        return measured

    def is_copy(self, module: nn.Module, row: BlockSignature) -> bool:
        """True when ``module`` has exactly the parameters and buffers (names, shapes) of the traced block."""
        key = (id(module), row.index)
        if key not in self._copies:
            state = tuple((name, tuple(t.shape)) for name, t in module.state_dict().items())
            self._copies[key] = state == row.state
        return self._copies[key]


def _signature_of(tensor: torch.Tensor) -> TensorSignature:
    return TensorSignature(tuple(tensor.shape[1:]), str(tensor.dtype).removeprefix("torch."))


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CompileError(f"the signature table names dtype {name!r}, which is not a torch dtype")
    return dtype


def _parameters(module: nn.Module | None) -> tuple[nn.Parameter, ...]:
    return () if module is None else tuple(module.parameters())


def _shortcut_parameters(module: nn.Module, names: tuple[str, ...]) -> tuple[nn.Parameter, ...]:
    named = dict(module.named_parameters(remove_duplicate=False))
    return tuple(named[n] for n in names)


def _count(tensors: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in {id(p): p for p in tensors}.values())


def cost(graph: MTGraph, params: ParamStore) -> CostReport:
    """Measure ``graph`` with ``params``: MACs per image and parameters, total, per node and per task.

    Block and shortcut MACs come from the signature table; heads and gates
    (and any module that is not a copy of its traced block) are run once on
    a batch of one zeros in eval mode (see the module docstring).

    Args:
        graph: the architecture.
        params: its modules; they are left unchanged (modes, statistics, weights).

    Returns:
        The :class:`CostReport`.

    Raises:
        CompileError: ``graph`` and ``params`` do not compile (see
            :func:`mtgraph.compile.compile`), or a module that has to be
            measured fails on an input of its signature.
        VerifyError: ``graph`` is invalid for ``params``.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
        >>> heads = {"seg": nn.Conv2d(4, 2, 1), "depth": nn.Conv2d(4, 1, 1)}
        >>> shared = mtgraph.one_net(2, ["seg", "depth"])
        >>> separate = mtgraph.stn(2, ["seg", "depth"])
        >>> mtgraph.cost(shared, mtgraph.ParamStore.create(shared, backbone, heads)).total_macs
        4320
        >>> mtgraph.cost(separate, mtgraph.ParamStore.create(separate, backbone, heads)).total_macs  # the conv runs twice
        8208
    """
    params = check_compilable(graph, params)
    signature = params.signature
    meter = _Meter()
    values: list[_Value] = []
    macs: list[int] = []
    owned: list[tuple[nn.Parameter, ...]] = []
    for i, node in enumerate(graph.nodes):
        where = f"node %{i} ({format_node(node, i)})"
        value: _Value
        tensors: tuple[nn.Parameter, ...]
        if isinstance(node, Input):
            value, node_macs, tensors = _Value(signature.input), 0, ()
        elif isinstance(node, Block):
            row, module = signature.blocks[node.block], params[node.weights]
            if values[node.src].signature == row.inputs and meter.is_copy(module, row):
                value, node_macs = _Value(row.outputs), row.macs
            else:
                node_macs, value = meter.run(module, (values[node.src],), where)
            tensors = _parameters(module)
        elif isinstance(node, Skip):
            row = signature.blocks[node.block]
            if not row.shortcut.has_weights or node.weights is None:  # the identity (check_compilable refused the rest)
                value, node_macs, tensors = values[node.src], 0, ()
            else:
                module = params[node.weights]
                if values[node.src].signature == row.inputs and meter.is_copy(module, row):
                    value, node_macs = _Value(row.outputs), row.shortcut.macs
                    tensors = _shortcut_parameters(module, row.shortcut.parameters)
                else:
                    branch = shortcut_branch(module, row.shortcut, node.block, i)
                    node_macs, value = meter.run(branch, (values[node.src],), where)
                    tensors = _parameters(branch)
        elif isinstance(node, (Gate, Head)):
            module = params[node.weights]
            node_macs, value = meter.run(module, tuple(values[s] for s in node.srcs), where)
            tensors = _parameters(module)
        else:
            raise CompileError(f"{where} is not an IR node kind cost knows")
        values.append(value)
        macs.append(node_macs)
        owned.append(tensors)
    served = graph.served
    order = {t: k for k, t in enumerate(graph.tasks)}
    nodes = tuple(
        NodeCost(
            node=i,
            text=format_node(n, i),
            tasks=tuple(sorted(served[i], key=order.__getitem__)),
            macs=macs[i],
            params=_count(owned[i]),
            shape=values[i].shape,
            shapes=values[i].shapes,
        )
        for i, n in enumerate(graph.nodes)
    )
    shared_ids = [i for i, s in enumerate(served) if len(s) > 1]
    specific_ids = [i for i, s in enumerate(served) if len(s) == 1]
    shared_tensors = {id(p): p for i in shared_ids for p in owned[i]}
    specific_tensors = {id(p): p for i in specific_ids for p in owned[i] if id(p) not in shared_tensors}
    tasks: dict[str, TaskCost] = {}
    for task in graph.tasks:
        path = graph.path(task)
        tasks[task] = TaskCost(
            macs=sum(macs[i] for i in path),
            params=_count(p for i in path for p in owned[i]),
            shared_macs=sum(macs[i] for i in path if len(served[i]) > 1),
            specific_macs=sum(macs[i] for i in path if len(served[i]) == 1),
        )
    return CostReport(
        total_macs=sum(macs),
        total_params=_count(p for tensors in owned for p in tensors),
        shared_macs=sum(macs[i] for i in shared_ids),
        specific_macs=sum(macs[i] for i in specific_ids),
        shared_params=_count(shared_tensors.values()),
        specific_params=_count(specific_tensors.values()),
        nodes=nodes,
        tasks=tasks,
        input_shape=tuple(signature.input[0].shape),
    )
