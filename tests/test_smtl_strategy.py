"""SMTLStrategy end to end on tiny generated scenes: results, pipelines, random and learned architectures, references."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import torch

import mtgraph
from mtgraph import Budget
from mtgraph import tasks as T
from mtgraph.data import SceneDataset
from mtgraph.ir import Gate, one_net, stn
from mtgraph.ir.nodes import head_weights
from mtgraph.passes import format_pipeline
from mtgraph.strategies import Strategy, registry, replay
from mtgraph.strategies.result import Curve, Table
from mtgraph.strategies.smtl import (
    DEFAULT_GATE_LR,
    FORMULATIONS,
    VARIANTS,
    DecoderGate,
    DualHead,
    SMTLConfig,
    SMTLStrategy,
    alphas,
    choose,
    decoder_level,
    gate_keys,
    learn_smtl,
    lite_passes,
    phase_name,
    safety,
    train_reference,
)
from mtgraph.train import OptimizerGroup, checkpointing, fit

STRATEGY = SMTLStrategy()


@pytest.fixture(scope="module")
def problem(traced) -> mtgraph.Problem:
    _, _, backbone = traced("resnet_basic")
    tasks = {"seg": T.segmentation(5, hidden=8), "depth": T.depth(hidden=8), "unrelated": T.regression(hidden=8)}
    train = SceneDataset(16, size=32, seed=0, num_classes=4, unrelated_strength=0.1)
    val = SceneDataset(8, size=32, seed=1, num_classes=4, unrelated_strength=0.1)
    torch.manual_seed(0)
    heads = {n: t.make_head(backbone.output_shape[0], (32, 32)) for n, t in tasks.items()}
    return mtgraph.Problem(backbone, heads, tasks, train, val)


def test_smtl_is_registered_and_satisfies_the_protocol():
    assert isinstance(registry()["smtl"], SMTLStrategy) and isinstance(STRATEGY, Strategy)


def test_soft_smtl_learns_every_alpha_and_reports_it(problem):
    result = STRATEGY.learn(problem, SMTLConfig(epochs=2, batch_size=8))
    assert (result.strategy, result.start) == ("smtl", "one_net")
    learned = alphas(result.graph, result.params)
    table, curve = result.figures["alpha"], result.figures["alpha_curve"]
    assert isinstance(table, Table) and isinstance(curve, Curve) and set(result.figures) == {"alpha", "alpha_curve"}
    assert table.records() == [{"task": t, "alpha": a, "leans": choose(a)} for t, a in learned.items()]
    assert curve.x == (0.0, 1.0, 2.0)  # before training, after epoch 1, after epoch 2
    assert {t: ys[0] for t, ys in curve.series.items()} == {t: 0.5 for t in problem.tasks}
    assert {t: ys[-1] for t, ys in curve.series.items()} == learned
    assert [r["epoch"] for r in result.history["alpha"]] == [-1, 0, 1]
    assert all(a != 0.5 for a in learned.values()), "training must move every gate"
    assert set(result.history["metrics"]) == set(problem.tasks)
    assert (result.history["variant"], result.history["formulation"], result.history["block_range"]) == (
        "smtl", "single", (0, 4))
    assert [d.data["alpha"] for d in result.decisions] == list(learned.values())
    # The soft network keeps its gates; the pipeline rebuilds its structure from the One-Net.
    assert sum(isinstance(n, Gate) for n in result.graph.nodes) == 3
    assert replay(problem, result.start, result.pipeline)[0] == result.graph


def test_the_papers_initialisation_gives_no_gate_gradient_at_step_zero_only(problem):
    """Public and private encoders start equal (the reference code's pretrained copies), so ∂L/∂α_t = 0 exactly."""
    config = SMTLConfig(epochs=1, batch_size=16)
    result = STRATEGY.learn(problem, config)  # one step: the whole training set is one batch
    assert all(a == 0.5 for a in alphas(result.graph, result.params).values())  # the only step saw a zero gradient
    assert len(result.history["train"]["total"]) == 1
    moved = STRATEGY.learn(problem, SMTLConfig(epochs=2, batch_size=16))  # the second step sees different encoders
    assert all(a != 0.5 for a in alphas(moved.graph, moved.params).values())


def test_fixed_alpha_stays_put_while_the_encoders_train(problem):
    result = STRATEGY.learn(problem, SMTLConfig(epochs=1, batch_size=8, alpha=0.3, learn_alpha=False))
    # Float32 logits log(0.3), log(0.7) give back 0.3 within a few float32 ulps (1.2e-7 each): 1e-6 bounds it.
    assert alphas(result.graph, result.params) == {t: pytest.approx(0.3, abs=1e-6) for t in problem.tasks}
    fresh = problem.backbone.blocks[0].module.state_dict()
    trained = result.params["b0.seg"].state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)


def test_the_gates_own_learning_rate_moves_alpha_further_than_the_models(problem):
    moved = {}
    for gate_lr in (None, DEFAULT_GATE_LR):  # None: the model's lr (the paper's setting)
        result = STRATEGY.learn(problem, SMTLConfig(epochs=2, batch_size=8, gate_lr=gate_lr))
        moved[gate_lr] = max(abs(a - 0.5) for a in alphas(result.graph, result.params).values())
    # Adam moves a logit by about its lr per step while the gradient keeps its sign, and the first of the 4 steps
    # sees a zero gradient: at lr 1e-3, |α − 0.5| ≈ |Δ(logit difference)| / 4 <= 3 · 2e-3 / 4 = 0.0015.
    assert moved[None] < 0.002 < 0.01 < moved[DEFAULT_GATE_LR]


@pytest.mark.parametrize("variant", ["lite", "lite_c"])
def test_lite_result_is_hardened_to_one_encoder_per_task_and_its_pipeline_rebuilds_it(problem, variant):
    result = STRATEGY.learn(problem, SMTLConfig(variant=variant, epochs=1, batch_size=8))
    assert not any(isinstance(n, Gate) for n in result.graph.nodes)
    chosen = {row["task"]: row["choice"] for row in result.figures["alpha"].records()}
    assert chosen == {row["task"]: choose(row["alpha"]) for row in result.figures["alpha"].records()}
    assert [d.what for d in result.decisions] == [f"keep {chosen[t]}" for t in problem.tasks]
    # The pipeline states the choices (α = 1 public, α = 0 private) and rebuilds exactly this graph.
    for task, side in chosen.items():
        assert f"gate{{task={task},start=0,end=4,alpha={1.0 if side == 'public' else 0.0}," in result.pipeline
    assert result.pipeline.endswith(",harden{threshold=0.5000000000000001},dce")
    graph, params = replay(problem, result.start, result.pipeline)
    assert graph == result.graph
    assert sorted(params.keys()) == sorted(result.params.keys())
    # lite_c: plain heads, as hardened (fx modules get a class per copy: compare class names)
    assert all(type(params[k]).__name__ == type(result.params[k]).__name__ for k in params.keys())
    encoders = {k.split(".", 1)[1] for k in result.params.keys() if k.startswith("b")}
    expected = {t for t, side in chosen.items() if side == "private"} | ({"shared"} if "public" in chosen.values() else set())
    assert encoders == expected
    enc_macs = sum(b.macs for b in problem.backbone.blocks)
    report = mtgraph.cost(result.graph, result.params)
    heads_macs = sum(report.nodes[i].macs for i in result.graph.heads.values())
    assert report.total_macs == len(expected) * enc_macs + heads_macs
    assert set(result.history["metrics"]) == set(problem.tasks)


def test_smtl_c_pipeline_rebuilds_the_graph_and_decoder_level_the_modules(problem):
    result = STRATEGY.learn(problem, SMTLConfig(variant="smtl_c", epochs=1, batch_size=8))
    graph, params = replay(problem, result.start, result.pipeline)
    assert graph == result.graph  # the pipeline gives the graph; its gate and head modules are SMTL's ...
    gates = gate_keys(graph)
    assert not any(isinstance(params[k], DecoderGate) for k in gates.values())
    wrapped = decoder_level(params, gates)  # ... and decoder_level gives the decoder-level ones
    for key in result.params.keys():
        assert type(wrapped[key]).__name__ == type(result.params[key]).__name__, key
        assert {n: p.shape for n, p in wrapped[key].state_dict().items()} == {
            n: p.shape for n, p in result.params[key].state_dict().items()}
    assert all(isinstance(wrapped[head_weights(t)], DualHead) for t in problem.tasks)


def test_bilevel_alternates_weight_steps_and_gate_steps_on_disjoint_data(problem):
    result = STRATEGY.learn(problem, SMTLConfig(formulation="bilevel", epochs=2, batch_size=4, gate_fraction=0.25))
    groups = result.history["train"]["groups"]
    # 12 samples for the weights (3 batches of 4), 4 held out for the gates: per epoch 3 cycles of one step each.
    assert groups == ["weights", "gates"] * 6
    assert [r["epoch"] for r in result.history["alpha"]] == [-1, 0, 1]
    assert result.history["formulation"] == "bilevel"
    assert all(a != 0.5 for a in alphas(result.graph, result.params).values())
    assert replay(problem, result.start, result.pipeline)[0] == result.graph


def test_random_soft_architecture_has_fixed_gates_that_retraining_keeps(problem):
    arch = STRATEGY.sample_random(problem, random.Random(3))
    again = STRATEGY.sample_random(problem, random.Random(3))
    assert arch.details == again.details and arch.pipeline == again.pipeline  # the rng alone decides
    drawn = arch.details["alpha"]
    assert len(set(drawn.values())) == 3 and all(0 <= a < 1 for a in drawn.values())
    assert arch.frozen == frozenset(gate_keys(arch.graph).values())
    # Float32 logits give back each drawn α within a few float32 ulps: 1e-6 bounds it.
    assert alphas(arch.graph, arch.params) == {t: pytest.approx(a, abs=1e-6) for t, a in drawn.items()}
    assert replay(problem, arch.start, arch.pipeline)[0] == arch.graph
    before = alphas(arch.graph, arch.params)
    encoder = {k: v.clone() for k, v in arch.params["b0.shared"].state_dict().items()}
    group = OptimizerGroup("retrain", select=lambda key, module: key not in arch.frozen)
    fitted = fit(arch.graph, arch.params, problem.tasks, problem.train_data, epochs=1, batch_size=8, groups=[group])
    assert alphas(fitted.graph, fitted.params) == before
    assert any(not torch.equal(encoder[k], v) for k, v in fitted.params["b0.shared"].state_dict().items())


def test_random_lite_architecture_chooses_per_task_and_matches_a_budget(problem):
    lite = SMTLConfig(variant="lite")
    seen = set()
    for k in range(6):
        arch = STRATEGY.sample_random(problem, random.Random(k), config=lite)
        assert arch.frozen == frozenset() and not any(isinstance(n, Gate) for n in arch.graph.nodes)
        seen.add(tuple(arch.details["choices"].values()))
        assert replay(problem, arch.start, arch.pipeline)[0] == arch.graph
    assert len(seen) > 2
    # Every encoder copy costs the same, so the cost counts encoders: 0 private tasks run 1 encoder, 1 runs 2,
    # 2 and 3 run 3. A budget of exactly the 2-encoder network admits one private task and no other count.
    two = STRATEGY.sample_random(problem, random.Random(0), Budget.gmac(1.0, relative_to="one_net"), config=lite)
    assert list(two.details["choices"].values()).count("private") == 0
    one_private = {t: "private" if t == "seg" else "public" for t in problem.task_names}
    reference = mtgraph.cost(*replay(problem, "one_net", format_pipeline(
        lite_passes(problem.task_names, problem.backbone.num_blocks, lite, one_private)))).gmac
    for k in range(3):
        arch = STRATEGY.sample_random(problem, random.Random(k), Budget.gmac(reference), config=lite)
        assert list(arch.details["choices"].values()).count("private") == 1
        assert mtgraph.cost(arch.graph, arch.params).gmac == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("variant", ["smtl", "smtl_c"])
def test_learned_soft_architecture_keeps_the_learned_gates_and_has_fresh_weights(problem, variant):
    result = STRATEGY.learn(problem, SMTLConfig(variant=variant, epochs=2, batch_size=8))
    arch = STRATEGY.architecture(problem, result)
    assert arch.label == "learned" and arch.graph == result.graph
    assert arch.frozen == frozenset(gate_keys(result.graph).values())
    for key in arch.frozen:  # exactly the learned logits
        for name, value in result.params[key].state_dict().items():
            assert torch.equal(arch.params[key].state_dict()[name], value)
    assert arch.details["alpha"] == alphas(result.graph, result.params)
    assert all(type(arch.params[k]).__name__ == type(result.params[k]).__name__ for k in result.params.keys())
    fresh = problem.backbone.blocks[0].module.state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in arch.params["b0.shared"].state_dict().items())
    assert any(not torch.equal(fresh[k], v) for k, v in result.params["b0.shared"].state_dict().items())
    # The pipeline carries the learned α: alone, it rebuilds the gates within float32 rounding.
    rebuilt_graph, rebuilt = replay(problem, arch.start, arch.pipeline)
    assert rebuilt_graph == arch.graph
    assert alphas(rebuilt_graph, rebuilt) == pytest.approx(arch.details["alpha"], abs=1e-6)


def test_learned_lite_architecture_is_the_learned_choices(problem):
    result = STRATEGY.learn(problem, SMTLConfig(variant="lite", epochs=1, batch_size=8))
    arch = STRATEGY.architecture(problem, result)
    assert arch.graph == result.graph and arch.frozen == frozenset() and arch.pipeline == result.pipeline
    assert arch.details["choices"] == {r["task"]: r["choice"] for r in result.figures["alpha"].records()}


def test_the_wrapper_kept_for_one_release_gives_the_strategys_result(problem):
    config = SMTLConfig(epochs=1, batch_size=8)
    old = learn_smtl(problem.backbone, dict(problem.heads), dict(problem.tasks), problem.train_data, config=config,
                     val_data=problem.val_data)
    new = STRATEGY.learn(problem, config)
    assert old.graph == new.graph and old.pipeline == new.pipeline
    assert alphas(old.graph, old.params) == alphas(new.graph, new.params)
    assert old.history["metrics"] == new.history["metrics"]


def test_phases_are_named_explicitly_and_a_resumed_session_gives_the_same_result(problem, tmp_path):
    lite, bilevel, reference = (SMTLConfig(variant="lite", epochs=1, batch_size=8),
                                SMTLConfig(formulation="bilevel", epochs=1, batch_size=8), SMTLConfig(epochs=1, batch_size=8))
    with checkpointing(tmp_path):
        first = [STRATEGY.learn(problem, lite), STRATEGY.learn(problem, bilevel)]
        train_reference("stn", problem, reference)
        train_reference("one_net", problem, reference)
    phases = sorted({path.name.split(".step-")[0] for path in tmp_path.glob("*.safetensors")})
    assert phases == ["one-net", "smtl-bilevel", "smtl-lite", "stn"]
    names = {phase_name(SMTLConfig(variant=v, formulation=f)) for v in VARIANTS for f in FORMULATIONS}
    assert len(names) == len(VARIANTS) * len(FORMULATIONS) and not names & {"stn", "one-net"}
    with checkpointing(tmp_path, resume=True):  # every phase is finished: nothing trains again
        again = [STRATEGY.learn(problem, lite), STRATEGY.learn(problem, bilevel)]
    for a, b in zip(first, again):
        assert (a.graph, a.pipeline, a.history["alpha"]) == (b.graph, b.pipeline, b.history["alpha"])
        for key in a.params.keys():
            assert all(torch.equal(x, y) for x, y in zip(a.params[key].state_dict().values(),
                                                         b.params[key].state_dict().values())), key


def test_config_for_trains_about_the_given_epochs(problem):
    config = STRATEGY.config_for(problem, 2.6)
    assert isinstance(config, SMTLConfig) and config.epochs == 3
    assert STRATEGY.config_for(problem, 0.2).epochs == 1


def test_reference_networks_use_the_same_protocol(problem):
    config = SMTLConfig(epochs=1, batch_size=8)
    single = train_reference("stn", problem, config)
    shared = train_reference("one_net", problem.with_seed(1), config)
    assert (single.strategy, shared.strategy) == ("stn", "one_net")
    assert (single.start, shared.start) == ("stn", "one_net")
    assert single.graph == stn(problem.backbone.num_blocks, problem.task_names)
    assert shared.graph == one_net(problem.backbone.num_blocks, problem.task_names)
    assert len(single.history["train"]["total"]) == 2  # 16 samples / batch 8, one epoch
    assert set(single.history["metrics"]) == set(problem.tasks)


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
    assert "SMTL: strict η̂ = 100 on every seed" in printed and "below STN beyond the interval" in printed
    payload = json.loads(out.read_text())
    assert [r["seed"] for r in payload["runs"]] == [0, 1]
    assert set(payload["runs"][0]["alpha"]) == {"SMTL", "L-SMTL"}
    smtl = payload["summary"]["claims"]["SMTL"]
    deltas = payload["summary"]["safety"]["SMTL"]["task_delta_interval_percent"]
    assert smtl["tasks_below_stn_beyond_interval"] == [t for t, (mean, half) in deltas.items() if mean + half < 0]
    assert len(smtl["unrelated_alpha_rank_per_seed"]) == 2
