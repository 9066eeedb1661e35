"""``report.md`` of an evaluation: it leads with the learned architecture against the matched-compute baselines.

The report is written from ``results.json`` alone (:func:`report_markdown`),
so it can be regenerated without rerunning anything. Its first table is
"learned vs matched-compute baselines": each architecture's GMac, mean Δ_MTL
with its 95 % interval, and the paired same-seed difference between the
learned architecture and it. A verdict per baseline says whether that
interval excludes zero. The Pareto figure (Δ_MTL vs GMac, interval bars)
needs matplotlib (the ``plots`` extra); without it the report says so.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtgraph.errors import ExportError
from mtgraph.persist import atomic_write_bytes

__all__ = ["REPORT_FILE", "FIGURE_FILE", "report_markdown", "write_report", "verdict", "tree_text"]

REPORT_FILE = "report.md"
FIGURE_FILE = "pareto.png"

_STRUCTURES = {"one_net": "One-Net (every block shared)", "stn": "STN (nothing shared)", "tree": "a tree",
               "other": "a network with skips or gates"}


def _signed(value: Any, digits: int = 2) -> str:
    return "—" if value is None else f"{value:+.{digits}f}"


def _interval(entry: Mapping[str, Any] | None, mean_key: str = "mean") -> str:
    if not entry or entry.get(mean_key) is None:
        return "—"
    mean, low, high = entry[mean_key], entry.get("ci95_low"), entry.get("ci95_high")
    if low is None or high is None:
        return f"{mean:+.2f} (n = 1)"
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def verdict(entry: Mapping[str, Any] | None) -> str:
    """Words for a paired difference "learned − baseline": better, worse, or no difference shown.

    Examples:
        >>> from mtgraph.evaluation.report import verdict
        >>> verdict({"n": 3, "mean": 1.2, "ci95_low": 0.4, "ci95_high": 2.0})
        'better: the 95 % interval excludes 0'
        >>> verdict({"n": 3, "mean": 0.3, "ci95_low": -1.0, "ci95_high": 1.6})
        'no difference shown: the 95 % interval contains 0'
    """
    if not entry or entry.get("mean") is None:
        return "not measured"
    low, high = entry.get("ci95_low"), entry.get("ci95_high")
    if low is None or high is None:
        return "one seed only: no interval"
    if low > 0:
        return "better: the 95 % interval excludes 0"
    if high < 0:
        return "worse: the 95 % interval excludes 0"
    return "no difference shown: the 95 % interval contains 0"


def _gmac(value: Any) -> str:
    return "—" if value is None else f"{value:.4g}"


def tree_text(partitions: list[list[list[str]]]) -> str:
    """Task groups per block range, in words: runs of blocks with the same partition are merged.

    Examples:
        >>> from mtgraph.evaluation.report import tree_text
        >>> tree_text([[["a", "b", "c"]], [["a", "b", "c"]], [["a", "b"], ["c"]], [["a"], ["b"], ["c"]]])
        'blocks 0-1: a+b+c; block 2: a+b, c; block 3: each task alone'
    """
    parts = []
    start = 0
    for b in range(1, len(partitions) + 1):
        if b < len(partitions) and partitions[b] == partitions[start]:
            continue
        groups = partitions[start]
        where = f"block {start}" if b - 1 == start else f"blocks {start}-{b - 1}"
        what = "each task alone" if len(groups) > 1 and all(len(g) == 1 for g in groups) else \
            ", ".join("+".join(g) for g in groups)
        parts.append(f"{where}: {what}")
        start = b
    return "; ".join(parts)


def _learned_section(results: Mapping[str, Any]) -> list[str]:
    learned = results["search"]["learned"]
    structures = {seed: info["structure"] for seed, info in learned.items()}
    lines = ["## What was learned", ""]
    lines += ["| seed | structure | GMac | tasks sharing each block |", "|---:|---|---:|---|"]
    for seed, info in learned.items():
        lines.append(f"| {seed} | {_STRUCTURES.get(info['structure'], info['structure'])} | {_gmac(info['gmac'])} | "
                     f"{tree_text(info['partitions'])} |")
    lines += ["", "The pipelines that build them are in results.json (`search.learned`).", ""]
    trivial = {s for s in structures.values() if s in ("one_net", "stn")}
    if trivial and set(structures.values()) == trivial:
        which = " and ".join(_STRUCTURES[s] for s in sorted(trivial))
        lines += [f"**The strategy learned {which} for every seed, not a tree:** the comparison with the "
                  "matched-compute baselines then tests training, not structure.", ""]
        decisions = [d for seed_decisions in results["search"]["decisions"].values() for d in seed_decisions]
        if decisions:
            accepted = sum(1 for d in decisions if d["accepted"])
            lines += [f"Why: of its {len(decisions)} structural decisions ({len(learned)} seeds), {accepted} were "
                      f"applied and {len(decisions) - accepted} declined; the first seed's:", ""]
            first = next(iter(results["search"]["decisions"].values()))
            lines += [f"- {d['where']}: {d['what']}: {'applied' if d['accepted'] else 'declined'} ({d['reason']})"
                      for d in first[:12]]
            if len(first) > 12:
                lines.append(f"- ... {len(first) - 12} more in results.json")
            lines.append("")
    return lines


def report_markdown(results: Mapping[str, Any], *, figure: str | None = None, figure_note: str = "") -> str:
    """The report's Markdown text from a ``results.json`` document.

    Args:
        results: the evaluation results.
        figure: the Pareto figure's file name to link (None: not drawn).
        figure_note: why there is no figure.

    Examples:
        >>> from mtgraph.evaluation.report import report_markdown
        >>> interval = {"n": 2, "mean": 1.0, "ci95_low": 0.5, "ci95_high": 1.5}
        >>> summary = {"kind": "strategy", "n": 2, "gmac": 0.01, "delta_mtl_mean": 2.0, "ci95_low": 1.0,
        ...            "ci95_high": 3.0, "paired": {"one_net": interval}, "task_deltas": {}}
        >>> results = {"strategy": "mtsl", "paper": "MTSL", "protocol": {"seeds": [0, 1], "randoms": 0,
        ...            "tolerance": 0.05, "tasks": ["seg", "depth"], "schedule": {"epochs": 1, "lr": 0.001,
        ...            "batch_size": 16, "lr_milestones": [0.75], "lr_decay": 0.1, "weight_decay": 0.0}},
        ...            "summary": {"learned": summary}, "search": {"learned": {}, "decisions": {}, "seconds": {}},
        ...            "structure_recovery": None, "notes": [], "config": {}}
        >>> report_markdown(results).splitlines()[4]
        '## Learned vs matched-compute baselines'
    """
    protocol = results["protocol"]
    summary = results["summary"]
    schedule = protocol["schedule"]
    seeds = protocol["seeds"]
    learned = summary.get("learned", {})
    lines = [
        f"# Evaluation of {results['strategy']}: learned vs matched-compute baselines",
        "",
        _intro(results, schedule, seeds),
        "",
        "## Learned vs matched-compute baselines",
        "",
        "| architecture | GMac | Δ_MTL (%) [95 % CI] | learned − this (%) [95 % CI], same seeds | n |",
        "|---|---:|---:|---:|---:|",
    ]
    keys = {"One-Net (width-matched)": "width_matched", "random (median)": "random_median", "One-Net": "one_net"}
    shown = ["learned", "One-Net (width-matched)", "random (median)", "One-Net", "STN"]
    for name in shown:
        entry = summary.get(name)
        if entry is None:
            continue
        label = name
        if name == "random (median)":
            draws = entry.get("draws", {})
            label = f"random (median of {max(draws.values(), default=0)} per seed)"
        if name == "learned":
            difference = "—"
        elif name == "STN":
            difference = _interval(learned, "delta_mtl_mean")  # Δ_MTL is already learned − same-seed STN
        else:
            difference = _interval(learned.get("paired", {}).get(keys[name]))
        lines.append(f"| {label} | {_gmac(entry['gmac'])} | {_interval(entry, 'delta_mtl_mean')} | {difference} | "
                     f"{entry['n']} |")
    lines.append("")
    if learned:
        lines += ["Learned vs:", ""]
        for name, key in (("the width-matched One-Net", "width_matched"), ("the random draws' median", "random_median"),
                          ("One-Net", "one_net")):
            lines.append(f"- {name}: {_interval(learned.get('paired', {}).get(key))} — "
                         f"{verdict(learned.get('paired', {}).get(key))}")
        stn_entry = {"mean": learned.get("delta_mtl_mean"), "ci95_low": learned.get("ci95_low"),
                     "ci95_high": learned.get("ci95_high")}
        lines += [f"- STN: {_interval(stn_entry)} — {verdict(stn_entry)}", ""]

    if results["search"]["learned"]:
        lines += _learned_section(results)
    lines += _recovery_section(results.get("structure_recovery"))
    lines += _task_section(summary, protocol["tasks"])
    lines += ["## Δ_MTL vs GMac", ""]
    if figure:
        lines += [f"![Δ_MTL vs GMac with 95 % intervals]({figure})", ""]
    elif figure_note:
        lines += [f"_{figure_note}_", ""]
    lines += _cost_section(results)
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in results["notes"]] + [""]
    lines += ["## Protocol", "", "Strategy config:", "", "```json", json.dumps(results["config"], indent=1,
                                                                                 sort_keys=True), "```", ""]
    return "\n".join(lines)


def _intro(results: Mapping[str, Any], schedule: Mapping[str, Any], seeds: list[int]) -> str:
    protocol = results["protocol"]
    milestones = ", ".join(f"{m:g}" for m in schedule["lr_milestones"]) or "none"
    return (
        f"{results['strategy']} ({results.get('paper', '')}) on the tasks {', '.join(protocol['tasks'])}, "
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {protocol['randoms']} random draws per seed from the "
        f"strategy's own search space within ±{protocol['tolerance']:.0%} of the learned GMac. Every architecture "
        f"is retrained from scratch with the same schedule ({schedule['epochs']:g} epochs, Adam lr {schedule['lr']:g}, "
        f"weight decay {schedule['weight_decay']:g}, batch {schedule['batch_size']}, lr × {schedule['lr_decay']:g} at "
        f"{milestones} of the run) and measured on the validation data. Δ_MTL (%) is against the single-task "
        "networks trained with the same seed (higher is better); intervals are 95 % Student-t intervals over seeds."
    )


def _recovery_section(recovery: Mapping[str, Any] | None) -> list[str]:
    if not recovery:
        return []
    clusters = " | ".join("{" + ", ".join(g) + "}" for g in recovery["clusters"])
    lines = ["## Structure recovery", "",
             f"Adjusted Rand index of the learned task partition at each block against the designed clusters "
             f"{clusters} (1: the clusters exactly; 0: chance; the random draws' mean is the chance level of this "
             "search space at this cost).", "",
             "| block | learned ARI [95 % CI] | random draws ARI [95 % CI] |", "|---:|---:|---:|"]
    for depth in recovery["depths"]:
        lines.append(f"| {depth['block']} | {_interval(depth['learned'])} | {_interval(depth.get('random'))} |")
    return lines + [""]


def _task_section(summary: Mapping[str, Any], tasks: list[str]) -> list[str]:
    lines = ["## Per task", "", "Each task's relative change against the same-seed STN (%), mean [95 % CI]:", "",
             "| architecture | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for name, entry in summary.items():
        if entry["kind"] == "random" and name != "random (median)":
            continue
        cells = [_interval(entry.get("task_deltas", {}).get(t)) for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Mean metrics per architecture are in results.json (`summary[name].metrics`).", ""]
    return lines


def _cost_section(results: Mapping[str, Any]) -> list[str]:
    search = results["search"]
    lines = ["## Search cost (beside the comparison, not in it)", "",
             "| seed | strategy run wall time (s) |", "|---:|---:|"]
    lines += [f"| {seed} | {seconds:.1f} |" for seed, seconds in search["seconds"].items()]
    lines += ["", f"Retraining every compared architecture took {search.get('retrain_seconds', 0.0):.1f} s in all. "
              f"{search.get('note', '')}", ""]
    return lines


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise ExportError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc


def _pareto_figure(results: Mapping[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    draws = [r for r in results["rows"] if r["kind"] == "random" and r["delta_mtl"] is not None]
    if draws:
        axes.scatter([r["gmac"] for r in draws], [r["delta_mtl"] for r in draws], s=12, color="0.7",
                     label="random draws (each seed)", zorder=1)
    colours = {"strategy": "tab:red", "width_matched": "tab:blue", "random": "0.35", "one_net": "tab:green",
               "stn": "tab:purple"}
    for name, entry in results["summary"].items():
        if entry["delta_mtl_mean"] is None or entry["gmac"] is None or (entry["kind"] == "random" and
                                                                        name != "random (median)"):
            continue
        mean, low, high = entry["delta_mtl_mean"], entry["ci95_low"], entry["ci95_high"]
        error = None if low is None or high is None else [[mean - low], [high - mean]]
        axes.errorbar([entry["gmac"]], [mean], yerr=error, fmt="o", capsize=4, color=colours.get(entry["kind"], "k"),
                      label=name, zorder=2)
    axes.axhline(0.0, color="0.8", linewidth=0.8, zorder=0)
    axes.set_xlabel("GMac per image")
    axes.set_ylabel("Δ_MTL vs same-seed STN (%)")
    axes.set_title("Δ_MTL vs cost (mean, 95 % interval over seeds)")
    axes.legend(fontsize=8, loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    _write(path, buffer.getvalue())


def write_report(folder: str | Path, results: Mapping[str, Any], *, extra: str = "") -> Path:
    """Write ``report.md`` (and ``pareto.png`` when matplotlib is installed) into ``folder``; return the report's path.

    Args:
        folder: the evaluation folder.
        results: the ``results.json`` document.
        extra: Markdown appended at the end (the demo adds its learned architecture).

    Raises:
        ExportError: a file cannot be written.
    """
    root = Path(folder)
    figure: str | None = None
    note = ""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        note = "The figure was skipped: matplotlib is not installed (pip install 'mtgraph[plots]')."
    else:
        _pareto_figure(results, root / FIGURE_FILE)
        figure = FIGURE_FILE
    text = report_markdown(results, figure=figure, figure_note=note)
    if extra.strip():
        text = text.rstrip("\n") + "\n\n" + extra.strip() + "\n"
    path = root / REPORT_FILE
    _write(path, text.encode())
    return path
