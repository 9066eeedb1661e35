"""Exporters: ONNX (with a parity check), an ONNX Runtime helper, Graphviz diagrams and Markdown reports.

* :func:`export_onnx` writes one ONNX file with an ``"input"`` and one output
  per task, checked against torch in ONNX Runtime, optimised by onnxruntime,
  optionally quantised to int8 or converted to float16;
* :func:`open_session` runs such a file and returns ``{task: array}``;
* :func:`bench_architecture` times torch eager, ``torch.compile`` and
  onnxruntime (float32, int8) side by side;
* :func:`render` draws the branched architecture coloured by task;
* :func:`write_report` writes ``report.md`` with costs, diagram, metrics and plots.
"""

from mtgraph.exporters.bench import BenchReport, BenchRow, bench_architecture
from mtgraph.exporters.graphviz import dot_source, render, task_colors
from mtgraph.exporters.inductor import TorchCompileWarning, torch_compile
from mtgraph.exporters.metadata import IMAGENET, InputNormalization, read_metadata
from mtgraph.exporters.onnx import (
    INPUT_NAME,
    ExportResult,
    check_exportable,
    export_onnx,
    initializer_stats,
    select_tasks,
)
from mtgraph.exporters.optimize import OPTIMIZATION_LEVELS, cpu_family, op_counts, optimize_onnx
from mtgraph.exporters.quantize import (
    QuantizationReport,
    QuantizationWarning,
    calibration_arrays,
    convert_fp16,
    quantize_int8,
)
from mtgraph.exporters.report import pareto_front, write_report
from mtgraph.exporters.runtime import (
    MultiTaskSession,
    ProviderWarning,
    SessionModule,
    choose_providers,
    open_session,
)

__all__ = [
    "export_onnx", "ExportResult", "INPUT_NAME", "select_tasks", "check_exportable", "initializer_stats",
    "InputNormalization", "IMAGENET", "read_metadata",
    "optimize_onnx", "OPTIMIZATION_LEVELS", "op_counts", "cpu_family",
    "quantize_int8", "convert_fp16", "calibration_arrays", "QuantizationReport", "QuantizationWarning",
    "open_session", "MultiTaskSession", "SessionModule", "choose_providers", "ProviderWarning",
    "bench_architecture", "BenchReport", "BenchRow",
    "torch_compile", "TorchCompileWarning",
    "render", "dot_source", "task_colors",
    "write_report", "pareto_front",
]
