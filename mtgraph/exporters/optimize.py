"""onnxruntime's graph optimisations, run once at export and stored in the file.

onnxruntime rewrites every model it opens (constant folding, Conv+BatchNorm
and Conv+activation fusion, and at the highest level a blocked memory layout
for convolutions). Doing it at export and saving the result means a
deployment opens the file without that work, and what was parity-checked is
exactly what runs.

Levels (onnxruntime's names):

* ``"all"`` (default): every optimisation, including the CPU's blocked
  ("NCHWc") layout. The file is then **specific to the machine's CPU
  family** (the block size follows the vector width: AVX2 and AVX-512 differ)
  and to the CPU provider; the metadata records both and
  :func:`~mtgraph.exporters.open_session` refuses a file optimised for another
  CPU family rather than compute wrong values.
* ``"basic"``: only rewrites that keep the model portable across machines and
  providers (constant folding, fusing BatchNorm into Conv). Use it for a
  model that runs elsewhere, or on a GPU.
* ``"none"``: the exporter's graph as it is (BatchNorm is still folded by
  torch's exporter).
"""

from __future__ import annotations

import os
from collections import Counter

from mtgraph.errors import ExportError

__all__ = ["OPTIMIZATION_LEVELS", "optimize_onnx", "cpu_family", "op_counts", "stored_optimization"]

#: Optimisation levels accepted by :func:`optimize_onnx`, most thorough first.
OPTIMIZATION_LEVELS = ("all", "extended", "basic", "none")

#: Levels whose result depends on the CPU and the CPU provider.
MACHINE_SPECIFIC = ("all",)


def cpu_family() -> str:
    """The vector instruction family of this CPU as torch reports it (``AVX512``, ``AVX2``, ``DEFAULT``...).

    onnxruntime's blocked convolution layout follows the same split, so a
    file optimised at level ``"all"`` records it.

    Examples:
        >>> from mtgraph.exporters import cpu_family
        >>> isinstance(cpu_family(), str) and cpu_family() != ""
        True
    """
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def optimization_note(level: str) -> str:
    """The ``mtgraph.optimization`` metadata value for a file optimised at ``level`` on this machine."""
    import onnxruntime as ort

    if level == "none":
        return "none"
    note = f"{level}; onnxruntime {ort.__version__}"
    if level in MACHINE_SPECIFIC:
        note += f"; CPUExecutionProvider; cpu {cpu_family()}"
    return note


def stored_optimization(note: str) -> tuple[str, str | None]:
    """(level, CPU family or None) from a ``mtgraph.optimization`` metadata value.

    Examples:
        >>> from mtgraph.exporters.optimize import stored_optimization
        >>> stored_optimization("all; onnxruntime 1.20.0; CPUExecutionProvider; cpu AVX2")
        ('all', 'AVX2')
        >>> stored_optimization("none")
        ('none', None)
    """
    parts = [p.strip() for p in note.split(";")]
    family = next((p[len("cpu "):] for p in parts if p.startswith("cpu ")), None)
    return parts[0], family


def optimize_onnx(src: str | os.PathLike[str], dst: str | os.PathLike[str], level: str = "all") -> None:
    """Run onnxruntime's graph optimisations at ``level`` on the model ``src`` and save the result as ``dst``.

    Args:
        src: the model to optimise.
        dst: where to write the optimised model (may equal ``src``).
        level: one of :data:`OPTIMIZATION_LEVELS` (``"none"`` copies the file).

    Raises:
        ExportError: an unknown level, or onnxruntime cannot open the model.

    Examples:
        >>> import tempfile
        >>> import numpy as np, onnx
        >>> from onnx import TensorProto, helper, numpy_helper
        >>> from mtgraph.exporters import op_counts, optimize_onnx
        >>> c = 4
        >>> inits = [numpy_helper.from_array(np.ones((c, 3, 3, 3), np.float32), "w")] + [
        ...     numpy_helper.from_array(np.full(c, v, np.float32), n) for n, v in [("g", 2), ("b", 0), ("m", 0), ("v", 1)]]
        >>> nodes = [helper.make_node("Conv", ["input", "w"], ["y"]),
        ...          helper.make_node("BatchNormalization", ["y", "g", "b", "m", "v"], ["out"])]
        >>> graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        ...                           [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, c, 6, 6])], inits)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), f"{folder}/m.onnx")
        ...     optimize_onnx(f"{folder}/m.onnx", f"{folder}/opt.onnx", level="basic")
        ...     op_counts(f"{folder}/opt.onnx")  # BatchNorm folded into the convolution
        {'Conv': 1}
        >>> optimize_onnx("m.onnx", "opt.onnx", level="max")
        Traceback (most recent call last):
        ...
        mtgraph.errors.ExportError: unknown optimisation level 'max'; use one of all, extended, basic, none
    """
    if level not in OPTIMIZATION_LEVELS:
        raise ExportError(f"unknown optimisation level {level!r}; use one of {', '.join(OPTIMIZATION_LEVELS)}")
    import shutil

    import onnxruntime as ort

    if level == "none":
        if os.fspath(src) != os.fspath(dst):
            shutil.copyfile(src, dst)
        return
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }
    options = ort.SessionOptions()
    options.log_severity_level = 3  # its warning that level "all" is machine-specific is in our docs and metadata
    options.graph_optimization_level = levels[level]
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    same = os.fspath(src) == os.fspath(dst)
    target = os.fspath(dst) + ".optimizing" if same else os.fspath(dst)
    options.optimized_model_filepath = target
    try:
        ort.InferenceSession(os.fspath(src), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot optimise the model: {type(exc).__name__}: {exc}") from exc
    if same:
        os.replace(target, dst)


def op_counts(path: str | os.PathLike[str]) -> dict[str, int]:
    """How many nodes of each operator type the ONNX model at ``path`` has (most frequent first).

    Args:
        path: an ONNX model file.

    Returns:
        ``{op_type: count}``.

    Examples:
        >>> import tempfile, onnx
        >>> from onnx import TensorProto, helper
        >>> from mtgraph.exporters import op_counts
        >>> x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])
        >>> nodes = [helper.make_node("Relu", ["input"], ["a"]), helper.make_node("Relu", ["a"], ["out"])]
        >>> graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     onnx.save(helper.make_model(graph), f"{folder}/m.onnx")
        ...     op_counts(f"{folder}/m.onnx")
        {'Relu': 2}
    """
    import onnx

    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"cannot read the ONNX model {os.fspath(path)!r}: {exc}") from exc
    return dict(Counter(node.op_type for node in model.graph.node).most_common())
