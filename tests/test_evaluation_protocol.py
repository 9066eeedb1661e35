"""The evaluation protocol end to end on a tiny problem: rows, statistics, schema, report, resume after SIGKILL.

The strategy is a test double that "learns" a fixed tree (tests/scripts/evaluation_run.py), so every
architecture compared is known; the protocol itself (search, width matching, random draws, units,
statistics, files) is the real one.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import evaluation_run
import pytest

from mtgraph.errors import CheckpointError, ConfigError
from mtgraph.evaluation import Evaluation, t_interval
from mtgraph.evaluation.results import RESULTS_FORMAT, ROW_KEYS, SUMMARY_KEYS, validate_results
from mtgraph.evaluation.stats import paired_difference
from mtgraph.tasks import delta_mtl

SCRIPT = Path(evaluation_run.__file__)
KINDS_PER_SEED = {"strategy": 1, "stn": 1, "one_net": 1, "width_matched": 1, "random": 2}
UNITS = 2 * sum(KINDS_PER_SEED.values())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Evaluation:
    return evaluation_run.run(tmp_path_factory.mktemp("evaluation") / "run")


def _rows(evaluation: Evaluation) -> list[dict]:
    return evaluation.results["rows"]


def test_results_json_has_every_field_of_the_schema(evaluated: Evaluation) -> None:
    data = json.loads((evaluated.folder / "results.json").read_text())
    validate_results(data)
    assert data["format"] == RESULTS_FORMAT
    assert data["strategy"] == "fixed-tree"
    assert data["config"] == {"steps": 1, "device": None}
    for seed in (0, 1):
        kinds = [r["kind"] for r in data["rows"] if r["seed"] == seed]
        assert {k: kinds.count(k) for k in KINDS_PER_SEED} == KINDS_PER_SEED
    for row in data["rows"]:
        assert set(ROW_KEYS) <= set(row)
        assert set(row["metrics"]) == set(evaluation_run.TASKS)
    assert list(data["summary"])[:5] == ["learned", "One-Net (width-matched)", "random (median)", "One-Net", "STN"]
    for entry in data["summary"].values():
        assert set(SUMMARY_KEYS) <= set(entry)
        assert entry["n"] == 2
    assert data["notes"] == []   # both baselines were matched and both draws found


def test_every_delta_is_against_the_same_seed_stn(evaluated: Evaluation) -> None:
    tasks = evaluation_run.tiny_problem().tasks
    directions = {name: dict(task.higher_is_better) for name, task in tasks.items()}
    stn = {r["seed"]: r["metrics"] for r in _rows(evaluated) if r["kind"] == "stn"}
    for row in _rows(evaluated):
        assert row["delta_mtl"] == pytest.approx(delta_mtl(row["metrics"], stn[row["seed"]], directions), abs=1e-12)
        if row["kind"] == "stn":
            assert row["delta_mtl"] == 0.0


def test_summaries_are_the_t_intervals_and_paired_differences_of_the_rows(evaluated: Evaluation) -> None:
    rows, summary = _rows(evaluated), evaluated.summary

    def per_seed(name: str) -> dict[int, float]:
        return {r["seed"]: r["delta_mtl"] for r in rows if r["name"] == name}

    for name in ("learned", "One-Net", "One-Net (width-matched)", "STN"):
        interval = t_interval(list(per_seed(name).values()))
        assert (summary[name]["delta_mtl_mean"], summary[name]["ci95_low"], summary[name]["ci95_high"]) == \
            pytest.approx((interval.mean, interval.low, interval.high), abs=1e-12)
    learned = per_seed("learned")
    for key, name in (("one_net", "One-Net"), ("width_matched", "One-Net (width-matched)")):
        expected = paired_difference(learned, per_seed(name))
        got = summary["learned"]["paired"][key]
        assert (got["n"], got["mean"], got["ci95_low"], got["ci95_high"]) == \
            pytest.approx((2, expected.mean, expected.low, expected.high), abs=1e-12)
    medians = {s: sorted(r["delta_mtl"] for r in rows if r["kind"] == "random" and r["seed"] == s) for s in (0, 1)}
    assert summary["random (median)"]["delta_mtl_mean"] == pytest.approx(sum(sum(v) / 2 for v in medians.values()) / 2)


def test_matched_baselines_cost_the_learned_gmac_within_five_percent(evaluated: Evaluation) -> None:
    for seed in (0, 1):
        by_kind = {r["kind"]: r for r in _rows(evaluated) if r["seed"] == seed and r["kind"] != "random"}
        learned = by_kind["strategy"]["gmac"]
        assert by_kind["one_net"]["gmac"] < learned < by_kind["stn"]["gmac"]
        width = by_kind["width_matched"]
        assert abs(width["gmac"] - learned) <= 0.05 * learned and width["multiplier"] > 1.0
        draws = [r for r in _rows(evaluated) if r["seed"] == seed and r["kind"] == "random"]
        assert len({r["pipeline"] for r in draws}) == 2                        # distinct draws
        for draw in draws:
            assert abs(draw["gmac"] - learned) <= 0.05 * learned and draw["gmac_within_tolerance"] is True


def test_structure_recovery_scores_the_learned_tree_against_the_clusters(evaluated: Evaluation) -> None:
    depths = evaluated.results["structure_recovery"]["depths"]
    # Blocks 0-4: one group (ARI 0, chance); 5-6: {seg, edges} {depth}, the clusters exactly (1); 7-8: singletons (0).
    assert [d["learned"]["mean"] for d in depths] == [0.0] * 5 + [1.0] * 2 + [0.0] * 2
    assert all(d["random"] is not None for d in depths)


def test_report_leads_with_the_matched_compute_table_and_links_the_figure(evaluated: Evaluation) -> None:
    report = evaluated.report.read_text()
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Learned vs matched-compute baselines"
    table = report.split(headings[0])[1].split("\n\n")[1].splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == [
        "| learned", "| One-Net (width-matched)", "| random (median of 2 per seed)", "| One-Net", "| STN"]
    assert "![Δ_MTL vs GMac with 95 % intervals](pareto.png)" in report
    assert (evaluated.folder / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_finished_evaluation_is_read_back_not_rerun(evaluated: Evaluation) -> None:
    again = evaluation_run.run(evaluated.folder)
    assert again.trained == () and again.searched == () and len(again.reused) == UNITS
    assert again.results["rows"] == evaluated.results["rows"]


def test_a_folder_holding_another_evaluation_is_refused(evaluated: Evaluation) -> None:
    with pytest.raises(ConfigError, match="holds an evaluation with other settings .*randoms"):
        evaluation_run.run(evaluated.folder, randoms=3)


def test_validate_results_names_what_is_broken(evaluated: Evaluation) -> None:
    data = copy.deepcopy(evaluated.results)
    del data["rows"][0]["metrics"]
    data["rows"][1]["kind"] = "baseline"
    data["summary"]["STN"]["ci95_low"] = 5.0 + (data["summary"]["STN"]["delta_mtl_mean"] or 0.0)
    with pytest.raises(CheckpointError) as error:
        validate_results(data)
    message = str(error.value)
    assert "rows[0] lacks ['metrics']" in message
    assert "rows[1].kind is 'baseline'" in message
    assert "summary['STN']: the interval" in message


def test_an_evaluation_killed_with_sigkill_resumes_without_rerunning_finished_units(
    tmp_path: Path, evaluated: Evaluation
) -> None:
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--kill-after-units", "3"],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    done = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("units/seed-*/*/result.json")}
    assert len(done) == 3
    assert not (out / "results.json").exists()

    resumed = evaluation_run.run(out)
    assert len(resumed.reused) == 3 and len(resumed.trained) == UNITS - 3 and resumed.searched == ()
    for path, (content, mtime) in done.items():
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime, f"{path} was trained again"
    # Same seeds, same thread count (1), same computations: the resumed evaluation measures what the
    # uninterrupted one measured, bit for bit.
    expected = {(r["name"], r["seed"]): r["metrics"] for r in evaluated.results["rows"]}
    assert {(r["name"], r["seed"]): r["metrics"] for r in resumed.results["rows"]} == expected


@pytest.mark.slow
def test_the_process_executor_measures_what_the_sequential_one_does(tmp_path: Path, evaluated: Evaluation) -> None:
    out = tmp_path / "run"
    shutil.copytree(evaluated.folder, out)
    for result in out.glob("units/seed-*/*/result.json"):
        result.unlink()                     # searches and plans are kept: only the units run again, in 2 workers
    parallel = evaluation_run.run(out, executor="process", workers=2, threads=1)
    assert len(parallel.trained) == UNITS
    expected = {(r["name"], r["seed"]): r["metrics"] for r in evaluated.results["rows"]}
    assert {(r["name"], r["seed"]): r["metrics"] for r in parallel.results["rows"]} == expected
