"""Exporters: ONNX (with a parity check), an ONNX Runtime helper, Graphviz diagrams and Markdown reports.

* :func:`export_onnx` writes one ONNX file with an ``"input"`` and one output
  per task, checked against torch in ONNX Runtime;
* :func:`open_session` runs such a file and returns ``{task: array}``;
* :func:`render` draws the branched architecture coloured by task;
* :func:`write_report` writes ``report.md`` with costs, diagram, metrics and plots.
"""

from mtgraph.exporters.graphviz import dot_source, render, task_colors
from mtgraph.exporters.onnx import (
    INPUT_NAME,
    ExportResult,
    check_exportable,
    export_onnx,
    initializer_stats,
    select_tasks,
)
from mtgraph.exporters.report import pareto_front, write_report
from mtgraph.exporters.runtime import MultiTaskSession, ProviderWarning, choose_providers, open_session

__all__ = [
    "export_onnx", "ExportResult", "INPUT_NAME", "select_tasks", "check_exportable", "initializer_stats",
    "open_session", "MultiTaskSession", "choose_providers", "ProviderWarning",
    "render", "dot_source", "task_colors",
    "write_report", "pareto_front",
]
