"""examples/protocol_evidence.py publishes evaluation runs as they are: numbers copied, headings demoted, marks right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "protocol_evidence.py"


@pytest.fixture(scope="module")
def evidence() -> ModuleType:
    spec = importlib.util.spec_from_file_location("protocol_evidence", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _results(mean: float, low: float, high: float) -> dict:
    entry = {"n": 3, "mean": mean, "ci95_low": low, "ci95_high": high}
    return {
        "protocol": {"seeds": [0, 1, 2], "randoms": 5, "tolerance": 0.05, "train_size": 384, "val_size": 256,
                     "schedule": {"epochs": 8.0, "batch_size": 32, "lr": 0.005}},
        "summary": {"learned": {"n": 3, "gmac": 0.0047, "delta_mtl_mean": -1.5, "ci95_low": -3.0, "ci95_high": 0.0,
                                "paired": {"width_matched": entry, "random_median": entry, "one_net": entry}}},
        "structure_recovery": {"depths": [{"block": 0, "learned": {"mean": 0.2}}, {"block": 3, "learned": {"mean": 0.9}}]},
    }


def test_interval_marks_only_intervals_that_exclude_zero(evidence: ModuleType) -> None:
    assert evidence.interval({"mean": 1.0, "ci95_low": 0.5, "ci95_high": 1.5}) == "+1.00 [+0.50, +1.50] **✓**"
    assert evidence.interval({"mean": -1.0, "ci95_low": -1.5, "ci95_high": -0.5}) == "-1.00 [-1.50, -0.50] ✗"
    assert evidence.interval({"mean": 0.1, "ci95_low": -0.5, "ci95_high": 0.7}) == "+0.10 [-0.50, +0.70]"
    assert evidence.interval(None) == "—"


def test_report_loses_its_title_and_its_headings_go_one_level_down(evidence: ModuleType) -> None:
    assert evidence.demote("# Evaluation of x\n\nintro\n\n## Table\n\n### Sub\n") == "intro\n\n### Table\n\n#### Sub\n"


def test_publish_copies_the_runs_and_summarises_them_in_order(evidence: ModuleType, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name, mean in (("smtl", -2.0), ("mtsl", 1.0)):
        (runs / name).mkdir(parents=True)
        (runs / name / "results.json").write_text(json.dumps(_results(mean, mean - 0.5, mean + 0.5)))
        (runs / name / "report.md").write_text("# Evaluation\n\n## Learned\n\n![fig](pareto.png)\n")
    evidence.publish(runs, tmp_path / "out")
    summary = (tmp_path / "out" / "summary.md.inc").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| mtsl") or line.startswith("| smtl")]
    assert [row.split("|")[1].strip() for row in rows] == ["mtsl", "smtl"]   # STRATEGIES order, not folder order
    assert "+1.00 [+0.50, +1.50] **✓**" in rows[0] and "-2.00 [-2.50, -1.50] ✗" in rows[1]
    assert "+0.90 (block 3)" in rows[0]
    assert "3 seeds, 5 random draws" in summary
    report = (tmp_path / "out" / "mtsl" / "report.md.inc").read_text()
    assert report == "### Learned\n\n![fig](../results/protocol/mtsl/pareto.png)\n"
    assert json.loads((tmp_path / "out" / "mtsl" / "results.json").read_text()) == _results(1.0, 0.5, 1.5)  # every value


def test_adashare_relatedness_is_read_from_the_searched_policies(evidence: ModuleType, tmp_path: Path) -> None:
    tasks = ["seg", "edges", "depth", "normals", "unrelated"]
    # seg/edges run blocks 1-2 only, depth/normals 3-4 only, unrelated all: within 0, across >= 2 blocks apart.
    execute = {"seg": {1, 2}, "edges": {1, 2}, "depth": {3, 4}, "normals": {3, 4}, "unrelated": {1, 2, 3, 4}}
    for seed in (0, 1, 2):
        folder = tmp_path / "search" / f"seed-{seed}"
        folder.mkdir(parents=True)
        if seed < 2:
            decisions = [{"what": "execute", "data": {"task": t, "block": b, "execute": b in execute[t]}}
                         for t in tasks for b in (1, 2, 3, 4)] + [{"what": "curriculum", "data": None}]
        else:  # a record written before decisions kept their data: read from the text AdaShare writes
            decisions = [{"where": f"block {b} (layer{b}.0), task {t}",
                          "what": "execute" if b in execute[t] else "skip (run the identity)"}
                         for t in tasks for b in (1, 2, 3, 4)] + [{"where": "block 1", "what": "gate select-or-skip"}]
        (folder / "record.json").write_text(json.dumps({"seed": seed, "decisions": decisions}))
    results = {"protocol": {"tasks": tasks},
               "structure_recovery": {"clusters": [["seg", "edges"], ["depth", "normals"], ["unrelated"]]}}
    lines = evidence.relatedness_lines(tmp_path, results)
    # Across pairs: seg/edges vs depth/normals differ on 4 blocks (4 pairs), each of the four vs unrelated on 2.
    across = (4 * 4 + 4 * 2) / 8
    assert lines[2:5] == [f"| {s} | 0.00 | {across:.2f} | yes |" for s in (0, 1, 2)]
    assert lines[-1].endswith(f"+{across:.2f} [+{across:.2f}, +{across:.2f}] **✓**.")
