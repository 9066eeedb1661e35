"""The model card: a README.md in every saved architecture folder, saying what the network is and how to use it.

:func:`mtgraph.save` writes it from what it knows (the IR, the cost, the
outputs' shapes, the factory or program it saved) and what the caller adds in
:class:`CardNotes` (how the architecture was learned, metrics, the input
normalisation). A README.md that mtgraph did not write is never replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mtgraph.analysis.cost import cost, format_macs, format_params
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Head
from mtgraph.ir.text import print_graph
from mtgraph.params import ParamStore

if TYPE_CHECKING:
    from mtgraph.spec import ModelSpec

__all__ = ["CARD_FILE", "CARD_MARKER", "CardNotes", "model_card", "may_replace"]

CARD_FILE = "README.md"
#: The card's first line: a README.md starting with it was written by mtgraph and may be replaced.
CARD_MARKER = "<!-- model card written by mtgraph.save; it is replaced on every save -->"


@dataclass(frozen=True)
class CardNotes:
    """What the caller knows about a saved architecture that the files do not say.

    Attributes:
        learned: how the architecture was learned, in a sentence (strategy,
            its settings, data, seed); empty: not stated.
        metrics: task -> metric -> value on held-out data (empty: none known).
        mean: per-channel mean of the input normalisation ``(image - mean) / std``
            (with ``std``; empty: not recorded).
        std: per-channel standard deviation, likewise.

    Examples:
        >>> from mtgraph.card import CardNotes
        >>> CardNotes(learned="MTSL, gamma 0.97, seed 0", metrics={"seg": {"miou": 0.41}}).metrics["seg"]["miou"]
        0.41
    """

    learned: str = ""
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def model_card(graph: MTGraph, params: ParamStore, *, spec: ModelSpec | None, program: bool,
               notes: CardNotes | None = None) -> str:
    """The Markdown text of the model card of ``graph`` and ``params`` as saved.

    Args:
        graph: the architecture.
        params: its modules.
        spec: the factory recorded in ``model.json`` (None: none).
        program: whether a self-contained program was saved (``program/``).
        notes: what the caller adds (see :class:`CardNotes`).

    Returns:
        The card, starting with :data:`CARD_MARKER`.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.card import CardNotes, model_card
        >>> problem = mtgraph.toy_problem()
        >>> graph = mtgraph.one_net(problem.backbone.num_blocks, list(problem.task_names))
        >>> params = mtgraph.ParamStore.create(graph, problem.backbone, problem.heads)
        >>> card = model_card(graph, params, spec=None, program=True, notes=CardNotes(learned="by hand"))
        >>> [line for line in card.splitlines() if line.startswith("| seg")]
        ['| seg | [3, 32, 32] | 418 KMac | 423 |']
    """
    notes = notes or CardNotes()
    report = cost(graph, params)
    backbone = params.backbone
    tasks = list(graph.tasks)
    outputs = {}
    for row in report.nodes:
        node = graph.nodes[row.node]
        if isinstance(node, Head):
            outputs[node.task] = row.shape
    lines = [CARD_MARKER, f"# Multi-task network: {', '.join(tasks)}", ""]
    shared = sum(1 for n in report.nodes if len(n.tasks) > 1 and n.macs > 0)
    from mtgraph import __version__

    nodes = "1 node is" if shared == 1 else f"{shared} nodes are"
    lines += [f"{len(tasks)} tasks on a backbone of {backbone.num_blocks} blocks ({backbone.source}); "
              f"{nodes} shared by several tasks. Saved by mtgraph {__version__}.", ""]
    lines += ["## Use it", "", "```python", "import mtgraph", "",
              'model = mtgraph.open("THIS_FOLDER")        # architecture, weights and the compiled network',
              "outputs = model.network(images)            # {task: tensor}; images as described under Input",
              "```", ""]
    if notes.learned:
        lines += ["## How it was learned", "", notes.learned, ""]
    lines += ["## Input", "", f"- one image per batch row: `[N, {', '.join(map(str, backbone.input_shape))}]`, "
              f"{str(backbone.input_dtype).removeprefix('torch.')}"]
    if notes.mean:
        lines.append(f"- normalisation: `(image - mean) / std` with image in [0, 1], mean `{list(notes.mean)}`, "
                     f"std `{list(notes.std)}`")
    else:
        lines.append("- normalisation: not recorded; feed images prepared as for training")
    lines += ["", "## Outputs", "", "| task | output shape (per image) | MACs on its path | parameters on its path |",
              "|---|---|---:|---:|"]
    for task in tasks:
        path = report.tasks[task]
        shape = _shape(outputs[task]) if task in outputs else "?"
        lines.append(f"| {task} | {shape} | {format_macs(path.macs)} | {path.params} |")
    lines += ["", f"## Cost (per image of input {_shape(report.input_shape)}, batch of one)", "",
              f"Total {format_macs(report.total_macs)}, {format_params(report.total_params)}; "
              f"{format_macs(report.shared_macs)} in nodes shared by several tasks.", "", "```text", str(report), "```", ""]
    if notes.metrics:
        names = sorted({m for values in notes.metrics.values() for m in values})
        lines += ["## Metrics (held-out data)", "", "| task | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        for task, values in notes.metrics.items():
            lines.append(f"| {task} | " + " | ".join(f"{values[m]:.4g}" if m in values else "" for m in names) + " |")
        lines.append("")
    lines += ["## Architecture (mtgraph IR)", "", "```text", print_graph(graph).rstrip(), "```", "", "## Files", "",
              "- `architecture.mtir`: the architecture (IR text); `weights.safetensors`: every weight, once"]
    if spec is not None:
        lines.append(f"- `model.json`: how to rebuild the modules: backbone `{spec.backbone}`, input "
                     f"`{list(spec.input_shape)}`, tasks {', '.join(f'{t.name} ({t.kind})' for t in spec.tasks)}")
    if program:
        lines.append("- `program/`: the backbone's blocks and the heads as torch.export programs (ATen operators, "
                     "no Python code), so the folder reopens without the code that built the model")
    if spec is None and not program:
        lines.append("- neither `model.json` nor `program/`: reopen with `mtgraph.load(folder, backbone, heads)` "
                     "and the modules the architecture was built with")
    return "\n".join(lines) + "\n"


def may_replace(path: Path) -> bool:
    """Whether ``path`` is absent or a card mtgraph wrote (a README.md of the user's is never replaced).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from mtgraph.card import may_replace
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     readme = Path(folder) / "README.md"
        ...     absent = may_replace(readme)
        ...     _ = readme.write_text("# my notes")
        ...     print(absent, may_replace(readme))
        True False
    """
    if not path.exists():
        return True
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().rstrip("\n") == CARD_MARKER
    except (OSError, UnicodeDecodeError):
        return False
