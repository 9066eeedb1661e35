"""Publish evaluation-protocol runs in the docs: one report fragment per strategy and a summary across them.

``mtgraph evaluate --config examples/protocol/<strategy>.toml --out RUNS/<strategy>`` writes a
folder per strategy (``make docs-results-protocol`` runs all five); this script reads their
``results.json`` and writes, under ``--out`` (default ``docs/results/protocol``):

* ``<strategy>/report.md.inc``: the protocol report, its headings one level down, for the
  strategy's page to include; ``<strategy>/results.json`` and ``<strategy>/pareto.png``;
* ``summary.md.inc``: one row per strategy (learned Δ_MTL and its paired differences with
  the matched-compute baselines, with 95 % intervals, and the best structure-recovery score);
* ``adashare/relatedness.md.inc``: papers/002's relatedness claim, read from the policies the
  protocol's AdaShare searches learned (``search/seed-*/record.json``): the mean Hamming
  distance between the policies of tasks of one designed cluster against tasks of different ones.

Nothing is recomputed: every number is read from the runs' ``results.json``.

Usage::

    python examples/protocol_evidence.py RUNS --out docs/results/protocol
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mtgraph.evaluation.report import verdict
from mtgraph.evaluation.stats import t_interval
from mtgraph.strategies.adashare import relatedness_gap

STRATEGIES = ("mtsl", "affinity", "adashare", "grouping", "smtl")

#: The paired comparisons of the summary, as results.json names them, and their column titles.
COMPARISONS = (("width_matched", "learned − width-matched One-Net"), ("random_median", "learned − random (median)"),
               ("one_net", "learned − One-Net"))


def interval(entry: Mapping[str, Any] | None, mean: str = "mean") -> str:
    """``+1.23 [-0.40, +2.86]`` for a summary entry (``—`` when absent; the mean alone for one seed)."""
    if not entry or entry.get(mean) is None:
        return "—"
    text = f"{entry[mean]:+.2f}"
    if entry.get("ci95_low") is None:
        return text
    mark = "" if entry["ci95_low"] <= 0 <= entry["ci95_high"] else (" **✓**" if entry[mean] > 0 else " ✗")
    return f"{text} [{entry['ci95_low']:+.2f}, {entry['ci95_high']:+.2f}]{mark}"


def best_recovery(results: Mapping[str, Any]) -> str:
    """The highest mean ARI of the learned partitions over depths, with its block (``—`` without clusters)."""
    recovery = results.get("structure_recovery")
    if not recovery:
        return "—"
    depths = [d for d in recovery["depths"] if d["learned"].get("mean") is not None]
    if not depths:
        return "—"
    best = max(depths, key=lambda d: d["learned"]["mean"])
    return f"{best['learned']['mean']:+.2f} (block {best['block']})"


def wall_minutes(results: Mapping[str, Any]) -> str:
    """``search + retraining`` wall minutes of a run (its seeds' searches, then every unit's retraining)."""
    search = results.get("search", {})
    searched = sum(float(v) for v in (search.get("seconds") or {}).values())
    retrained = float(search.get("retrain_seconds") or 0.0)
    return f"{searched / 60:.0f} + {retrained / 60:.0f}"


def summary_rows(runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The summary table: one row per strategy, in :data:`STRATEGIES` order."""
    header = ["strategy", "learned GMac", "learned Δ_MTL (%)", *(title for _, title in COMPARISONS),
              "best ARI vs designed clusters", "seeds", "wall time: search + retraining (min)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in STRATEGIES:
        if name not in runs:
            continue
        learned = runs[name]["summary"]["learned"]
        paired = learned.get("paired", {})
        cells = [name, f"{learned['gmac']:.4g}", interval(learned, "delta_mtl_mean"),
                 *(interval(paired.get(key)) for key, _ in COMPARISONS), best_recovery(runs[name]), str(learned["n"]),
                 wall_minutes(runs[name])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def demote(markdown: str) -> str:
    """The report without its title, every heading one level down (it is included under a page's own)."""
    lines = markdown.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(re.sub(r"^(#+) ", r"#\1 ", line) for line in lines).strip() + "\n"


#: AdaShare's per-(task, block) decision as its ``where`` text reads (records written before ``data`` was kept).
_WHERE = re.compile(r"^block (\d+) \(.*\), task (.+)$")


def _policy_row(decision: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{task, block, execute}`` of one AdaShare decision record, or None for its other decisions."""
    data = decision.get("data")
    if isinstance(data, dict) and "execute" in data:
        return data
    match = _WHERE.match(str(decision.get("where", "")))
    if match is None or not str(decision.get("what", "")).startswith(("execute", "skip")):
        return None
    return {"task": match.group(2), "block": int(match.group(1)), "execute": decision["what"] == "execute"}


def policy_matrix(decisions: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> torch.Tensor:
    """bool ``[tasks, gated blocks]`` (True = execute) from AdaShare's per-(task, block) decision records."""
    rows = [row for d in decisions if (row := _policy_row(d)) is not None]
    blocks = sorted({r["block"] for r in rows})
    matrix = torch.zeros(len(tasks), len(blocks), dtype=torch.bool)
    for r in rows:
        matrix[list(tasks).index(r["task"]), blocks.index(r["block"])] = bool(r["execute"])
    return matrix


def relatedness_lines(folder: Path, results: Mapping[str, Any]) -> list[str]:
    """papers/002's claim on the learned policies of every seed: within-cluster vs across-cluster Hamming distance."""
    clusters = (results.get("structure_recovery") or {}).get("clusters")
    tasks = results["protocol"]["tasks"]
    if not clusters:
        return []
    lines = ["| seed | within clusters | across clusters | related closer |", "|---:|---:|---:|---|"]
    gaps = []
    for record in sorted(folder.glob("search/seed-*/record.json")):
        data = json.loads(record.read_text())
        gap = relatedness_gap(policy_matrix(data["decisions"], tasks), tasks, clusters)
        gaps.append(gap.gap)
        lines.append(f"| {data['seed']} | {gap.within:.2f} | {gap.across:.2f} | {'yes' if gap.holds else 'no'} |")
    if not gaps:
        return []
    stats = t_interval(gaps)
    entry = {"mean": stats.mean, "ci95_low": stats.low, "ci95_high": stats.high}
    lines += ["", f"Gap (across − within, blocks; positive: related tasks' policies are closer), mean over "
              f"{len(gaps)} seeds: {interval(entry)}."]
    return lines


def publish(runs_dir: Path, out: Path, strategies: Sequence[str] = STRATEGIES) -> dict[str, Any]:
    """Copy each strategy's report, results and figure into ``out`` and write the summary; return the results read."""
    runs: dict[str, Any] = {}
    for name in strategies:
        folder = runs_dir / name
        if not (folder / "results.json").is_file():
            continue
        runs[name] = json.loads((folder / "results.json").read_text())
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        (target / "report.md.inc").write_text(demote((folder / "report.md").read_text()).replace(
            "](pareto.png)", f"](../results/protocol/{name}/pareto.png)"))
        # Compact JSON: the same values in half the bytes (every clone carries docs/results).
        (target / "results.json").write_text(json.dumps(runs[name], separators=(",", ":"), ensure_ascii=False) + "\n")
        if (folder / "pareto.png").is_file():
            shutil.copyfile(folder / "pareto.png", target / "pareto.png")
        if name == "adashare" and (lines := relatedness_lines(folder, runs[name])):
            (target / "relatedness.md.inc").write_text("\n".join(lines) + "\n")
    if not runs:
        raise SystemExit(f"no evaluation folders with a results.json under {runs_dir} (expected {list(strategies)})")
    some = next(iter(runs.values()))
    schedule = some["protocol"]["schedule"]
    note = (f"Each row: {len(some['protocol']['seeds'])} seeds, {some['protocol']['randoms']} random draws per seed "
            f"within ±{100 * some['protocol']['tolerance']:.0f} % of the learned GMac, every architecture retrained "
            f"from scratch for {schedule['epochs']:g} epochs of {some['protocol']['train_size']} images (batch "
            f"{schedule['batch_size']}, Adam lr {schedule['lr']:g}) and measured on {some['protocol']['val_size']} "
            "validation images. Differences are paired by seed (percentage points of Δ_MTL); **✓** / ✗: the 95 % "
            "interval excludes 0 (learned better / worse).")
    verdicts = []
    for name, results in runs.items():
        paired = results["summary"]["learned"].get("paired", {})
        verdicts.append(f"- {name}: vs the width-matched One-Net, {verdict(paired.get('width_matched'))}; "
                        f"vs random architectures at its GMac, {verdict(paired.get('random_median'))}.")
    text = "\n".join([note, "", *summary_rows(runs), "", *verdicts]) + "\n"
    (out / "summary.md.inc").write_text(text)
    return runs


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and publish."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="folder holding one `mtgraph evaluate` output folder per strategy")
    parser.add_argument("--out", type=Path, default=Path("docs/results/protocol"))
    args = parser.parse_args(argv)
    runs = publish(args.runs, args.out)
    print(f"wrote {args.out / 'summary.md.inc'} and the reports of {sorted(runs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
