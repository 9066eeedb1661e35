"""Export a compiled multi-task network to ONNX, parity-checked in ONNX Runtime.

The exported model has one input, ``"input"`` (its batch axis dynamic by
default), and one output per task, named after the task. It is the compiled
module (:func:`mtgraph.compile`) exported in eval mode, so a node shared by
several tasks is computed once and its weights are stored once.

A file is only ever published whole: the exporter writes into a temporary
folder beside the target, the result is checked (``onnx.checker``) and run in
ONNX Runtime against torch on a random batch, and only then renamed into
place. On any failure nothing is left under the final name.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtgraph.analysis.cost import CostReport, cost
from mtgraph.analysis.macs import evaluation_mode
from mtgraph.compile import compile as compile_graph
from mtgraph.errors import ExportError
from mtgraph.ir.canonical import canonicalize, remove_dead, renumber
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.names import INPUT_NAME  # a reserved task name: no task output can shadow the input
from mtgraph.ir.nodes import Gate, Head
from mtgraph.ir.text import print_graph
from mtgraph.ir.verify import verify
from mtgraph.modules import MixGate
from mtgraph.params import ParamStore

__all__ = [
    "INPUT_NAME",
    "ExportResult",
    "export_onnx",
    "select_tasks",
    "check_exportable",
    "initializer_stats",
]


#: Gate modes that sample: their output is random in training mode and must be hardened before export.
STOCHASTIC_GATE_MODES = ("gumbel", "gumbel_st")

# A protobuf message cannot exceed 2 GiB; past this many bytes of weights (leaving room for the
# graph itself) the weights go to an external data file beside the model.
_EXTERNAL_DATA_THRESHOLD = 2**31 - 64 * 2**20

# Loggers of the exporters and runtime whose warnings are console noise for a user of mtgraph.
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir")

# Batch sizes of the example used to trace, and of the parity batch. They differ on purpose: with a
# dynamic batch axis, running the parity check at another size proves that the axis really is dynamic.
_TRACE_BATCH = 2
_PARITY_BATCH = 3


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how well it matched torch.

    ``max_abs_diff`` maps each task (output name) to the largest absolute
    difference between ONNX Runtime's and torch's outputs on the parity batch.
    ``initializer_count``/``initializer_bytes`` count every initializer in the
    file (weights, folded constants), each stored once. ``macs`` and ``params``
    are :func:`mtgraph.cost` of the exported graph (per image).
    ``exporter`` is ``"dynamo"`` (torch.export based) or ``"torchscript"``
    (the legacy exporter, used only when the first failed; ``fallback_reason``
    says why). ``external_data`` lists the weight files written beside the
    model (empty unless the weights exceed the 2 GB protobuf limit).

    Examples:
        >>> from pathlib import Path
        >>> from mtgraph.exporters import ExportResult
        >>> result = ExportResult(path=Path("model.onnx"), input_name="input", output_names=("S", "D"),
        ...                       max_abs_diff={"S": 2e-7, "D": 5e-7}, initializer_count=8, initializer_bytes=1080,
        ...                       macs=25856, params=418, exporter="dynamo", opset=18, dynamic_batch=True)
        >>> result.worst_diff
        5e-07
    """

    path: Path
    input_name: str
    output_names: tuple[str, ...]
    max_abs_diff: dict[str, float]
    initializer_count: int
    initializer_bytes: int
    macs: int
    params: int
    exporter: str
    opset: int
    dynamic_batch: bool
    external_data: tuple[Path, ...] = ()
    fallback_reason: str | None = None

    @property
    def worst_diff(self) -> float:
        """The largest absolute difference over all tasks."""
        return max(self.max_abs_diff.values(), default=0.0)


# --------------------------------------------------------------------------- #
# Graph preparation
# --------------------------------------------------------------------------- #


def select_tasks(graph: MTGraph, params: ParamStore, tasks: Sequence[str]) -> tuple[MTGraph, ParamStore]:
    """The sub-network computing only ``tasks``: their heads, the nodes they need and those weights.

    Heads of other tasks are dropped, then every node that no longer reaches a
    kept head (``remove_dead``), and the store is restricted to the keys the
    sub-graph uses: a per-task deployment model carries no other task's weights
    or compute. Outputs come in the order of ``tasks``.

    Args:
        graph: the whole architecture.
        params: its store.
        tasks: the tasks to keep (a single name is accepted too).

    Returns:
        The sub-graph (canonical) and the store restricted to its keys.

    Raises:
        ExportError: ``tasks`` is empty, repeats a task or names one the graph lacks.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.from_groups(2, ["S", "D"], [[["S", "D"]], [["S"], ["D"]]])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> from mtgraph.exporters import select_tasks
        >>> sub, sub_params = select_tasks(graph, params, ["D"])
        >>> print(sub)
        %0 = input                                  # D
        %1 = block 0 w=b0.shared (%0)               # D
        %2 = block 1 w=b1.D (%1)                    # D
        D = head (%2)
        >>> sub_params.keys()
        ['b0.shared', 'b1.D', 'head.D']
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    wanted = list(tasks)
    if not wanted:
        raise ExportError("tasks is empty; name at least one task to export (or pass tasks=None for all)")
    unknown = [t for t in wanted if t not in graph.heads]
    if unknown:
        raise ExportError(f"tasks {unknown} are not in the graph; its tasks are {list(graph.tasks)}")
    repeated = sorted({t for t in wanted if wanted.count(t) > 1})
    if repeated:
        raise ExportError(f"tasks {repeated} are named more than once")
    # Heads are never sources, so moving the kept heads to the end (in the requested order) keeps the
    # node order topological.
    order = [i for i, n in enumerate(graph.nodes) if not isinstance(n, Head)] + [graph.heads[t] for t in wanted]
    mapping = {old: new for new, old in enumerate(order)}
    sub = remove_dead(MTGraph(tuple(renumber(graph.nodes[i], mapping) for i in order)))
    sub = canonicalize(sub)
    return sub, params.restricted(sub)


def check_exportable(graph: MTGraph, params: ParamStore) -> None:
    """Raise ExportError if ``graph`` cannot be exported as it is.

    Refused: a gate whose module samples (a MixGate in mode ``gumbel`` or
    ``gumbel_st``), which must first be turned into its chosen path by the
    ``harden`` pass. (A task named like the model input, ``"input"``, cannot
    exist: it is one of :data:`~mtgraph.ir.RESERVED_TASK_NAMES`, refused where
    tasks are first named.)

    Args:
        graph: the architecture to export.
        params: its store (the gates' modules are looked up here).

    Raises:
        ExportError: what is refused, and how to fix it.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.from_groups(2, ["S", "D"], [[["S", "D"]], [["S"], ["D"]]])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> from mtgraph.exporters import check_exportable
        >>> from mtgraph.passes import GatePass
        >>> check_exportable(graph, params)  # nothing to refuse: returns None
        >>> gated = GatePass("D", start=1, end=1, mode="gumbel")(graph, params)
        >>> check_exportable(gated.graph, gated.params)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ExportError: the graph has stochastic gates %5 (task 'D', w=gate.D.b1, mode 'gumbel'): ...
    """
    stochastic = []
    for i, node in enumerate(graph.nodes):
        if isinstance(node, Gate):
            module = params[node.weights]
            if isinstance(module, MixGate) and module.mode in STOCHASTIC_GATE_MODES:
                stochastic.append(f"%{i} (task {node.task!r}, w={node.weights}, mode {module.mode!r})")
    if stochastic:
        raise ExportError(
            f"the graph has stochastic gates {', '.join(stochastic)}: a Gumbel gate samples its path, so the "
            "network is not a fixed function. Run the 'harden' pass first (it replaces each gate by its chosen "
            "path), or switch the gate to mode 'softmax' if the mixture itself is the model"
        )


# --------------------------------------------------------------------------- #
# Silencing the exporters
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Capture stdout/stderr, ignore warnings and mute the exporters' loggers.

    The captured text is yielded so that an error can quote it.
    """
    buffer = io.StringIO()
    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _summary(exc: BaseException, captured: str = "") -> str:
    """One line for an error message: the exception's first line, or the captured output's last lines."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        lines = [" / ".join(line.strip() for line in captured.strip().splitlines() if line.strip())[-300:]]
    return f"{type(exc).__name__}: {lines[0]}"[:500]


# --------------------------------------------------------------------------- #
# The two torch exporters
# --------------------------------------------------------------------------- #

#: An exporter writes ``module`` traced on ``example`` to ``file`` (keyword options as in _export_dynamo).
Exporter = Callable[..., None]


def _export_dynamo(
    module: nn.Module,
    example: torch.Tensor,
    file: Path,
    *,
    names: Sequence[str],
    dynamic_batch: bool,
    opset: int | None,
    external_data: bool,
) -> None:
    """torch's current exporter (torch.export based)."""
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    torch.onnx.export(
        module,
        (example,),
        str(file),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(names),
        opset_version=opset,
        dynamic_shapes=dynamic_shapes,
        external_data=external_data,
        optimize=True,
    )


def _export_torchscript(
    module: nn.Module,
    example: torch.Tensor,
    file: Path,
    *,
    names: Sequence[str],
    dynamic_batch: bool,
    opset: int | None,
    external_data: bool,
) -> None:
    """The legacy TorchScript exporter (it decides external data by size itself)."""
    del external_data
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *names)} if dynamic_batch else None
    torch.onnx.export(
        module,
        (example,),
        str(file),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=list(names),
        opset_version=opset,
        dynamic_axes=axes,
        do_constant_folding=True,
    )


# --------------------------------------------------------------------------- #
# Checking a written file
# --------------------------------------------------------------------------- #


def initializer_stats(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(count, bytes) of the initializers of the ONNX model at ``path`` (external data not loaded).

    Args:
        path: an ONNX model file.

    Returns:
        The number of initializers and the bytes their values take.

    Examples:
        >>> import tempfile
        >>> import numpy as np
        >>> import onnx
        >>> from onnx import helper, numpy_helper
        >>> from mtgraph.exporters import initializer_stats
        >>> weights = [numpy_helper.from_array(np.zeros((4, 3), np.float32), "w"), numpy_helper.from_array(np.zeros(4))]
        >>> model = helper.make_model(helper.make_graph([], "weights", [], [], initializer=weights))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     onnx.save(model, f"{folder}/w.onnx")
        ...     initializer_stats(f"{folder}/w.onnx")  # 12 float32 + 4 float64
        (2, 80)
    """
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(path), load_external_data=False)
    count = len(model.graph.initializer)
    size = 0
    for tensor in model.graph.initializer:
        itemsize = np.dtype(tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        size += math.prod(tensor.dims) * itemsize
    return count, size


def _finish_model(file: Path, graph: MTGraph) -> None:
    """Drop the exporter's debug metadata and record the architecture in the model's metadata.

    torch's exporter annotates every node with stack traces and fx dumps; they
    carry the exporting machine's file paths and are no use to a deployment.
    External data is left where it is (only references are rewritten).
    """
    import onnx

    model = onnx.load(str(file), load_external_data=False)
    for node in model.graph.node:
        del node.metadata_props[:]
    kept = [(p.key, p.value) for p in model.graph.metadata_props if not p.key.startswith("pkg.torch")]
    del model.graph.metadata_props[:]
    for key, value in kept:
        model.graph.metadata_props.add(key=key, value=value)
    for key, value in (("mtgraph.tasks", ",".join(graph.tasks)), ("mtgraph.architecture", print_graph(graph))):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(file))


def _check_model(file: Path, names: Sequence[str]) -> int:
    """Run the ONNX checker and check the input/output names; return the model's default-domain opset."""
    import onnx

    onnx.checker.check_model(str(file))
    model = onnx.load(str(file), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_NAME] or outputs != list(names):
        raise ExportError(
            f"the exported model has inputs {inputs} and outputs {outputs}; expected [{INPUT_NAME!r}] and {list(names)}"
        )
    return next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 0)


def _max_abs_diff(expected: np.ndarray, got: np.ndarray) -> float:
    if expected.size == 0:
        return 0.0
    a = expected.astype(np.float64)
    b = got.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.abs(a - b)
    diff[both_nan] = 0.0
    diff[np.isnan(diff)] = np.inf
    return float(diff.max())


def _parity_input(params: ParamStore, batch: int) -> torch.Tensor:
    backbone = params.backbone
    if not backbone.input_dtype.is_floating_point:
        return backbone.example_input(batch)
    generator = torch.Generator().manual_seed(1234)
    return torch.randn((batch, *backbone.input_shape), generator=generator, dtype=backbone.input_dtype)


def _parity(file: Path, module: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """Max abs difference per output between ONNX Runtime (CPU) and the torch module on ``x``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    got = session.run(list(names), {INPUT_NAME: x.numpy()})
    with evaluation_mode(module):
        reference = module(x)
    diffs: dict[str, float] = {}
    for name, value in zip(names, got):
        expected = reference[name].detach().cpu().numpy()
        if tuple(value.shape) != tuple(expected.shape):
            raise ExportError(
                f"output {name!r}: ONNX Runtime returns shape {list(value.shape)} but torch returns "
                f"{list(expected.shape)} for a batch of {x.shape[0]}"
            )
        diffs[name] = _max_abs_diff(expected, np.asarray(value))
    return diffs


def _checked_parity(file: Path, module: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    try:
        with quiet():
            return _parity(file, module, x, names)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"ONNX Runtime could not run the exported model: {_summary(exc)}") from exc


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def _target(path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    folder = target.parent
    if not folder.exists():
        raise ExportError(f"cannot write {str(target)!r}: the folder {str(folder)!r} does not exist; create it first")
    if not folder.is_dir():
        raise ExportError(f"cannot write {str(target)!r}: {str(folder)!r} is not a folder")
    if target.is_dir():
        raise ExportError(f"cannot write {str(target)!r}: it is an existing folder; give a file name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {str(target)!r}: the folder {str(folder)!r} is not writable")
    return target


def _weight_bytes(module: nn.Module) -> int:
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        seen.setdefault(id(tensor), tensor.numel() * tensor.element_size())
    return sum(seen.values())


def _publish(staging: Path, target: Path) -> tuple[Path, ...]:
    """Move the staged files beside ``target``: side files (external data) first, the model last."""
    staged = sorted(p for p in staging.iterdir() if p.is_file())
    sides = [p for p in staged if p.name != target.name]
    moved = []
    for side in sides:
        destination = target.parent / side.name
        os.replace(side, destination)
        moved.append(destination)
    os.replace(staging / target.name, target)
    return tuple(moved)


# The exporters in the order they are tried: the current one, then the legacy one as a fallback.
_EXPORTERS: tuple[tuple[str, Exporter], ...] = (("dynamo", _export_dynamo), ("torchscript", _export_torchscript))


def _run_exporters(
    module: nn.Module,
    example: torch.Tensor,
    file: Path,
    graph: MTGraph,
    *,
    dynamic_batch: bool,
    opset: int | None,
    external_data: bool,
) -> tuple[str, int, str | None]:
    """Export with the first exporter that produces a valid model; return (exporter, opset, fallback reason)."""
    names = graph.tasks
    failures: list[str] = []
    for label, exporter in _EXPORTERS:
        for leftover in file.parent.iterdir():  # a failed exporter's partial output
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        captured = ""
        try:
            with quiet() as buffer, evaluation_mode(module):
                try:
                    exporter(
                        module,
                        example,
                        file,
                        names=names,
                        dynamic_batch=dynamic_batch,
                        opset=opset,
                        external_data=external_data,
                    )
                finally:
                    captured = buffer.getvalue()
            if not file.is_file():
                raise ExportError(f"the {label} exporter wrote no file")
            with quiet():
                _finish_model(file, graph)
                version = _check_model(file, names)
        except Exception as exc:  # any failure of an exporter means: try the next one
            failures.append(f"{label} exporter: {_summary(exc, captured)}")
            continue
        return label, version, ("; ".join(failures) or None)
    raise ExportError("ONNX export failed with every exporter:\n  " + "\n  ".join(failures))


def export_onnx(
    graph: MTGraph,
    params: ParamStore,
    path: str | os.PathLike[str],
    *,
    tasks: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    opset: int | None = None,
    tolerance: float = 1e-4,
    module: torch.fx.GraphModule | None = None,
    report: CostReport | None = None,
) -> ExportResult:
    """Export ``graph`` with ``params`` to the ONNX file ``path`` and check it against torch.

    The model has one input ``"input"`` and one output per task named after
    the task; its batch axis is dynamic unless ``dynamic_batch=False`` (then
    the batch size is 1). ``tasks`` exports only those tasks' paths (see
    :func:`select_tasks`). ``opset`` is the ONNX opset (None: the exporter's
    default). Weights go into the one file unless they exceed the 2 GB
    protobuf limit, in which case they are written to ``<path>.data`` beside it.

    After export the file is validated with ``onnx.checker`` and run in ONNX
    Runtime (CPU) on a random batch; if any task's output differs from the
    compiled torch module (eval mode) by more than ``tolerance``, ExportError
    reports the max abs diff per task. The file appears under ``path`` only
    when every check passed.

    **Overwriting:** an existing file at ``path`` is replaced, atomically
    (written beside it, then renamed over it) and only once every check
    passed: a failed export leaves the previous file byte-identical.

    Args:
        graph: the architecture to export.
        params: its store.
        path: the ONNX file to write; its folder must exist.
        tasks: export only these tasks (None: every task).
        dynamic_batch: make the batch axis dynamic (False: batch size 1).
        opset: the ONNX opset version (None: the exporter's default).
        tolerance: largest accepted absolute difference from torch per output.
        module: ``compile(graph, params)`` when the caller already has it (None: compiled here).
        report: ``cost(graph, params)`` when the caller already has it (None: measured here).
            Both are ignored when ``tasks`` selects a part of the graph.

    Returns:
        An :class:`ExportResult`: the path, names, parity per task, size, cost and exporter used.

    Raises:
        ExportError: an unwritable or missing folder, a stochastic gate (run
            the ``harden`` pass), an export that fails with both torch
            exporters, or a parity failure.
        VerifyError: a broken graph.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.from_groups(2, ["S", "D"], [[["S", "D"]], [["S"], ["D"]]])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> import tempfile
        >>> from mtgraph.exporters import export_onnx
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     result = export_onnx(graph, params, f"{folder}/model.onnx")
        >>> result.input_name, result.output_names, result.worst_diff < 1e-4, result.params
        ('input', ('S', 'D'), True, 418)
    """
    if not isinstance(graph, MTGraph):
        raise ExportError(f"graph must be an MTGraph, got {type(graph).__name__}")
    if not isinstance(params, ParamStore):
        raise ExportError(f"params must be a ParamStore, got {type(params).__name__}")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0 and math.isfinite(tolerance)):
        raise ExportError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if opset is not None and (not isinstance(opset, int) or opset < 7):
        raise ExportError(f"opset must be an ONNX opset version (an int >= 7) or None, got {opset!r}")
    verify(graph, num_blocks=params.backbone.num_blocks, weight_keys=set(params.keys()))
    if tasks is not None:
        graph, params = select_tasks(graph, params, tasks)
    check_exportable(graph, params)
    target = _target(path)
    names = graph.tasks
    if tasks is not None:  # a module or report of the whole graph does not describe the selected tasks
        module = report = None
    module = module if module is not None else compile_graph(graph, params)
    report = report if report is not None else cost(graph, params)
    external = _weight_bytes(module) > _EXTERNAL_DATA_THRESHOLD
    example = _parity_input(params, _TRACE_BATCH if dynamic_batch else 1)
    check_batch = _parity_input(params, _PARITY_BATCH if dynamic_batch else 1)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise ExportError(f"cannot write into {str(target.parent)!r}: {exc.strerror or exc}") from exc
    try:
        file = staging / target.name
        exporter, version, reason = _run_exporters(
            module, example, file, graph, dynamic_batch=dynamic_batch, opset=opset, external_data=external
        )
        diffs = _checked_parity(file, module, check_batch, names)
        bad = {t: d for t, d in diffs.items() if not d <= tolerance}
        if bad:
            detail = ", ".join(f"{t}: {d:.3g}" + (" (over)" if t in bad else "") for t, d in diffs.items())
            raise ExportError(
                f"ONNX Runtime's outputs differ from torch's by more than tolerance={tolerance:g} "
                f"(max abs diff per task: {detail}); nothing was written to {str(target)!r}"
            )
        count, size = initializer_stats(file)
        try:
            sides = _publish(staging, target)
        except OSError as exc:
            raise ExportError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(
        path=target,
        input_name=INPUT_NAME,
        output_names=tuple(names),
        max_abs_diff=diffs,
        initializer_count=count,
        initializer_bytes=size,
        macs=report.total_macs,
        params=report.total_params,
        exporter=exporter,
        opset=version,
        dynamic_batch=dynamic_batch,
        external_data=sides,
        fallback_reason=reason,
    )
