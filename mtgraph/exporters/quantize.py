"""Lower-precision versions of an exported model: int8 (static, calibrated) and float16.

* :func:`quantize_int8` is onnxruntime's static quantisation in QDQ format:
  weights int8 per output channel, activations uint8 with ranges measured
  (min/max) on calibration batches from the training data; each output's
  last layer stays float32. QDQ and the
  older QOperator format end up as the same ``QLinearConv`` kernels once
  onnxruntime has optimised the file (measured: equal latency within noise
  on resnet18 at 128 px, BENCHMARKS.md); QDQ is the format onnxruntime
  recommends and the one other runtimes (TensorRT) read.
* :func:`convert_fp16` stores weights and activations as float16 for GPU
  providers; inputs and outputs stay float32, so callers do not change.
  On a CPU, onnxruntime runs such a model through casts to float32 (it loads
  and gives float16-accurate results, it is not faster).

Quantisation changes results, so it is judged by what users measure: every
task's metrics before and after (:class:`QuantizationReport`), not by an
elementwise tolerance.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtgraph.errors import ExportError

__all__ = ["QuantizationReport", "QuantizationWarning", "calibration_arrays", "quantize_int8", "convert_fp16"]

#: Precisions :func:`~mtgraph.exporters.export_onnx` can write besides float32.
PRECISIONS = ("int8", "fp16")

#: A metric that moves by more than this (relative to its float32 value, in the worse direction) is warned about.
METRIC_WARNING = 0.01


class QuantizationWarning(UserWarning):
    """A quantised model lost more than 1 % (relative) on some task's metric.

    Examples:
        >>> from mtgraph.exporters import QuantizationWarning
        >>> issubclass(QuantizationWarning, UserWarning)
        True
    """


@dataclass(frozen=True)
class QuantizationReport:
    """How an int8 (or float16) model compares with the float32 network it came from.

    Attributes:
        precision: ``"int8"`` or ``"fp16"``.
        method: how it was made (format, weight/activation types, calibration).
        calibration_images: images the activation ranges were measured on (0 for fp16).
        output_error: per task, ``||low - fp32|| / ||fp32||`` over the calibration
            images (the parity batch for fp16): relative RMS error of the outputs.
        metrics_fp32: every task's metrics of the float32 network on the evaluation
            data (empty when none was given).
        metrics_low: the same metrics of the lower-precision model.
        higher_is_better: per task and metric, its direction.
        primary: per task, the metric that summarises it (the one judged by :meth:`worst_loss`).

    Examples:
        >>> from mtgraph.exporters import QuantizationReport
        >>> report = QuantizationReport("int8", "QDQ", 32, {"depth": 0.02}, {"depth": {"rmse": 0.50}},
        ...                             {"depth": {"rmse": 0.51}}, {"depth": {"rmse": False}}, {"depth": "rmse"})
        >>> report.relative_changes()
        {'depth': {'rmse': 0.02}}
        >>> report.worst_loss()  # rmse went up by 2 %: a loss of 0.02
        0.02
    """

    precision: str
    method: str
    calibration_images: int
    output_error: dict[str, float]
    metrics_fp32: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics_low: dict[str, dict[str, float]] = field(default_factory=dict)
    higher_is_better: dict[str, dict[str, bool]] = field(default_factory=dict)
    primary: dict[str, str] = field(default_factory=dict)

    def relative_changes(self) -> dict[str, dict[str, float]]:
        """Per task and metric, ``(low - fp32) / |fp32|`` (0 where both are 0; inf where only fp32 is)."""
        out: dict[str, dict[str, float]] = {}
        for task, before in self.metrics_fp32.items():
            out[task] = {}
            for metric, value in before.items():
                after = self.metrics_low[task][metric]
                if value == 0:
                    change = 0.0 if after == 0 else float("inf")
                else:
                    change = (after - value) / abs(value)
                out[task][metric] = round(change, 12)
        return out

    def worst_loss(self) -> float:
        """The largest relative change of a task's primary metric in its *worse* direction (0 if none got worse).

        Every metric counts for a task without a recorded primary one.
        """
        worst = 0.0
        for task, changes in self.relative_changes().items():
            for metric, change in changes.items():
                if task in self.primary and metric != self.primary[task]:
                    continue
                up = self.higher_is_better.get(task, {}).get(metric, True)
                worst = max(worst, -change if up else change)
        return worst

    def table(self) -> str:
        """The metrics before and after as an aligned text table (one row per task and metric)."""
        rows = [("task", "metric", "fp32", self.precision, "change")]
        changes = self.relative_changes()
        for task, before in self.metrics_fp32.items():
            for metric, value in before.items():
                up = self.higher_is_better.get(task, {}).get(metric)
                arrow = "" if up is None else (" (higher is better)" if up else " (lower is better)")
                star = "*" if self.primary.get(task) == metric else ""
                rows.append((task, star + metric + arrow, f"{value:.4f}", f"{self.metrics_low[task][metric]:.4f}",
                             f"{100 * changes[task][metric]:+.2f}%"))
        if len(rows) == 1:
            rows += [(task, "output rel. RMS error", "", f"{err:.4f}", "") for task, err in self.output_error.items()]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                         for r in rows)


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def calibration_arrays(calibration: Iterable[Any], channels: int, *, limit: int | None = None) -> list[np.ndarray]:
    """The calibration batches as float32 ``[N, C, H, W]`` arrays.

    ``calibration`` yields batches: tensors or arrays ``[N, C, H, W]``, or
    ``(images, targets)`` pairs as a DataLoader gives them (the targets are
    ignored). Images should come from the training data, prepared exactly as
    the network's input (normalised if the network expects it).

    Args:
        calibration: the batches.
        channels: the network's input channels.
        limit: stop after this many images (None: all).

    Returns:
        The batches as contiguous float32 arrays.

    Raises:
        ExportError: no batches, or a batch that is not ``[N, C, H, W]`` with ``C == channels``.

    Examples:
        >>> import torch
        >>> from mtgraph.exporters import calibration_arrays
        >>> batches = calibration_arrays([(torch.rand(4, 3, 8, 8), {}), torch.rand(2, 3, 8, 8)], channels=3)
        >>> [b.shape for b in batches]
        [(4, 3, 8, 8), (2, 3, 8, 8)]
        >>> calibration_arrays([], channels=3)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ExportError: calibration gave no batches; int8 needs a few batches of training images ...
    """
    if isinstance(calibration, (str, bytes)) or not isinstance(calibration, Iterable):
        raise ExportError(f"calibration must be an iterable of image batches, got {type(calibration).__name__}")
    out: list[np.ndarray] = []
    seen = 0
    for k, item in enumerate(calibration):
        images = item[0] if isinstance(item, (tuple, list)) else item
        array = _as_array(images)
        if array.ndim != 4 or array.shape[1] != channels or array.shape[0] < 1:
            raise ExportError(
                f"calibration batch {k} has shape {list(array.shape)}; expected [N, {channels}, H, W] images "
                "(or (images, targets) pairs)"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise ExportError(f"calibration batch {k} has dtype {array.dtype}; expected floating-point images")
        out.append(np.ascontiguousarray(array, dtype=np.float32))
        seen += array.shape[0]
        if limit is not None and seen >= limit:
            break
    if not out:
        raise ExportError(
            "calibration gave no batches; int8 needs a few batches of training images (e.g. "
            "[images for images, _ in itertools.islice(train_loader, 8)]) to measure activation ranges"
        )
    return out


#: Operators that compute (and that quantisation makes cheaper); the last one before each output stays float32.
_COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def output_layers(model: Any) -> list[str]:
    """Names of the nodes from each graph output back to (and including) its last Conv/Gemm/MatMul.

    These stay in float32 when quantising: a task's output is read as a
    number (depth in metres, a normal vector, a logit) and 256 levels over
    its range are too coarse for it, while that last layer is a small part of
    the network's compute (a 1x1 convolution of a head, typically). Nodes
    must be named (every exporter's output is).

    Examples:
        >>> from onnx import TensorProto, helper
        >>> from mtgraph.exporters.quantize import output_layers
        >>> nodes = [helper.make_node("Conv", ["input", "w1"], ["a"], name="stem"),
        ...          helper.make_node("Relu", ["a"], ["b"], name="relu"),
        ...          helper.make_node("Conv", ["b", "w2"], ["c"], name="head"),
        ...          helper.make_node("Resize", ["c", "", "scales"], ["depth"], name="upsample")]
        >>> value = helper.make_tensor_value_info
        >>> graph = helper.make_graph(nodes, "g", [value("input", TensorProto.FLOAT, None)],
        ...                           [value("depth", TensorProto.FLOAT, None)])
        >>> output_layers(helper.make_model(graph))
        ['head', 'upsample']
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    keep: dict[str, None] = {}
    for output in model.graph.output:
        node = producer.get(output.name)
        while node is not None:
            keep[node.name] = None
            if node.op_type in _COMPUTE_OPS:
                break
            node = next((producer[i] for i in node.input if i in producer), None)
    return sorted(keep)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of arrays."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self.name = name
        self.batches = batches
        self._iter: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self.name: batch}

    def rewind(self) -> None:
        self._iter = iter(self.batches)


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str], batches: list[np.ndarray],
                  *, input_name: str = "input") -> str:
    """Write the static int8 (QDQ) quantisation of the float32 ONNX model ``src`` to ``dst``.

    Weights are int8, symmetric, per output channel, in a 7-bit range;
    activations uint8 with min/max ranges measured by running ``src`` on
    ``batches``. The model is
    first prepared as onnxruntime recommends (shape inference and basic
    graph optimisation, so Conv+BatchNorm are one Conv before ranges are taken).
    Each output's last layer stays float32 (:func:`output_layers`): quantising
    it cost a depth head 2.7 % of its RMSE (6 % of its mean absolute error) on
    a small model, keeping it costs a 1x1 convolution per task.

    The 7-bit weight range (onnxruntime's ``reduce_range``) avoids the
    saturation of the uint8 x int8 multiply-add that CPUs without VNNI
    (AVX2, AVX-512 without VNNI) use: on such a CPU, on that model, the
    depth RMSE went from +1.2 % to +0.18 % of float32's (mean absolute error
    +2.3 % to +0.4 %); it costs nothing in speed, and on a VNNI CPU half a
    bit of weight precision.

    Args:
        src: the float32 model.
        dst: where to write the int8 model.
        batches: calibration batches (see :func:`calibration_arrays`).
        input_name: the model's input.

    Returns:
        A one-line description of the method, for reports.

    Raises:
        ExportError: onnxruntime's quantiser fails (the message says where).

    Examples:
        >>> import tempfile
        >>> import numpy as np, onnx
        >>> from onnx import TensorProto, helper, numpy_helper
        >>> from mtgraph.exporters import quantize_int8
        >>> rng = np.random.default_rng(0)
        >>> weights = [numpy_helper.from_array(rng.standard_normal((4, c, 3, 3)).astype(np.float32), f"w{k}")
        ...            for k, c in enumerate((3, 4))]
        >>> nodes = [helper.make_node("Conv", ["input", "w0"], ["a"], pads=[1, 1, 1, 1], name="body"),
        ...          helper.make_node("Relu", ["a"], ["b"], name="relu"),
        ...          helper.make_node("Conv", ["b", "w1"], ["out"], pads=[1, 1, 1, 1], name="head")]
        >>> graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        ...                           [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 8, 8])], weights)
        >>> batches = [rng.random((2, 3, 8, 8), dtype=np.float32)]
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), f"{folder}/f.onnx")
        ...     method = quantize_int8(f"{folder}/f.onnx", f"{folder}/q.onnx", batches)
        ...     ops = [n.op_type for n in onnx.load(f"{folder}/q.onnx").graph.node]
        >>> print(method)  # doctest: +NORMALIZE_WHITESPACE
        QDQ, int8 weights per channel (7-bit range), uint8 activations, min/max over 2 calibration images;
        each output's last layer float32
        >>> "QuantizeLinear" in ops, ops.count("Conv")  # the body is quantised, the head stays float32
        (True, 2)
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mtgraph.exporters.onnx import quiet

    images = sum(b.shape[0] for b in batches)
    with tempfile.TemporaryDirectory(prefix="mtgraph-quant-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        try:
            with quiet():
                # Symbolic shape inference cannot follow every dynamic height/width; onnx's own inference can.
                quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
                model = onnx.load(str(prepared), load_external_data=False)
                for k, node in enumerate(model.graph.node):  # the quantiser selects nodes by name
                    if not node.name:
                        node.name = f"{node.op_type}_{k}"
                onnx.save(model, str(prepared))
                quantize_static(
                    str(prepared),
                    str(dst),
                    _Reader(input_name, batches),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    reduce_range=True,
                    calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=output_layers(model),
                    # Calibration runs on this folder's augmented copy; keep every file of it in our own folder.
                    extra_options={"CalibTensorRangeSymmetric": False},
                    calibration_providers=["CPUExecutionProvider"],
                )
        except Exception as exc:
            raise ExportError(f"int8 quantisation failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return (f"QDQ, int8 weights per channel (7-bit range), uint8 activations, min/max over {images} calibration "
            "images; each output's last layer float32")


def convert_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> str:
    """Write a float16 version of the float32 model ``src`` to ``dst`` (inputs and outputs stay float32).

    Values beyond float16's range are clamped to it (±65504), tiny weights
    to its smallest normal value; this is onnxruntime's converter.

    Args:
        src: the float32 model.
        dst: where to write the float16 model.

    Returns:
        A one-line description of the conversion.

    Raises:
        ExportError: the conversion fails.

    Examples:
        >>> import tempfile
        >>> import numpy as np, onnx
        >>> from onnx import TensorProto, helper, numpy_helper
        >>> from mtgraph.exporters import convert_fp16
        >>> weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
        >>> graph = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["out"])], "g",
        ...                           [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2])],
        ...                           [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2])], [weight])
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), f"{folder}/f.onnx")
        ...     _ = convert_fp16(f"{folder}/f.onnx", f"{folder}/h.onnx")
        ...     model = onnx.load(f"{folder}/h.onnx")
        >>> model.graph.initializer[0].data_type == TensorProto.FLOAT16, model.graph.input[0].type.tensor_type.elem_type
        (True, 1)
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    from mtgraph.exporters.onnx import quiet

    try:
        with quiet():
            model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
            # The converter appends the input casts at the end of the node list; the ONNX checker wants topological order.
            wrapped = OnnxModel(model)
            wrapped.topological_sort()
            onnx.save(wrapped.model, str(dst))
    except Exception as exc:
        raise ExportError(f"float16 conversion failed: {type(exc).__name__}: {exc}") from exc
    return "float16 weights and activations (onnxruntime converter), float32 input and outputs"


def relative_error(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per output, ``||other - reference|| / ||reference||`` (0 when both are zero)."""
    out = {}
    for name, ref in reference.items():
        ref64 = np.asarray(ref, dtype=np.float64)
        diff = np.linalg.norm(np.asarray(other[name], dtype=np.float64) - ref64)
        norm = np.linalg.norm(ref64)
        out[name] = float(diff / norm) if norm > 0 else (0.0 if diff == 0 else float("inf"))
    return out
