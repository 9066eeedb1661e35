"""Export a compiled multi-task network to ONNX, parity-checked in ONNX Runtime.

The exported model has one input, ``"input"`` (its batch axis dynamic by
default, height and width too where the network allows), and one output per
task, named after the task. It is the compiled module (:func:`mtgraph.compile`)
exported in eval mode, so a node shared by several tasks is computed once and
its weights are stored once. BatchNorm is folded into the convolutions, and
the file stores onnxruntime's optimised graph (:mod:`mtgraph.exporters.optimize`);
it can be quantised to int8 or converted to float16
(:mod:`mtgraph.exporters.quantize`), and its metadata says how to prepare
the input (:mod:`mtgraph.exporters.metadata`).

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtgraph.analysis.cost import CostReport, cost
from mtgraph.analysis.macs import evaluation_mode
from mtgraph.compile import compile as compile_graph
from mtgraph.errors import ExportError
from mtgraph.exporters.metadata import PREFIX as METADATA_PREFIX
from mtgraph.exporters.metadata import InputNormalization, normalization_entries
from mtgraph.exporters.optimize import OPTIMIZATION_LEVELS, op_counts, optimization_note, optimize_onnx
from mtgraph.exporters.quantize import (
    METRIC_WARNING,
    PRECISIONS,
    QuantizationReport,
    QuantizationWarning,
    calibration_arrays,
    convert_fp16,
    quantize_int8,
    relative_error,
)
from mtgraph.ir.canonical import canonicalize, remove_dead, renumber
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.names import INPUT_NAME  # a reserved task name: no task output can shadow the input
from mtgraph.ir.nodes import Gate, Head
from mtgraph.ir.text import print_graph
from mtgraph.ir.verify import verify
from mtgraph.modules import MixGate
from mtgraph.params import ParamStore

if TYPE_CHECKING:
    from mtgraph.tasks import Task

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

#: A float16 model may differ from torch by this fraction of the output's largest magnitude (plus ``tolerance``):
#: float16 rounds to 2**-11 relative, and about 20 such roundings compound over a network's layers.
FP16_RELATIVE = 1e-2


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how well it matched torch.

    ``max_abs_diff`` maps each task (output name) to the largest absolute
    difference between ONNX Runtime's and torch's outputs on the parity
    batches (at the traced size, and at a second size when height/width are
    dynamic; for int8, on the calibration images, where it is informative
    only: int8 is judged by ``quantization``).
    ``initializer_count``/``initializer_bytes`` count every initializer in the
    file (weights, folded constants), each stored once. ``macs`` and ``params``
    are :func:`mtgraph.cost` of the exported graph (per image).
    ``exporter`` is ``"dynamo"`` (torch.export based) or ``"torchscript"``
    (the legacy exporter, used only when the first failed; ``fallback_reason``
    says why). ``external_data`` lists the weight files written beside the
    model (empty unless the weights exceed the 2 GB protobuf limit).
    ``precision`` is ``"fp32"``, ``"int8"`` or ``"fp16"``; ``optimization``
    the onnxruntime optimisation stored in the file; ``batchnorm_nodes`` the
    BatchNormalization nodes left in it (0 when every one was folded into its
    convolution). ``dynamic_size`` says whether height and width are dynamic;
    if not, ``static_size_reason`` says why.

    Examples:
        >>> from pathlib import Path
        >>> from mtgraph.exporters import ExportResult
        >>> result = ExportResult(path=Path("model.onnx"), input_name="input", output_names=("S", "D"),
        ...                       max_abs_diff={"S": 2e-7, "D": 5e-7}, initializer_count=8, initializer_bytes=1080,
        ...                       macs=25856, params=418, exporter="dynamo", opset=18, dynamic_batch=True)
        >>> result.worst_diff, result.dynamic_axes
        (5e-07, ('batch',))
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
    precision: str = "fp32"
    optimization: str = "none"
    batchnorm_nodes: int = 0
    dynamic_size: bool = False
    static_size_reason: str | None = None
    normalization: InputNormalization | None = None
    quantization: QuantizationReport | None = None

    @property
    def worst_diff(self) -> float:
        """The largest absolute difference over all tasks."""
        return max(self.max_abs_diff.values(), default=0.0)

    @property
    def dynamic_axes(self) -> tuple[str, ...]:
        """Names of the input's dynamic axes: ``batch``, ``height``, ``width``."""
        return (("batch",) if self.dynamic_batch else ()) + (("height", "width") if self.dynamic_size else ())


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

#: Input axes that can be dynamic, with their names in the ONNX file.
_AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}


def _export_dynamo(
    module: nn.Module,
    example: torch.Tensor,
    file: Path,
    *,
    names: Sequence[str],
    dynamic: Sequence[int],
    opset: int | None,
    external_data: bool,
) -> None:
    """torch's current exporter (torch.export based).

    Height and width are ``Dim.DYNAMIC``: torch.export infers their valid
    range itself (at least 2 after every downsampling) and fails if the
    network fixes them, rather than silently keeping one size.
    """
    axes: dict[int, Any] = {}
    if 0 in dynamic:
        axes[0] = torch.export.Dim("batch")
    for axis in (2, 3):
        if axis in dynamic:
            axes[axis] = torch.export.Dim.DYNAMIC
    torch.onnx.export(
        module,
        (example,),
        str(file),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(names),
        opset_version=opset,
        dynamic_shapes=(axes,) if axes else None,
        external_data=external_data,
        optimize=True,
    )


def _export_torchscript(
    module: nn.Module,
    example: torch.Tensor,
    file: Path,
    *,
    names: Sequence[str],
    dynamic: Sequence[int],
    opset: int | None,
    external_data: bool,
) -> None:
    """The legacy TorchScript exporter (it decides external data by size itself)."""
    del external_data
    axes: dict[str, dict[int, str]] | None = None
    if dynamic:
        axes = {INPUT_NAME: {a: _AXIS_NAMES[a] for a in dynamic}}
        if 0 in dynamic:
            axes.update({name: {0: "batch"} for name in names})
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


def _strip_debug_metadata(file: Path) -> None:
    """Drop the exporter's debug metadata (stack traces and fx dumps with this machine's file paths).

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
    onnx.save(model, str(file))


def _write_metadata(file: Path, entries: dict[str, str]) -> None:
    """Replace the model's ``mtgraph.*`` metadata by ``entries`` (other tools' entries are kept)."""
    import onnx

    model = onnx.load(str(file), load_external_data=False)
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
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


def _parity_input(params: ParamStore, batch: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    backbone = params.backbone
    shape = tuple(backbone.input_shape) if size is None else (*backbone.input_shape[:-2], *size)
    if not backbone.input_dtype.is_floating_point:
        return torch.zeros((batch, *shape), dtype=backbone.input_dtype)
    generator = torch.Generator().manual_seed(1234)
    return torch.randn((batch, *shape), generator=generator, dtype=backbone.input_dtype)


def _torch_outputs(module: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, np.ndarray]:
    with evaluation_mode(module), torch.no_grad():
        reference = module(x)
    return {name: reference[name].detach().cpu().numpy() for name in names}


def _ort_outputs(file: Path, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    return dict(zip(names, (np.asarray(v) for v in session.run(list(names), {INPUT_NAME: x}))))


def _diffs(file: Path, reference: dict[str, np.ndarray], x: np.ndarray) -> dict[str, float]:
    """Max abs difference per output between ONNX Runtime (CPU) on ``x`` and ``reference`` (torch's outputs)."""
    names = list(reference)
    try:
        with quiet():
            got = _ort_outputs(file, x, names)
    except Exception as exc:
        raise ExportError(f"ONNX Runtime could not run the exported model: {_summary(exc)}") from exc
    diffs: dict[str, float] = {}
    for name in names:
        if tuple(got[name].shape) != tuple(reference[name].shape):
            raise ExportError(
                f"output {name!r}: ONNX Runtime returns shape {list(got[name].shape)} but torch returns "
                f"{list(reference[name].shape)} for an input of shape {list(x.shape)}"
            )
        diffs[name] = _max_abs_diff(reference[name], got[name])
    return diffs


def _check_diffs(diffs: dict[str, float], bounds: dict[str, float], what: str, target: Path) -> None:
    bad = {t: d for t, d in diffs.items() if not d <= bounds[t]}
    if bad:
        detail = ", ".join(f"{t}: {d:.3g}" + (" (over)" if t in bad else "") for t, d in diffs.items())
        raise ExportError(
            f"ONNX Runtime's outputs differ from torch's by more than {what} "
            f"(max abs diff per task: {detail}); nothing was written to {str(target)!r}"
        )


# --------------------------------------------------------------------------- #
# Height and width
# --------------------------------------------------------------------------- #


def _second_size(params: ParamStore) -> tuple[int, int] | None:
    """Another height and width to prove dynamic axes on: 32 pixels more each (keeps strides up to 32 exact)."""
    shape = params.backbone.input_shape
    if len(shape) != 3:
        return None
    return int(shape[1]) + 32, int(shape[2]) + 32


def _size_plan(module: nn.Module, params: ParamStore, dynamic_size: bool | str) -> str | None:
    """Why height/width must stay static (None: try them dynamic), judged before export by torch itself."""
    if dynamic_size is False:
        return "static by request (dynamic_size=False)"
    size = _second_size(params)
    if size is None:
        return f"the input has shape {list(params.backbone.input_shape)}, not [C, H, W]"
    try:
        with quiet():
            _torch_outputs(module, _parity_input(params, 1, size), ())
    except Exception as exc:
        traced = "x".join(str(d) for d in params.backbone.input_shape[1:])
        return (f"the network runs at {traced} but not at {size[0]}x{size[1]} in torch "
                f"({_summary(exc)}): a layer fixes the input size")
    return None


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
    names: Sequence[str],
    *,
    dynamic: Sequence[int],
    opset: int | None,
    external_data: bool,
) -> tuple[str, int, str | None]:
    """Export with the first exporter that produces a valid model; return (exporter, opset, fallback reason)."""
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
                        dynamic=tuple(dynamic),
                        opset=opset,
                        external_data=external_data,
                    )
                finally:
                    captured = buffer.getvalue()
            if not file.is_file():
                raise ExportError(f"the {label} exporter wrote no file")
            with quiet():
                _strip_debug_metadata(file)
                version = _check_model(file, names)
        except Exception as exc:  # any failure of an exporter means: try the next one
            failures.append(f"{label} exporter: {_summary(exc, captured)}")
            continue
        return label, version, ("; ".join(failures) or None)
    raise ExportError("ONNX export failed with every exporter:\n  " + "\n  ".join(failures))


def _check_options(tolerance: object, opset: object, dynamic_size: object, optimize: object, quantize: object) -> None:
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0 and math.isfinite(tolerance)):
        raise ExportError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if opset is not None and (not isinstance(opset, int) or opset < 7):
        raise ExportError(f"opset must be an ONNX opset version (an int >= 7) or None, got {opset!r}")
    if dynamic_size not in ("auto", True, False):
        raise ExportError(f"dynamic_size must be 'auto', True or False, got {dynamic_size!r}")
    if optimize not in ("auto", *OPTIMIZATION_LEVELS):
        raise ExportError(f"optimize must be 'auto' or one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimize!r}")
    if quantize is not None and quantize not in PRECISIONS:
        raise ExportError(f"quantize must be None (float32), 'int8' or 'fp16', got {quantize!r}")


def _level(optimize: str, quantize: str | None, external: bool) -> str:
    """The optimisation level to store, from the request, the precision and the file size."""
    if quantize == "fp16":
        # A float16 model is for GPU providers; optimising it here would store the CPU provider's casts.
        if optimize not in ("auto", "none"):
            raise ExportError(
                f"optimize={optimize!r} with quantize='fp16': onnxruntime's optimiser runs here on the CPU and would "
                "store float32 casts into a model meant for a GPU; use optimize='none' (the GPU provider optimises "
                "when it opens the file)"
            )
        return "none"
    if external:
        if optimize not in ("auto", "none"):
            raise ExportError(f"optimize={optimize!r}: models over the 2 GB protobuf limit are written unoptimised; "
                              "use optimize='none'")
        return "none"
    return "all" if optimize == "auto" else optimize


class _SizeRefused(Exception):
    """Height/width could not be kept dynamic (the message says why); the export is redone with static ones."""


@dataclass(frozen=True)
class _Built:
    """A model staged in the export folder, checked, with what the checks found."""

    exporter: str
    opset: int
    fallback_reason: str | None
    diffs: dict[str, float]
    reference: dict[str, np.ndarray]  # torch's outputs on ``x``
    x: np.ndarray
    method: str


@dataclass(frozen=True)
class _Job:
    """One export: the module and every option that decides how the file is made and checked."""

    module: nn.Module
    params: ParamStore
    names: tuple[str, ...]
    target: Path
    tolerance: float
    opset: int | None
    external: bool
    level: str
    quantize: str | None
    batches: list[np.ndarray] | None
    dynamic_batch: bool

    def bounds(self, reference: dict[str, np.ndarray], where: str) -> tuple[dict[str, float], str]:
        """Accepted max abs difference per output, and how it is described in an error."""
        if self.quantize == "fp16":
            bounds = {t: self.tolerance + FP16_RELATIVE * float(np.abs(v).max(initial=0.0)) for t, v in reference.items()}
            return bounds, f"tolerance={self.tolerance:g} + {FP16_RELATIVE:g} x max |output| (float16){where}"
        return {t: self.tolerance for t in reference}, f"tolerance={self.tolerance:g}{where}"

    def build(self, staging: Path, dynamic_size: bool) -> _Built:
        """Export, convert, optimise and check into ``staging``; raise _SizeRefused if the size cannot be dynamic."""
        file = staging / self.target.name
        work = staging / "work"
        work.mkdir()
        raw = work / self.target.name
        batch_axes = (0,) if self.dynamic_batch else ()
        example = _parity_input(self.params, _TRACE_BATCH if self.dynamic_batch else 1)
        try:
            exporter, version, reason = _run_exporters(
                self.module, example, raw, self.names, dynamic=(*batch_axes, *((2, 3) if dynamic_size else ())),
                opset=self.opset, external_data=self.external,
            )
        except ExportError as exc:
            if not dynamic_size:
                raise
            raise _SizeRefused(f"torch's exporters cannot keep height/width dynamic ({str(exc).splitlines()[-1].strip()})") from exc
        # The float32 export is checked on its own first: a wrong export must not hide behind quantisation.
        x = _parity_input(self.params, _PARITY_BATCH if self.dynamic_batch else 1).numpy()
        reference = _torch_outputs(self.module, torch.from_numpy(x), self.names)
        diffs = _diffs(raw, reference, x)
        _check_diffs(diffs, {t: self.tolerance for t in self.names}, f"tolerance={self.tolerance:g}", self.target)
        method = ""
        if self.external:
            for side in work.iterdir():
                os.replace(side, staging / side.name)
        else:
            low = work / f"low.{self.target.name}"
            if self.quantize == "int8":
                assert self.batches is not None
                method = quantize_int8(raw, low, self.batches, input_name=INPUT_NAME)
            elif self.quantize == "fp16":
                method = convert_fp16(raw, low)
            optimize_onnx(low if self.quantize else raw, file, self.level)
        shutil.rmtree(work)
        # From here on, the checks run on the file as it will be published.
        if self.quantize == "int8":
            assert self.batches is not None
            # int8 is judged by metrics, not by a tolerance; its differences are reported on real images.
            x = self.batches[0]
            reference = _torch_outputs(self.module, torch.from_numpy(x), self.names)
            diffs = _diffs(file, reference, x)
        else:
            diffs = _diffs(file, reference, x)
            _check_diffs(diffs, *self.bounds(reference, ""), self.target)
        if dynamic_size:
            diffs2 = self._check_second_size(file)
            if self.quantize != "int8":
                diffs = {t: max(diffs[t], diffs2[t]) for t in self.names}
        return _Built(exporter, version, reason, diffs, reference, x, method)

    def _check_second_size(self, file: Path) -> dict[str, float]:
        size = _second_size(self.params)
        assert size is not None  # _size_plan refused dynamic sizes otherwise
        x = _parity_input(self.params, _PARITY_BATCH if self.dynamic_batch else 1, size).numpy()
        reference = _torch_outputs(self.module, torch.from_numpy(x), self.names)
        try:
            diffs = _diffs(file, reference, x)
            if self.quantize != "int8":
                _check_diffs(diffs, *self.bounds(reference, f" at {size[0]}x{size[1]}"), self.target)
        except ExportError as exc:
            raise _SizeRefused(f"the exported graph does not match torch at {size[0]}x{size[1]}: {exc}") from exc
        return diffs


def _evaluation(
    module: nn.Module,
    file: Path,
    eval_tasks: Mapping[str, Task] | None,
    eval_data: DataLoader | Dataset | None,
    names: Sequence[str],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, dict[str, bool]], dict[str, str]]:
    """Metrics of the torch module and of the ONNX file on ``eval_data``, directions, primaries (empty without data)."""
    if eval_tasks is None or eval_data is None:
        return {}, {}, {}, {}
    from mtgraph.exporters.runtime import SessionModule, open_session
    from mtgraph.train.evaluate import check_tasks, evaluate_module

    check_tasks(eval_tasks, tuple(names))
    before = evaluate_module(module, eval_tasks, eval_data, device="cpu")
    after = evaluate_module(SessionModule(open_session(file, providers="cpu")), eval_tasks, eval_data, device="cpu")
    return dict(before), dict(after), dict(before.directions), {t: task.primary for t, task in eval_tasks.items()}


def _clear(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _metadata(graph: MTGraph, params: ParamStore, dynamic_batch: bool, static_reason: str | None,
              normalization: InputNormalization | None, precision: str, optimization: str) -> dict[str, str]:
    axes = (["batch"] if dynamic_batch else []) + ([] if static_reason else ["height", "width"])
    return {
        METADATA_PREFIX + "tasks": ",".join(graph.tasks),
        METADATA_PREFIX + "input_shape": ",".join(str(d) for d in params.backbone.input_shape),
        METADATA_PREFIX + "dynamic_axes": ",".join(axes),
        **({METADATA_PREFIX + "static_size": static_reason} if static_reason else {}),
        **normalization_entries(normalization),
        METADATA_PREFIX + "precision": precision,
        METADATA_PREFIX + "optimization": optimization,
        METADATA_PREFIX + "architecture": print_graph(graph),
    }


def export_onnx(
    graph: MTGraph,
    params: ParamStore,
    path: str | os.PathLike[str],
    *,
    tasks: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    dynamic_size: bool | str = "auto",
    opset: int | None = None,
    tolerance: float = 1e-4,
    optimize: str = "auto",
    quantize: str | None = None,
    calibration: Iterable[Any] | None = None,
    normalization: InputNormalization | None = None,
    eval_tasks: Mapping[str, Task] | None = None,
    eval_data: DataLoader | Dataset | None = None,
    module: torch.fx.GraphModule | None = None,
    report: CostReport | None = None,
) -> ExportResult:
    """Export ``graph`` with ``params`` to the ONNX file ``path`` and check it against torch.

    The model has one input ``"input"`` and one output per task named after
    the task; its batch axis is dynamic unless ``dynamic_batch=False`` (then
    the batch size is 1). Height and width are dynamic where the network
    allows it (``dynamic_size="auto"``): the network must run in torch at a
    second size, the exporter must keep the axes symbolic, and onnxruntime
    must match torch at that size too; otherwise they stay at the traced
    size and ``static_size_reason`` (and the file's metadata) says why.
    ``dynamic_size=True`` makes that an error, ``False`` keeps them static.
    ``tasks`` exports only those tasks' paths (see :func:`select_tasks`).
    ``opset`` is the ONNX opset (None: the exporter's default). Weights go
    into the one file unless they exceed the 2 GB protobuf limit, in which
    case they are written to ``<path>.data`` beside it.

    BatchNorm is folded into the convolutions (by torch's exporter, and
    again by onnxruntime's optimiser). ``optimize`` stores onnxruntime's graph
    optimisation in the file (see :mod:`mtgraph.exporters.optimize`): ``"auto"``
    is ``"all"`` (fastest, specific to this CPU family), except for float16.

    ``quantize="int8"`` writes a static int8 model (QDQ, weights per channel,
    activations calibrated on ``calibration``, batches of training images
    prepared like the network's input); ``quantize="fp16"`` a float16 model
    for GPU providers. With ``eval_tasks`` and ``eval_data`` (a dataset of
    ``(image, targets)``), every task's metrics of the float32 network and of
    the quantised model are computed and returned in ``quantization``; a
    metric that gets more than 1 % worse raises a :class:`QuantizationWarning`.

    ``normalization`` records the input normalisation the network expects in
    the file's metadata (see :mod:`mtgraph.exporters.metadata`).

    After export the file is validated with ``onnx.checker`` and run in ONNX
    Runtime (CPU) on a random batch: a float32 model must match the compiled
    torch module (eval mode) within ``tolerance`` per output (float16: plus
    1e-2 of the output's largest magnitude, ~20 float16 roundings), else
    ExportError reports the max abs diff per task. The file appears under
    ``path`` only when every check passed.

    **Overwriting:** an existing file at ``path`` is replaced, atomically
    (written beside it, then renamed over it) and only once every check
    passed: a failed export leaves the previous file byte-identical.

    Args:
        graph: the architecture to export.
        params: its store.
        path: the ONNX file to write; its folder must exist.
        tasks: export only these tasks (None: every task).
        dynamic_batch: make the batch axis dynamic (False: batch size 1).
        dynamic_size: ``"auto"``, True (required) or False (static height/width).
        opset: the ONNX opset version (None: the exporter's default).
        tolerance: largest accepted absolute difference from torch per output (float32).
        optimize: ``"auto"``, ``"all"``, ``"extended"``, ``"basic"`` or ``"none"``.
        quantize: None (float32), ``"int8"`` or ``"fp16"``.
        calibration: batches of training images for int8 (tensors, arrays, or ``(images, targets)`` pairs).
        normalization: the input normalisation to record (None: not recorded).
        eval_tasks: task name -> :class:`~mtgraph.tasks.Task`, to compare metrics before and after quantising.
        eval_data: labelled data for those metrics.
        module: ``compile(graph, params)`` when the caller already has it (None: compiled here).
        report: ``cost(graph, params)`` when the caller already has it (None: measured here).
            Both are ignored when ``tasks`` selects a part of the graph.

    Returns:
        An :class:`ExportResult`: the path, names, parity per task, size,
        cost, exporter, precision, optimisation, axes and (int8/fp16) the
        quantisation report.

    Raises:
        ExportError: an unwritable or missing folder, a stochastic gate (run
            the ``harden`` pass), an export that fails with both torch
            exporters, a parity failure, int8 without calibration batches,
            or ``dynamic_size=True`` for a network that fixes its input size.
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
        >>> result.dynamic_axes, result.optimization.split(";")[0]
        (('batch', 'height', 'width'), 'all')
    """
    if not isinstance(graph, MTGraph):
        raise ExportError(f"graph must be an MTGraph, got {type(graph).__name__}")
    if not isinstance(params, ParamStore):
        raise ExportError(f"params must be a ParamStore, got {type(params).__name__}")
    _check_options(tolerance, opset, dynamic_size, optimize, quantize)
    if normalization is not None and not isinstance(normalization, InputNormalization):
        raise ExportError(f"normalization must be an InputNormalization or None, got {type(normalization).__name__}")
    if (eval_tasks is None) != (eval_data is None):
        raise ExportError("give eval_tasks and eval_data together (the tasks' metrics are computed on that data)")
    verify(graph, num_blocks=params.backbone.num_blocks, weight_keys=set(params.keys()))
    if tasks is not None:
        graph, params = select_tasks(graph, params, tasks)
    check_exportable(graph, params)
    channels = params.backbone.input_shape[0] if params.backbone.input_shape else 0
    if normalization is not None and normalization.channels != channels:
        raise ExportError(f"normalization has {normalization.channels} channels; the network's input has {channels}")
    batches = None
    if quantize == "int8":
        if calibration is None:
            raise ExportError("quantize='int8' needs calibration=[batches of training images] to measure activation ranges")
        batches = calibration_arrays(calibration, channels)
    target = _target(path)
    names = graph.tasks
    if tasks is not None:  # a module or report of the whole graph does not describe the selected tasks
        module = report = None
    module = module if module is not None else compile_graph(graph, params)
    report = report if report is not None else cost(graph, params)
    external = _weight_bytes(module) > _EXTERNAL_DATA_THRESHOLD
    if external and quantize is not None:
        raise ExportError(f"quantize={quantize!r} is not supported for models over the 2 GB protobuf limit")
    level = _level(optimize, quantize, external)
    size_reason = _size_plan(module, params, dynamic_size)
    if size_reason is not None and dynamic_size is True:
        raise ExportError(f"dynamic_size=True, but height/width cannot be dynamic: {size_reason}")
    job = _Job(module, params, names, target, float(tolerance), opset, external, level, quantize, batches, dynamic_batch)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise ExportError(f"cannot write into {str(target.parent)!r}: {exc.strerror or exc}") from exc
    try:
        built = None
        if size_reason is None:
            try:
                built = job.build(staging, dynamic_size=True)
            except _SizeRefused as exc:
                if dynamic_size is True:
                    raise ExportError(f"dynamic_size=True, but height/width cannot be dynamic: {exc}") from exc
                size_reason = str(exc)
                _clear(staging)
        if built is None:
            built = job.build(staging, dynamic_size=False)
        file = staging / target.name
        quantization = None
        if quantize is not None:
            low_outputs = _ort_outputs(file, built.x, names)
            before, after, directions, primary = _evaluation(module, file, eval_tasks, eval_data, names)
            quantization = QuantizationReport(
                quantize, built.method, sum(b.shape[0] for b in batches) if batches else 0,
                relative_error(built.reference, low_outputs), before, after, directions, primary,
            )
            if quantization.worst_loss() > METRIC_WARNING:
                warnings.warn(
                    f"the {quantize} model is {100 * quantization.worst_loss():.2f} % worse than float32 on a task's "
                    f"primary metric (* below; more than {100 * METRIC_WARNING:g} %):\n{quantization.table()}",
                    QuantizationWarning, stacklevel=2,
                )
        optimization = optimization_note(level)
        with quiet():
            _write_metadata(file, _metadata(graph, params, dynamic_batch, size_reason, normalization,
                                            quantize or "fp32", optimization))
            _check_model(file, names)
        count, nbytes = initializer_stats(file)
        batchnorms = op_counts(file).get("BatchNormalization", 0)
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
        max_abs_diff=built.diffs,
        initializer_count=count,
        initializer_bytes=nbytes,
        macs=report.total_macs,
        params=report.total_params,
        exporter=built.exporter,
        opset=built.opset,
        dynamic_batch=dynamic_batch,
        external_data=sides,
        fallback_reason=built.fallback_reason,
        precision=quantize or "fp32",
        optimization=optimization,
        batchnorm_nodes=batchnorms,
        dynamic_size=size_reason is None,
        static_size_reason=size_reason,
        normalization=normalization,
        quantization=quantization,
    )
