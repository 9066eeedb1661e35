"""learn_smtl end to end on tiny generated scenes, the reference networks, and η̂ / Δ_I against the paper's tables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import mtgraph
from mtgraph import tasks as T
from mtgraph.data import SceneDataset
from mtgraph.ir import Gate, one_net, stn
from mtgraph.passes import parse_pipeline, run_passes
from mtgraph.strategies.smtl import SMTLConfig, alphas, choose, learn_smtl, safety, train_reference


@pytest.fixture(scope="module")
def problem(traced):
    _, _, backbone = traced("resnet_basic")
    tasks = {"seg": T.segmentation(5, hidden=8), "depth": T.depth(hidden=8), "unrelated": T.regression(hidden=8)}
    train = SceneDataset(16, size=32, seed=0, num_classes=4, unrelated_strength=0.1)
    val = SceneDataset(8, size=32, seed=1, num_classes=4, unrelated_strength=0.1)
    torch.manual_seed(0)
    heads = {n: t.make_head(backbone.output_shape[0], (32, 32)) for n, t in tasks.items()}
    return backbone, heads, tasks, train, val


def test_soft_smtl_learns_every_alpha_and_reports_it(problem):
    backbone, heads, tasks, train, val = problem
    result = learn_smtl(backbone, heads, tasks, train, config=SMTLConfig(epochs=2, batch_size=8), val_data=val)
    assert result.strategy == "smtl"
    learned = alphas(result.graph, result.params)
    assert [row["task"] for row in result.figures["alpha"]] == list(tasks)
    assert {row["task"]: row["alpha"] for row in result.figures["alpha"]} == learned
    assert [r["epoch"] for r in result.history["alpha"]] == [-1, 0, 1]
    assert result.history["alpha"][0]["alpha"] == {t: 0.5 for t in tasks}
    assert result.history["alpha"][-1]["alpha"] == learned
    assert all(a != 0.5 for a in learned.values()), "training must move every gate"
    assert set(result.history["metrics"]) == set(tasks)
    assert [d.data["alpha"] for d in result.decisions] == list(learned.values())
    # The soft network keeps its gates; the pipeline rebuilds its structure from the One-Net.
    assert sum(isinstance(n, Gate) for n in result.graph.nodes) == 3
    start = one_net(backbone.num_blocks, tuple(tasks))
    rebuilt = run_passes(start, mtgraph.ParamStore.create(start, backbone, heads), parse_pipeline(result.pipeline))
    assert rebuilt.graph == result.graph


def test_fixed_alpha_stays_put_while_the_encoders_train(problem):
    backbone, heads, tasks, train, _ = problem
    result = learn_smtl(backbone, heads, tasks, train, config=SMTLConfig(epochs=1, batch_size=8, alpha=0.3, learn_alpha=False))
    assert alphas(result.graph, result.params) == {t: pytest.approx(0.3, abs=1e-7) for t in tasks}
    fresh = backbone.blocks[0].module.state_dict()
    trained = result.params["b0.seg"].state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)


def test_gate_lr_moves_alpha_further(problem):
    backbone, heads, tasks, train, _ = problem
    moved = {}
    for gate_lr in (None, 0.1):
        result = learn_smtl(backbone, heads, tasks, train, config=SMTLConfig(epochs=1, batch_size=8, gate_lr=gate_lr))
        moved[gate_lr] = sum(abs(a - 0.5) for a in alphas(result.graph, result.params).values())
    assert moved[0.1] > 10 * moved[None]


@pytest.mark.parametrize("variant", ["lite", "lite_c"])
def test_lite_result_is_hardened_to_one_encoder_per_task(problem, variant):
    backbone, heads, tasks, train, val = problem
    result = learn_smtl(backbone, heads, tasks, train, config=SMTLConfig(variant=variant, epochs=1, batch_size=8),
                        val_data=val)
    assert not any(isinstance(n, Gate) for n in result.graph.nodes)
    assert result.pipeline.endswith(",harden{threshold=0.5000000000000001},dce")
    chosen = {row["task"]: row["choice"] for row in result.figures["alpha"]}
    assert chosen == {row["task"]: choose(row["alpha"]) for row in result.figures["alpha"]}
    assert [d.what for d in result.decisions] == [f"keep {chosen[t]}" for t in tasks]
    encoders = {k.split(".", 1)[1] for k in result.params.keys() if k.startswith("b")}
    expected = {t for t, side in chosen.items() if side == "private"} | ({"shared"} if "public" in chosen.values() else set())
    assert encoders == expected
    n = backbone.num_blocks
    enc_macs = sum(b.macs for b in backbone.blocks)
    report = mtgraph.cost(result.graph, result.params)
    heads_macs = sum(report.nodes[i].macs for i in result.graph.heads.values())
    assert report.total_macs == len(expected) * enc_macs + heads_macs
    assert set(result.history["metrics"]) == set(tasks)
    assert len(result.graph.path("seg")) == n + 2  # input, n blocks, head: one path


def test_reference_networks_use_the_same_protocol(problem):
    backbone, heads, tasks, train, val = problem
    config = SMTLConfig(epochs=1, batch_size=8)
    single = train_reference("stn", backbone, heads, tasks, train, config=config, val_data=val)
    shared = train_reference("one_net", backbone, heads, tasks, train, config=config)
    assert (single.strategy, shared.strategy) == ("stn", "one_net")
    assert single.graph == stn(backbone.num_blocks, tuple(tasks))
    assert shared.graph == one_net(backbone.num_blocks, tuple(tasks))
    assert len(single.history["train"]["total"]) == 2  # 16 samples / batch 8, one epoch
    assert set(single.history["metrics"]) == set(tasks)


def _nyu(deltas: list[float]) -> dict[str, dict[str, float]]:
    """NYUv2 values from Table 2 of papers/004: STL plus the printed (already sign-flipped) improvements."""
    stl = [53.11, 75.20, 0.3957, 0.1632, 22.26, 15.49, 38.61, 64.43, 74.69]
    up = [True, True, False, False, False, False, True, True, True]
    values = [s + (d if u else -d) for s, d, u in zip(stl, deltas, up)]
    return {"seg": dict(zip(("miou", "pix"), values[:2])), "depth": dict(zip(("abs", "rel"), values[2:4])),
            "normals": dict(zip(("mean", "median", "t11", "t22", "t30"), values[4:]))}


NYU_UP = {"seg": {"miou": True, "pix": True}, "depth": {"abs": False, "rel": False},
          "normals": {"mean": False, "median": False, "t11": True, "t22": True, "t30": True}}


def test_safety_reproduces_the_papers_nyuv2_numbers():
    stl = _nyu([0.0] * 9)
    smtl = safety(_nyu([0.16, 0.28, 0.0071, 0.0042, 0.26, 0.00, 0.03, 0.46, 0.53]), stl, NYU_UP)
    assert round(smtl.delta_i, 4) == 0.0102 and smtl.eta == 100.0  # Table 2: +0.0102, 100
    lite = safety(_nyu([0.12, 0.10, 0.0078, 0.0035, 0.39, -0.06, -0.25, 0.55, 0.67]), stl, NYU_UP)
    assert round(lite.delta_i, 4) == 0.0091  # Table 2: +0.0091
    assert lite.eta == pytest.approx(100 * (1 + 1 + 3 / 5) / 3)  # 86.7 by the formula (printed: 85)
    assert lite.worst_task == "seg"  # by mean relative change: seg +0.18%, normals +0.49%
    dmtl = safety(_nyu([0.52, 0.16, 0.0104, 0.0032, -1.34, -1.57, -3.31, -3.42, -2.69]), stl, NYU_UP)
    assert dmtl.delta_i == pytest.approx(-0.0127, abs=1e-4) and round(dmtl.eta) == 67  # Table 2: −0.0127, 67
    assert dmtl.eta_tolerance == pytest.approx(100 * (2 + 1 / 5) / 3)  # of normals, only "within 30°" is within 5%
    assert safety(_nyu([0.0] * 9), stl, NYU_UP).eta == 100.0  # ties count as safe


@pytest.mark.slow
def test_example_runs_end_to_end(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "examples" / "smtl_scenes.py"
    spec = importlib.util.spec_from_file_location("smtl_scenes_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out = tmp_path / "results.json"
    assert module.main(["--seeds", "0", "1", "--train", "16", "--test", "8", "--epochs", "1", "--batch-size", "8",
                        "--threads", "1", "--jobs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SMTL strict η̂ = 100 on every seed" in printed
    import json

    payload = json.loads(out.read_text())
    assert [r["seed"] for r in payload["runs"]] == [0, 1]
    assert set(payload["runs"][0]["alpha"]) == {"SMTL", "L-SMTL"}
