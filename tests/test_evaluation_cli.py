"""``mtgraph evaluate``: options from flags and a TOML file, and a tiny run from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtgraph.cli import build_parser, main
from mtgraph.errors import ConfigError
from mtgraph.evaluation.results import validate_results
from mtgraph.workflow import EvaluateOptions, run_evaluation


def options(argv: list[str]) -> EvaluateOptions:
    return EvaluateOptions.from_args(build_parser().parse_args(["evaluate", *argv]))


def test_flags_win_over_the_file_and_quick_fills_the_rest(tmp_path: Path) -> None:
    config = tmp_path / "mtsl.toml"
    config.write_text('strategy = "mtsl"\nseeds = 4\nsize = 48\nclusters = [["seg", "edges"], ["depth"]]\n'
                      '[config]\ngamma = 0.9\n')
    got = options(["--config", str(config), "--seeds", "2", "--quick", "--tasks", "seg,edges,depth"])
    assert (got.seeds, got.size, got.num_train, got.epochs) == (2, 48, 96, 1.0)   # flag, file, --quick, --quick
    assert got.clusters == (("seg", "edges"), ("depth",)) and got.config == {"gamma": 0.9}
    assert got.tasks == ("seg", "edges", "depth")
    assert options(["--clusters", "seg+edges,depth"]).clusters == (("seg", "edges"), ("depth",))


def test_unknown_options_are_named(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("sedes = 3\n")
    with pytest.raises(ConfigError, match=r"unknown options \['sedes'\]"):
        options(["--config", str(config)])
    config.write_text("[config]\ngama = 0.9\n")
    with pytest.raises(ConfigError, match=r"MTSLConfig has no fields \['gama'\]"):
        run_evaluation(options(["--config", str(config), "--num-train", "4", "--num-val", "4", "--out",
                                str(tmp_path / "run")]), progress=False)


@pytest.mark.slow
def test_evaluate_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["evaluate", "--data", "designed", "--tasks", "seg,edges,depth", "--num-train", "8", "--num-val", "4",
            "--epochs", "1", "--seeds", "1", "--randoms", "1", "--threads", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("torch threads: 1 (asked for)")
    assert "learned: Δ_MTL" in printed and f"wrote {out / 'results.json'}" in printed
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    # --data designed brings its clusters (restricted to the tasks chosen) for the structure-recovery score.
    assert results["structure_recovery"]["clusters"] == [["seg", "edges"], ["depth"]]
    assert {r["kind"] for r in results["rows"]} >= {"strategy", "stn", "one_net", "width_matched"}
