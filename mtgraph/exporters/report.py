"""A Markdown report of one architecture: cost table, diagram, metrics and plots.

:func:`write_report` writes ``report.md`` into a folder together with every
file it links to (the diagram, ``cost.json``, the plots), so the folder can be
moved or published as it is. Plots are drawn with matplotlib's Agg canvas
(no display, no global pyplot state) and only for the data given.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtgraph.analysis.cost import CostReport, cost
from mtgraph.errors import ConfigError, ExportError
from mtgraph.exporters.graphviz import dot_available, format_macs, render, task_colors
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.text import print_graph
from mtgraph.params import ParamStore
from mtgraph.persist import atomic_write_bytes

__all__ = ["REPORT_FILE", "EXTRAS_KEYS", "write_report", "pareto_front"]

REPORT_FILE = "report.md"

#: The keys ``extras`` may hold.
EXTRAS_KEYS = ("similarity", "pareto", "pareto_metric", "higher_is_better", "notes")

#: Metrics: row name -> task -> metric name -> value.
Metrics = Mapping[str, Mapping[str, Mapping[str, float | None]]]


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise ExportError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc


def _number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "nan"
    return f"{number:.4g}"


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    return slug or "plot"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------- #
# Validating the inputs
# --------------------------------------------------------------------------- #


def _check_metrics(metrics: Metrics) -> list[tuple[str, str]]:
    """Validate ``metrics``; return its (task, metric) columns in first-seen order."""
    if not isinstance(metrics, Mapping):
        raise ConfigError(f"metrics must map row name -> task -> metric -> value, got {type(metrics).__name__}")
    columns: dict[tuple[str, str], None] = {}
    for row, per_task in metrics.items():
        if not isinstance(per_task, Mapping):
            raise ConfigError(f"metrics[{row!r}] must map task -> metric -> value, got {type(per_task).__name__}")
        for task, values in per_task.items():
            if not isinstance(values, Mapping):
                raise ConfigError(f"metrics[{row!r}][{task!r}] must map metric -> value, got {type(values).__name__}")
            for metric, value in values.items():
                if value is not None and not isinstance(value, (int, float, np.number)):
                    raise ConfigError(f"metrics[{row!r}][{task!r}][{metric!r}] is {value!r}; values must be numbers")
                columns[(str(task), str(metric))] = None
    return list(columns)


def _check_extras(extras: Mapping[str, Any]) -> None:
    if not isinstance(extras, Mapping):
        raise ConfigError(f"extras must be a dict, got {type(extras).__name__}")
    unknown = sorted(set(extras) - set(EXTRAS_KEYS))
    if unknown:
        raise ConfigError(f"unknown extras {unknown}; known keys are {list(EXTRAS_KEYS)}")
    for name, entry in dict(extras.get("similarity") or {}).items():
        if not (isinstance(entry, Sequence) and len(entry) == 2):
            raise ConfigError(f"similarity[{name!r}] must be (labels, matrix)")
        labels, matrix = entry
        array = np.asarray(matrix, dtype=float)
        if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] != len(labels):
            raise ConfigError(
                f"similarity[{name!r}]: the matrix has shape {list(array.shape)} but there are {len(labels)} labels; "
                "it must be square with one row per label"
            )
    for k, point in enumerate(extras.get("pareto") or ()):
        if not (isinstance(point, Sequence) and len(point) == 3):
            raise ConfigError(f"pareto[{k}] must be (label, gmac, value), got {point!r}")


# --------------------------------------------------------------------------- #
# Plots
# --------------------------------------------------------------------------- #


def _matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float) -> Any:
    # The object API with an explicit Agg canvas: no backend switch, no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    _write(path, buffer.getvalue())


def _plot_similarity(name: str, labels: Sequence[str], matrix: Any, path: Path) -> None:
    array = np.asarray(matrix, dtype=float)
    n = len(labels)
    figure = _figure(1.6 + 0.55 * n, 1.2 + 0.5 * n)
    axes = figure.add_subplot()
    image = axes.imshow(array, cmap="viridis")
    axes.set_xticks(range(n), [str(label) for label in labels], rotation=45, ha="right")
    axes.set_yticks(range(n), [str(label) for label in labels])
    if n <= 12:
        middle = (np.nanmin(array) + np.nanmax(array)) / 2 if array.size else 0.0
        for r in range(n):
            for c in range(n):
                color = "black" if array[r, c] > middle else "white"
                axes.text(c, r, f"{array[r, c]:.2f}", ha="center", va="center", fontsize=8, color=color)
    axes.set_title(name)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    _save(figure, path)


def _plot_metrics(metrics: Metrics, columns: list[tuple[str, str]], colors: Mapping[str, str], path: Path) -> None:
    rows = list(metrics)
    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    figure = _figure(4.0 * ncols, 0.6 + 2.6 * nrows)
    for k, (task, metric) in enumerate(columns):
        axes = figure.add_subplot(nrows, ncols, k + 1)
        values = [metrics[r].get(task, {}).get(metric) for r in rows]
        heights = [float("nan") if v is None else float(v) for v in values]
        axes.bar(range(len(rows)), heights, color=colors.get(task, f"C{k % 10}"))
        axes.set_xlim(-0.6, len(rows) - 0.4)
        axes.set_xticks(range(len(rows)), rows, rotation=30, ha="right", fontsize=8)
        axes.set_title(f"{task}: {metric}", fontsize=9)
        axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    _save(figure, path)


def pareto_front(points: Sequence[tuple[str, float, float]], *, higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats on both GMac (lower) and value, by ascending GMac.

    Args:
        points: ``(label, gmac, value)`` per model.
        higher_is_better: the direction of ``value``.

    Returns:
        The indices into ``points`` of the Pareto-optimal models, cheapest first.

    Examples:
        >>> from mtgraph.exporters import pareto_front
        >>> points = [("stn", 3.0, 0.70), ("one-net", 1.0, 0.50), ("tree", 2.0, 0.45)]
        >>> pareto_front(points)  # "tree" costs more than "one-net" and scores lower
        [1, 0]
        >>> pareto_front(points, higher_is_better=False)  # e.g. an error
        [1, 2]
    """
    sign = 1.0 if higher_is_better else -1.0
    order = sorted(range(len(points)), key=lambda k: (float(points[k][1]), -sign * float(points[k][2])))
    front: list[int] = []
    best = -math.inf
    for k in order:
        score = sign * float(points[k][2])
        if score > best:
            front.append(k)
            best = score
    return front


def _plot_pareto(points: Sequence[tuple[str, float, float]], metric: str, higher: bool, path: Path) -> list[int]:
    front = pareto_front(points, higher_is_better=higher)
    figure = _figure(5.5, 4.0)
    axes = figure.add_subplot()
    xs = [float(p[1]) for p in points]
    ys = [float(p[2]) for p in points]
    axes.scatter(xs, ys, color="C0", zorder=3)
    axes.plot([xs[k] for k in front], [ys[k] for k in front], color="C3", drawstyle="steps-post", label="Pareto front")
    for p in points:
        axes.annotate(str(p[0]), (float(p[1]), float(p[2])), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xlabel("GMac per image")
    axes.set_ylabel(metric + (" (higher is better)" if higher else " (lower is better)"))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    _save(figure, path)
    return front


# --------------------------------------------------------------------------- #
# Markdown
# --------------------------------------------------------------------------- #


def _giga(macs: int) -> str:
    """GMac with four significant digits (a tiny test network still shows non-zero numbers)."""
    return f"{macs / 1e9:.4g}"


def _mega(count: int) -> str:
    return f"{count / 1e6:.4g}"


def _cost_section(report: CostReport) -> list[str]:
    lines = [
        "## Cost",
        "",
        "MACs per image (batch of one) and parameters; a node shared by several tasks is counted once in the total.",
        "",
        "| task | GMac | params (M) | shared GMac | task-specific GMac |",
        "|---|---:|---:|---:|---:|",
    ]
    for task, tc in report.tasks.items():
        lines.append(
            f"| {_cell(task)} | {_giga(tc.macs)} | {_mega(tc.params)} | {_giga(tc.shared_macs)} | {_giga(tc.specific_macs)} |"
        )
    lines.append(
        f"| **total** | {_giga(report.total_macs)} | {_mega(report.total_params)} | "
        f"{_giga(report.shared_macs)} | {_giga(report.specific_macs)} |"
    )
    lines += [
        "",
        f"Shared: {format_macs(report.shared_macs)}, {report.shared_params:,} parameters · "
        f"task-specific: {format_macs(report.specific_macs)}, {report.specific_params:,} parameters.",
        "",
    ]
    return lines


def _metrics_table(metrics: Metrics, columns: list[tuple[str, str]]) -> list[str]:
    header = "| model | " + " | ".join(f"{_cell(t)} {_cell(m)}" for t, m in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = [header, rule]
    for row, per_task in metrics.items():
        cells = [_number(per_task.get(t, {}).get(m)) for t, m in columns]
        lines.append(f"| {_cell(row)} | " + " | ".join(cells) + " |")
    return lines


def write_report(
    folder: str | os.PathLike[str],
    *,
    graph: MTGraph,
    params: ParamStore,
    title: str,
    metrics: Metrics | None = None,
    extras: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.md`` and the files it links to into ``folder`` (created if needed); return its path.

    The report has the architecture (diagram and IR text), the cost table (per
    task, shared vs task-specific, plus ``cost.json``), a metrics table and
    bar charts when ``metrics`` (row name -> task -> metric -> value) is
    given, and from ``extras``:

    * ``"similarity"``: name -> (labels, square matrix), drawn as heatmaps;
    * ``"pareto"``: a list of (label, gmac, value), drawn with its Pareto
      front; ``"pareto_metric"`` names the value, ``"higher_is_better"``
      (default True) orients it;
    * ``"notes"``: Markdown text appended as a last section.

    Without Graphviz's ``dot`` the diagram is linked as DOT source; without
    matplotlib the plots are skipped (the report says so).

    **Overwriting:** ``report.md`` and the files it links to are replaced
    when they exist; other files in ``folder`` are left alone.

    Args:
        folder: the report folder.
        graph: the architecture.
        params: its store.
        title: the report's title (non-empty).
        metrics: row name -> task -> metric -> value (None: no metrics section).
        extras: optional sections, keyed as above.

    Returns:
        The path of ``report.md``.

    Raises:
        ConfigError: an empty title, or malformed ``metrics`` or ``extras``.
        ExportError: the folder or a file cannot be written.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.from_groups(2, ["S", "D"], [[["S", "D"]], [["S"], ["D"]]])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> import tempfile
        >>> from mtgraph.exporters import write_report
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = write_report(folder, graph=graph, params=params, title="Tree", extras={"notes": "A demo."})
        ...     files, lines = sorted(p.name for p in path.parent.iterdir()), path.read_text().splitlines()
        >>> files, lines[0]
        (['architecture.svg', 'cost.json', 'report.md'], '# Tree')
    """
    if not isinstance(title, str) or not title.strip():
        raise ConfigError("title must be a non-empty string")
    extras = dict(extras or {})
    _check_extras(extras)
    columns = _check_metrics(metrics) if metrics else []
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the report folder {str(out)!r}: {exc.strerror or exc}") from exc
    report = cost(graph, params)
    plots = _matplotlib_available()
    lines = [f"# {title.strip()}", ""]

    lines += ["## Architecture", ""]
    if dot_available():
        diagram = render(graph, params, out / "architecture.svg", format="svg", title=title.strip())
        lines += [f"![architecture diagram]({diagram.name})", ""]
    else:
        diagram = render(graph, params, out / "architecture.dot", format="dot", title=title.strip())
        lines += [
            f"Diagram source: [{diagram.name}]({diagram.name}) (Graphviz's `dot` was not found; "
            "install Graphviz to draw it).",
            "",
        ]
    lines += ["```text", print_graph(graph).rstrip(), "```", ""]

    lines += _cost_section(report)
    _write(out / "cost.json", json.dumps(report.to_dict(), indent=2).encode())
    lines += ["All numbers: [cost.json](cost.json).", ""]

    if metrics:
        lines += ["## Metrics", ""] + _metrics_table(metrics, columns) + [""]
        if plots:
            colors = {t: line for t, (_, line) in task_colors(graph.tasks).items()}
            _plot_metrics(metrics, columns, colors, out / "metrics.png")
            lines += ["![metrics per task](metrics.png)", ""]

    similarity = dict(extras.get("similarity") or {})
    if similarity:
        lines += ["## Similarity", ""]
        for name, (labels, matrix) in similarity.items():
            lines += [f"### {name}", ""]
            if plots:
                file = f"similarity_{_slug(str(name))}.png"
                _plot_similarity(str(name), list(labels), matrix, out / file)
                lines += [f"![{_cell(str(name))}]({file})", ""]
            array = np.asarray(matrix, dtype=float)
            lines += ["| | " + " | ".join(_cell(str(label)) for label in labels) + " |"]
            lines += ["|---|" + "---:|" * len(labels)]
            for label, row in zip(labels, array):
                lines.append(f"| {_cell(str(label))} | " + " | ".join(_number(v) for v in row) + " |")
            lines.append("")

    points = list(extras.get("pareto") or [])
    if points:
        metric = str(extras.get("pareto_metric", "metric"))
        higher = bool(extras.get("higher_is_better", True))
        lines += ["## Cost vs. metric", ""]
        front = pareto_front(points, higher_is_better=higher)
        if plots:
            _plot_pareto(points, metric, higher, out / "pareto.png")
            lines += ["![metric vs GMac](pareto.png)", ""]
        lines += [f"| model | GMac | {_cell(metric)} | on the Pareto front |", "|---|---:|---:|:---:|"]
        for k, (label, gmac, value) in enumerate(points):
            lines.append(
                f"| {_cell(str(label))} | {_number(gmac)} | {_number(value)} | {'yes' if k in front else ''} |"
            )
        lines.append("")

    wants_plots = bool(metrics) or bool(similarity) or bool(points)
    if wants_plots and not plots:
        warnings.warn("matplotlib is not installed; the report has tables but no plots", stacklevel=2)
        lines += ["_Plots were skipped: matplotlib is not installed (pip install matplotlib)._", ""]

    notes = extras.get("notes")
    if notes:
        lines += ["## Notes", "", str(notes).strip(), ""]

    path = out / REPORT_FILE
    _write(path, "\n".join(lines).encode())
    return path
