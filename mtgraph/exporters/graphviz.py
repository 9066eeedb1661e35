"""Drawing a multi-task architecture the way the papers do (MTSL fig. 2/3, AdaShare fig. 1).

The input is at the top, each backbone level is one row (``rank=same``) and
the task heads are ovals at the bottom. Every IR node is exactly one drawn
node:

* a block carries a band of its tasks' colours along its top (one colour: a
  task-specific block; several: a block shared by those tasks, which it also
  lists); its text sits on white below the band, never over the colours;
* a skip is dashed, a gate is a diamond, a head is an oval named by its task;
* an edge carries one coloured line per task flowing along it;
* with a ParamStore, a skip connection of an encoder-decoder (a tensor a
  node reads that was computed more than one level earlier, see
  :func:`mtgraph.ir.members.long_edges`) is a dotted edge from the node that
  computed it, labelled with the tensor's member name.
* the caption above the diagram holds the title, the totals and a legend: each
  task's colour and what the shapes mean.

With a ParamStore the nodes show block names and their cost (MACs per image
and parameters, in the unit that fits), the heads show the cost of the task's
whole path (from :func:`mtgraph.cost`).
"""

from __future__ import annotations

import html
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import graphviz

from mtgraph.analysis.cost import CostReport, cost, format_macs, format_params
from mtgraph.errors import ExportError
from mtgraph.exporters.onnx import _target
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.members import long_edges
from mtgraph.ir.nodes import Block, Gate, Head, Input, Skip, head_weights
from mtgraph.ir.verify import verify
from mtgraph.modules import MemberHead, MixGate
from mtgraph.params import ParamStore
from mtgraph.persist import atomic_write_bytes

__all__ = ["FORMATS", "PALETTE", "NEUTRAL", "task_colors", "dot_source", "render", "dot_available", "format_macs"]

#: Output formats :func:`render` writes.
FORMATS = ("dot", "svg", "png", "pdf")

#: (fill, line) colours per task, in task order: ColorBrewer "Paired" then "Set3"/"Dark2" pairs.
PALETTE: tuple[tuple[str, str], ...] = (
    ("#a6cee3", "#1f78b4"),
    ("#b2df8a", "#33a02c"),
    ("#fb9a99", "#e31a1c"),
    ("#fdbf6f", "#ff7f00"),
    ("#cab2d6", "#6a3d9a"),
    ("#ffff99", "#b15928"),
    ("#8dd3c7", "#1b9e77"),
    ("#fccde5", "#e7298a"),
    ("#d9ef8b", "#66a61e"),
    ("#bebada", "#7570b3"),
)

#: (fill, line) of nodes that serve no particular task (the input).
NEUTRAL = ("#eeeeee", "#555555")

_INSTALL = (
    "install Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz; "
    "conda: conda install -c conda-forge graphviz)"
)


def task_colors(tasks: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The fixed (fill, line) colour pair of each task, by its position in ``tasks``.

    Args:
        tasks: task names, in the graph's order.

    Returns:
        ``{task: (fill, line)}``; the palette repeats after ten tasks.

    Examples:
        >>> from mtgraph.exporters import task_colors
        >>> task_colors(["seg", "depth"])
        {'seg': ('#a6cee3', '#1f78b4'), 'depth': ('#b2df8a', '#33a02c')}
    """
    return {t: PALETTE[k % len(PALETTE)] for k, t in enumerate(tasks)}


def _block_name(params: ParamStore | None, block: int) -> str:
    if params is None:
        return f"block {block}"
    return f"b{block} {params.backbone.blocks[block].name}"


def _gate_note(module: object) -> str:
    if not isinstance(module, MixGate):
        return ""
    probs = " / ".join(f"{p:.2f}" for p in module.probabilities().detach().tolist())
    mode = "" if module.mode == "softmax" else f" ({module.mode})"
    return f"p = {probs}{mode}"


def _caption(title: str, report: CostReport | None, tasks: Sequence[str], colors: dict[str, tuple[str, str]]) -> str:
    """The caption above the diagram (an HTML-like Graphviz label): title, totals and the legend."""
    # One line of "■ task" entries, each square in the colour of the task's bands.
    swatches = " &#160; ".join(
        f'<FONT COLOR="{colors[t][0]}" POINT-SIZE="16">&#9632;</FONT> {html.escape(t)}' for t in tasks
    )
    rows = [f"<TR><TD><B>{html.escape(title)}</B></TD></TR>"]
    if report is not None:
        shape = ", ".join(map(str, report.input_shape))
        totals = (f"total {format_macs(report.total_macs)} · {format_params(report.total_params)} · shared "
                  f"{format_macs(report.shared_macs)} (MACs per image of input [{shape}])")
        rows.append(f"<TR><TD>{html.escape(totals)}</TD></TR>")
    rows.append(f"<TR><TD>{swatches}</TD></TR>")
    key = ("colour band on a box: the tasks running it (several colours: shared) · dashed box: skip · "
           "diamond: gate · oval: a task's head")
    rows.append(f'<TR><TD><FONT POINT-SIZE="9">{html.escape(key)}</FONT></TD></TR>')
    return f'<<TABLE BORDER="0" CELLSPACING="2" CELLPADDING="1">{"".join(rows)}</TABLE>>'


def dot_source(
    graph: MTGraph, params: ParamStore | None = None, *, title: str | None = None, report: CostReport | None = None
) -> str:
    """The Graphviz DOT text of ``graph`` (see the module docstring for the drawing conventions).

    Args:
        graph: the architecture.
        params: its store, to show block names and costs (None: structure only).
        title: a caption above the diagram.
        report: ``cost(graph, params)`` when the caller already has it (None: measured here).

    Returns:
        The DOT source.

    Raises:
        VerifyError: ``graph`` does not verify (against ``params`` when given).

    Examples:
        >>> import mtgraph
        >>> from mtgraph.exporters import dot_source
        >>> graph = mtgraph.from_groups(2, ["S", "D"], [[["S", "D"]], [["S"], ["D"]]])
        >>> source = dot_source(graph, title="two tasks")
        >>> source.splitlines()[0], source.count("shape=ellipse")  # one oval per task head
        ('digraph mtgraph {', 2)
        >>> source.count('<TD BGCOLOR="#a6cee3" HEIGHT="7">')  # S's colour band: block 0 (shared with D), block 1
        2
    """
    if params is not None:
        verify(graph, num_blocks=params.backbone.num_blocks, weight_keys=set(params.keys()))
    else:
        verify(graph)
    tasks = graph.tasks
    colors = task_colors(tasks)
    if report is None and params is not None:
        report = cost(graph, params)
    served = graph.served
    calls: dict[str, int] = {}
    for node in graph.nodes:
        key = getattr(node, "weights", None)
        if isinstance(node, (Block, Skip)) and key is not None:
            calls[key] = calls.get(key, 0) + 1

    def in_order(ids: frozenset[str]) -> list[str]:
        return [t for t in tasks if t in ids]

    def outline(ids: frozenset[str]) -> str:
        members = in_order(ids)
        return colors[members[0]][1] if len(members) == 1 else NEUTRAL[1]

    def boxed(ids: frozenset[str], lines: list[str], *, dashed: bool = False) -> dict[str, str]:
        """A box with its tasks' colour band on top and its text on white below it."""
        band = [colors[t][0] for t in in_order(ids)] or [NEUTRAL[0]]
        cells = "".join(f'<TD BGCOLOR="{fill}" HEIGHT="7"></TD>' for fill in band)
        text = "<BR/>".join(html.escape(line) for line in lines if line)
        label = (f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="2"><TR>{cells}</TR>'
                 f'<TR><TD COLSPAN="{len(band)}">{text}</TD></TR></TABLE>>')
        style = "filled,dashed" if dashed else "filled"
        return {"label": label, "shape": "box", "style": style, "fillcolor": "white", "color": outline(ids),
                "margin": "0.03"}

    def cost_line(i: int) -> str:
        if report is None:
            return ""
        node_cost = report.nodes[i]
        return f"{format_macs(node_cost.macs)} · {format_params(node_cost.params)}"

    dot = graphviz.Digraph("mtgraph")
    dot.attr(rankdir="TB", nodesep="0.3", ranksep="0.45", fontname="Helvetica", fontsize="12",
             label=_caption(title or "multi-task architecture", report, tasks, colors), labelloc="t")
    dot.attr("node", fontname="Helvetica", fontsize="10", shape="box", penwidth="1.2")
    dot.attr("edge", arrowsize="0.6")

    rows: dict[int, list[int]] = {}
    head_ids: list[int] = []
    attrs: dict[int, dict[str, str]] = {}
    for i, node in enumerate(graph.nodes):
        members = in_order(served[i])
        listing = ", ".join(members) if len(members) > 1 else ""
        if isinstance(node, Input):
            shape = "" if params is None else f"[{', '.join(map(str, params.backbone.input_shape))}]"
            attrs[i] = {**boxed(frozenset(), ["input", shape]), "color": NEUTRAL[1]}
            continue
        if isinstance(node, (Block, Skip)):
            rows.setdefault(node.block, []).append(i)
            lines = [_block_name(params, node.block)]
            if isinstance(node, Skip):
                kind = "identity" if node.weights is None else "projection"
                if params is not None:
                    kind = params.backbone.blocks[node.block].shortcut.kind
                lines = [f"skip {lines[0]}", f"({kind} shortcut)"]
            if listing:
                lines.append(listing)
            if node.weights is not None and calls.get(node.weights, 0) > 1:
                lines.append(f"w={node.weights} (shared)")
            if not (isinstance(node, Skip) and node.weights is None):  # an identity skip costs nothing
                lines.append(cost_line(i))
            attrs[i] = boxed(served[i], lines, dashed=isinstance(node, Skip))
        elif isinstance(node, Gate):
            note = _gate_note(params[node.weights]) if params is not None else ""
            lines = [f"gate {node.task}", note]
            # White inside, the task's colour as a thick outline: the text is never drawn over colour.
            attrs[i] = {"label": "\\n".join(line for line in lines if line), "shape": "diamond", "style": "filled",
                        "fillcolor": "white", "color": outline(served[i]), "penwidth": "2.5"}
        elif isinstance(node, Head):
            head_ids.append(i)
            lines = [node.task]
            if report is not None:
                path = report.tasks[node.task]
                lines.append(f"head {cost_line(i)}")
                lines.append(f"path {format_macs(path.macs)} · {format_params(path.params)}")
            fill, line = colors[node.task]
            attrs[i] = {
                "label": "\\n".join(lines),
                "shape": "ellipse",
                "style": "filled",
                "fillcolor": fill,
                "color": line,
            }

    with dot.subgraph(name="input_row") as row:
        row.attr(rank="source")
        row.node("n0", **attrs[0])
    for block in sorted(rows):
        with dot.subgraph(name=f"row_{block}") as row:
            row.attr(rank="same")
            for i in rows[block]:
                row.node(f"n{i}", **attrs[i])
    for i, node in enumerate(graph.nodes):
        if isinstance(node, Gate):
            dot.node(f"n{i}", **attrs[i])
    with dot.subgraph(name="heads_row") as row:
        row.attr(rank="sink")
        for i in head_ids:
            row.node(f"n{i}", **attrs[i])

    for i, node in enumerate(graph.nodes):
        flowing = in_order(served[i])
        color = ":".join(colors[t][1] for t in flowing) if flowing else NEUTRAL[1]
        for src in node.srcs:
            dot.edge(f"n{src}", f"n{i}", color=color, style="dashed" if isinstance(node, Skip) else "solid")
    if params is not None:
        reads = {t: m.index for t, m in ((t, params[head_weights(t)]) for t in tasks) if isinstance(m, MemberHead)}
        for edge in long_edges(graph, params.signature, reads):
            flowing = in_order(served[edge.consumer])
            color = ":".join(colors[t][1] for t in flowing) if flowing else NEUTRAL[1]
            dot.edge(
                f"n{edge.origin}", f"n{edge.consumer}", color=color, style="dotted", constraint="false",
                label=edge.member, fontsize="8", fontcolor=NEUTRAL[1],
            )
    return dot.source


def dot_available() -> bool:
    """True when Graphviz's ``dot`` program is on PATH (needed for svg/png/pdf)."""
    return shutil.which("dot") is not None


def _output_path(path: str | os.PathLike[str], fmt: str) -> Path:
    target = Path(path)
    suffix = target.suffix.lower()
    allowed = {f".{fmt}"} | ({".gv"} if fmt == "dot" else set())
    if suffix in allowed:
        return target
    known = {f".{f}" for f in FORMATS} | {".gv"}
    if suffix in known:
        raise ExportError(f"{str(target)!r} ends in {target.suffix} but format is {fmt!r}; make them agree")
    return target.with_name(f"{target.name}.{fmt}")


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise ExportError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc


def render(
    graph: MTGraph,
    params: ParamStore | None,
    path: str | os.PathLike[str],
    *,
    format: str = "svg",  # the name graphviz itself uses
    title: str | None = None,
    report: CostReport | None = None,
) -> Path:
    """Draw ``graph`` into ``path`` as ``dot``, ``svg``, ``png`` or ``pdf``; return the path written.

    ``params`` (or None) adds block names, GMac and parameters per node and
    per task. A path without the format's suffix gets it appended. svg, png
    and pdf need Graphviz's ``dot`` program: when it is missing, the DOT source
    is written beside ``path`` (suffix ``.dot``) and ExportError says how to
    install Graphviz. Files are written atomically.

    **Overwriting:** an existing file of the same name is replaced,
    atomically; a failed render leaves it as it was.

    Args:
        graph: the architecture.
        params: its store (or None).
        path: the output file; its folder must exist.
        format: ``dot``, ``svg``, ``png`` or ``pdf``.
        title: a caption above the diagram.
        report: ``cost(graph, params)`` when the caller already has it (None: measured here).

    Returns:
        The path written (``path`` with the format's suffix).

    Raises:
        ExportError: an unknown format, a suffix that contradicts it, an
            unwritable path, or Graphviz missing or failing.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.from_groups(2, ["S", "D"], [[["S", "D"]], [["S"], ["D"]]])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> import tempfile
        >>> from mtgraph.exporters import render
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = render(graph, params, f"{folder}/architecture", format="svg")
        ...     svg = path.read_text()
        >>> path.name, "<svg" in svg
        ('architecture.svg', True)
    """
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown diagram format {format!r}; use one of {list(FORMATS)}")
    target = _target(_output_path(path, fmt))
    source = dot_source(graph, params, title=title, report=report)
    if fmt == "dot":
        _write(target, source.encode())
        return target
    try:
        data = graphviz.Source(source).pipe(format=fmt, quiet=True)
    except graphviz.ExecutableNotFound as exc:
        fallback = target.with_suffix(".dot")
        _write(fallback, source.encode())
        raise ExportError(
            f"cannot draw {str(target)!r}: Graphviz's 'dot' program was not found on PATH. The diagram source was "
            f"written to {str(fallback)!r}; {_INSTALL}, then run again or convert it with "
            f"'dot -T{fmt} {fallback.name} -o {target.name}'"
        ) from exc
    except graphviz.CalledProcessError as exc:
        detail = (
            (exc.stderr or b"").decode(errors="replace").strip() if isinstance(exc.stderr, bytes) else str(exc.stderr)
        )
        raise ExportError(f"Graphviz failed to draw {str(target)!r}: {detail or exc}") from exc
    _write(target, data)
    return target
