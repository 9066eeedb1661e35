"""The AdaShare search with the shared training loop: curriculum, temperature, losses, derive, retrain."""

from __future__ import annotations

import math

import pytest
import torch

import mtgraph
from mtgraph import Problem
from mtgraph.analysis.macs import count_parameters
from mtgraph.data import InMemory, SceneDataset
from mtgraph.errors import ConfigError
from mtgraph.strategies import get_strategy
from mtgraph.strategies.adashare import (
    AdaShareConfig,
    UndecidedPolicyWarning,
    curriculum_mask,
    evaluate_hard,
    learn_adashare,
    retrain_policy,
    sharing_loss,
    sparsity_loss,
)
from mtgraph.strategies.result import StrategyResult
from mtgraph.tasks import depth, segmentation
from mtgraph.train.evaluate import evaluate_module
from mtgraph.zoo import resnet_tiny


@pytest.fixture(scope="module")
def setup():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    backbone = mtgraph.trace(resnet_tiny(4), torch.randn(2, 3, 32, 32))
    tasks = {"seg": segmentation(5, hidden=8), "depth": depth(hidden=8)}
    heads = {name: task.make_head(backbone.output_shape[0], (32, 32)) for name, task in tasks.items()}
    train = InMemory(SceneDataset(40, 32, seed=1))
    val = InMemory(SceneDataset(16, 32, seed=2))
    return backbone, tasks, heads, train, val


def _tiny(**changes) -> AdaShareConfig:  # type: ignore[no-untyped-def]
    options = dict(epochs=8, weight_steps=1, policy_steps=2, batch_size=8, warmup_steps=2, weight_lr=0.01,
                   policy_lr=0.05, lambda_sparsity=0.05, lambda_sharing=0.05, retrain_steps=0, calibration_batches=1,
                   decided_margin=0.0)
    options.update(changes)
    return AdaShareConfig(**options)


@pytest.fixture(scope="module")
def searched(setup) -> StrategyResult:  # type: ignore[no-untyped-def]
    backbone, tasks, heads, train, val = setup
    return get_strategy("adashare").learn(Problem(backbone, heads, tasks, train, val_data=val), _tiny())


def test_curriculum_learns_only_the_last_blocks(searched: StrategyResult) -> None:
    records = searched.history["search"]["records"]
    assert len(records) == 8
    for record in records:
        epoch = record["epoch"]
        learnable = list(range(8 - epoch, 9))  # gated blocks 1..8: epoch e learns the last e + 1
        assert record["learnable"] == learnable
        for row in record["alpha"]:  # per task, gated blocks 1..8
            for block, alpha in zip(range(1, 9), row):
                if block in learnable:
                    assert alpha != 0.5, (epoch, block)  # the policy step moved it
                else:
                    assert alpha == 0.5, (epoch, block)  # locked: bit-for-bit unchanged


def test_temperature_is_annealed(searched: StrategyResult) -> None:
    taus = [r["tau"] for r in searched.history["search"]["records"]]
    assert taus == pytest.approx([5.0 * 0.965**e for e in range(8)])


def test_alternation_and_best_policy(searched: StrategyResult) -> None:
    search = searched.history["search"]
    assert search["groups"] == ["weights", "policy", "policy"] * 8
    # Scores exist only once every block is unlocked (epoch 7); the best is among them.
    assert [r["score"] is None for r in search["records"]] == [True] * 7 + [False]
    assert search["best_epoch"] == 7
    assert searched.history["architectures_tried"] == 1


def test_result_is_the_hardened_policy(setup, searched: StrategyResult) -> None:  # type: ignore[no-untyped-def]
    backbone, _, heads, _, _ = setup
    logits = torch.tensor(searched.history["search"]["best_logits"])
    execute = (logits[..., 0] >= logits[..., 1]).tolist()
    assert searched.history["decisions"] == execute
    per_block = [d for d in searched.decisions if d.where.startswith("block ") and ", task " in d.where]
    assert len(per_block) == 16 and all((d.what == "execute") != d.accepted for d in per_block)
    graph = searched.graph
    for k, task in enumerate(("seg", "depth")):
        skipped = {b for b, run in zip(range(1, 9), execute[k]) if not run}
        on_path = {graph.nodes[i].block for i in graph.path(task) if isinstance(graph.nodes[i], mtgraph.ir.Skip)}
        assert on_path == skipped
    assert searched.pipeline.endswith("cse,dce")
    # Never more than one backbone plus the heads.
    assert mtgraph.cost(graph, searched.params).total_params <= count_parameters(
        b.module for b in backbone.blocks
    ) + count_parameters(heads.values())
    matrix = searched.figures["policy_matrix"]
    assert matrix.columns == ("seg", "depth") and len(matrix.rows) == len(matrix.values) == 8
    corr = searched.figures["task_correlation"]
    assert corr.rows == ("seg", "depth") and corr.values[0][0] == pytest.approx(1.0)
    assert set(searched.history["metrics"]) == {"seg", "depth"}


def test_without_curriculum_every_block_learns_from_the_start(setup) -> None:  # type: ignore[no-untyped-def]
    backbone, tasks, heads, train, _ = setup
    result = learn_adashare(backbone, heads, tasks, train, config=_tiny(epochs=1, curriculum=False), seed=0)
    (record,) = result.history["search"]["records"]
    assert record["learnable"] == list(range(1, 9))
    assert all(alpha != 0.5 for row in record["alpha"] for alpha in row)
    # No validation data: the last policy is used, and the decisions say so.
    assert any("no validation data" in d.reason for d in result.decisions)


def test_sparsity_alone_pushes_towards_skipping(setup) -> None:  # type: ignore[no-untyped-def]
    backbone, tasks, heads, train, _ = setup
    config = _tiny(epochs=1, curriculum=False, lambda_sparsity=1.0, lambda_sharing=0.0, policy_steps=4)
    result = learn_adashare(backbone, heads, tasks, train, config=config, seed=0)
    alpha = result.history["search"]["records"][0]["alpha"]
    assert all(a < 0.5 for row in alpha for a in row)


def test_bad_inputs(setup) -> None:  # type: ignore[no-untyped-def]
    backbone, tasks, heads, train, _ = setup
    with pytest.raises(ConfigError, match="epochs must be >= 8"):
        learn_adashare(backbone, heads, tasks, train, config=_tiny(epochs=3))
    with pytest.raises(ConfigError, match="traced mtgraph.Backbone"):
        learn_adashare(resnet_tiny(4), heads, tasks, train, config=_tiny())
    with pytest.raises(ConfigError, match=r"no head for tasks \['depth'\]"):
        learn_adashare(backbone, {"seg": heads["seg"]}, tasks, train, config=_tiny())
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.Conv2d(8, 16, 3, 2, 1))
    flat = mtgraph.trace(plain, torch.randn(1, 3, 32, 32))
    flat_heads = {n: t.make_head(16, (32, 32)) for n, t in tasks.items()}
    with pytest.raises(ConfigError, match="AdaShare needs at least one skippable block"):
        learn_adashare(flat, flat_heads, tasks, train, config=_tiny())


def test_retrain_policy_trains_a_given_policy_from_scratch(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    backbone, tasks, heads, train, val = setup
    u = torch.ones(2, 8, dtype=torch.bool)
    u[0, 2] = u[1, 7] = False  # seg skips block 3 (projection), depth skips block 8
    config = _tiny(retrain_steps=6, retrain_eval_every=1)
    result = retrain_policy(backbone, heads, tasks, train, u, config=config, val_data=val, seed=0)
    assert result.strategy == "adashare-fixed"
    assert result.pipeline == "skip{task=seg,block=3},skip{task=depth,block=8},cse,dce"
    # 40 samples / batch 8 = 5 steps per epoch: evaluated after epoch 0 and at the end (step 6).
    assert [r["step"] for r in result.history["retrain"]["evaluations"]] == [5, 6]
    assert all(math.isfinite(v) for m in result.history["metrics"].values() for v in m.values())
    # Early stop: the returned weights are those of the best evaluation, whose metrics it reproduces.
    best = max(result.history["retrain"]["evaluations"], key=lambda r: r["score"])
    for task, metrics in best["metrics"].items():
        assert result.history["metrics"][task] == pytest.approx(metrics, rel=1e-5)
    # The deployed network: the result's graph and params, whose store holds the per-call-site statistics,
    # compiled as is and after a save/load round trip.
    assert result.params.site_items()
    again = evaluate_module(mtgraph.compile(result.graph, result.params), tasks, val)
    for task, metrics in result.history["metrics"].items():
        assert again[task] == pytest.approx(metrics, rel=1e-6)
    folder = mtgraph.save(result.graph, result.params, tmp_path / "arch")
    graph, params = mtgraph.load(folder, backbone, heads)
    reloaded = evaluate_module(mtgraph.compile(graph, params), tasks, val)
    for task, metrics in result.history["metrics"].items():
        assert reloaded[task] == pytest.approx(metrics, rel=1e-6)
    # The original weights were not trained in place.
    before = backbone.blocks[1].module.state_dict()["layer1.0.conv1.weight"]
    assert not torch.equal(result.params["b1.shared"].state_dict()["layer1.0.conv1.weight"], before)


def test_sampled_policies_are_all_retrained_and_counted(setup) -> None:  # type: ignore[no-untyped-def]
    backbone, tasks, heads, train, val = setup
    config = _tiny(epochs=1, curriculum=False, derive="sample", num_samples=3, retrain_steps=1)
    result = learn_adashare(backbone, heads, tasks, train, config=config, val_data=val, seed=0)
    candidates = result.history["candidates"]
    tried = result.history["architectures_tried"]
    assert 1 <= tried <= 3 and len(candidates) == tried
    assert len({str(c["decisions"]) for c in candidates}) == tried  # distinct policies only
    (derive,) = [d for d in result.decisions if d.where == "derive"]
    assert derive.data["architectures_tried"] == tried
    best = max(candidates, key=lambda c: c["score"])
    assert result.history["decisions"] == best["decisions"] and result.pipeline == best["pipeline"]


def test_hard_evaluation_leaves_training_state_alone(setup) -> None:  # type: ignore[no-untyped-def]
    backbone, tasks, heads, train, val = setup
    graph = mtgraph.one_net(backbone.num_blocks, tuple(tasks))
    params = mtgraph.ParamStore.create(graph, backbone, heads)
    for _, module in params.items():
        module.train()
    before = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in params.items()}
    evaluate_hard(graph, params, tasks, train, val, batches=1, batch_size=8)
    # Called between training steps: every module must still train, with the same tensors.
    assert all(m.training for _, module in params.items() for m in module.modules())
    for key, module in params.items():
        for name, tensor in module.state_dict().items():
            assert torch.equal(tensor, before[key][name]), (key, name)


# --------------------------------------------------------------------------- what the search optimises (#20)


def test_the_gates_run_at_the_annealed_temperature(setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Observed where it acts: every Gumbel-softmax the gates draw during the search, with the τ it is given.
    seen: list[float] = []
    original = torch.nn.functional.gumbel_softmax

    def spy(logits, tau=1.0, hard=False, eps=1e-10, dim=-1):  # type: ignore[no-untyped-def]
        seen.append(float(tau))
        return original(logits, tau=tau, hard=hard, dim=dim)

    monkeypatch.setattr(torch.nn.functional, "gumbel_softmax", spy)
    backbone, tasks, heads, train, _ = setup
    config = _tiny(tau0=4.0, tau_decay=0.5, lambda_sparsity=0.0, lambda_sharing=0.0)
    result = get_strategy("adashare").learn(Problem(backbone, heads, tasks, train), config)
    schedule = [4.0 * 0.5**e for e in range(8)]
    distinct = [tau for k, tau in enumerate(seen) if k == 0 or tau != seen[k - 1]]
    assert distinct == pytest.approx(schedule, rel=1e-6)  # τ is held in a float32 buffer
    assert [r["gate_tau"] for r in result.history["search"]["records"]] == [[pytest.approx(t, rel=1e-6)] for t in schedule]


def test_the_policy_turn_minimises_both_regularisers(searched: StrategyResult) -> None:
    """The regulariser the loop optimised at each epoch's first policy step is λ_sp·L_sparsity + λ_sh·L_sharing."""
    config = _tiny()
    records = searched.history["search"]["records"]
    optimised = [v for v, g in zip(searched.history["search"]["regularisers"], searched.history["search"]["groups"])
                 if g == "policy"][::2]  # two policy steps per epoch: the first sees the previous epoch's logits
    start = torch.full((2, 8, 2), math.log(0.5))
    sharing_share = []
    for epoch, value in enumerate(optimised):
        logits = start if epoch == 0 else torch.tensor(records[epoch - 1]["logits"])
        mask = curriculum_mask(8, epoch)
        sparsity = config.lambda_sparsity * float(sparsity_loss(logits, blocks=mask, form=config.sparsity_form))
        sharing = config.lambda_sharing * float(sharing_loss(logits, form=config.sharing_form))
        # Recomputed from the recorded float32 logits with the same operations: float32 rounding only.
        assert value == pytest.approx(sparsity + sharing, rel=1e-5, abs=1e-7), epoch
        sharing_share.append(sharing)
    # The check can tell a missing sharing term apart: once the tasks' logits have drifted apart (from the
    # third epoch; Adam first moves both tasks' logits by about the learning rate alike) it is far above the
    # tolerance.
    assert min(sharing_share[2:]) > 100 * 1e-5 * max(abs(v) for v in optimised)


def test_the_gradient_balance_is_measured_every_epoch_and_logged(searched: StrategyResult) -> None:
    records = searched.history["search"]["records"]
    assert all(r["gradients"]["task"] > 0 and r["gradients"]["sparsity"] > 0 for r in records)
    assert records[0]["gradients"]["sharing"] == 0.0  # equal logits at the start: the L1 term has no slope yet
    assert all(r["gradients"]["sharing"] > 0 for r in records[1:])
    (balance,) = [d for d in searched.decisions if d.what == "gradient balance on the policy logits"]
    task = sorted(r["gradients"]["task"] for r in records)
    assert balance.data["task"] == pytest.approx((task[3] + task[4]) / 2)  # the median of 8 epochs
    assert balance.data["sharing_ratio"] == pytest.approx(balance.data["sharing"] / balance.data["task"])
    assert "λ_sh·L_sharing (code form, λ_sh = 0.05)" in balance.reason
    assert searched.figures["gradient_balance"].series["task"] == tuple(r["gradients"]["task"] for r in records)


def test_undecided_gates_are_warned_about_and_logged(setup) -> None:  # type: ignore[no-untyped-def]
    backbone, tasks, heads, train, _ = setup
    config = _tiny(epochs=1, curriculum=False, policy_steps=1, decided_margin=0.25)
    with pytest.warns(UndecidedPolicyWarning, match=r"ended with 16 of 16 gates undecided \(\|α − 0.5\| < 0.25\)"):
        result = get_strategy("adashare").learn(Problem(backbone, heads, tasks, train), config)
    (decided,) = [d for d in result.decisions if d.what.endswith("gates decided")]
    assert decided.what == "0 of 16 gates decided" and not decided.accepted
    assert len(decided.data["undecided"]) == 16
    assert {(g["task"], g["block"]) for g in decided.data["undecided"]} == {(t, b) for t in tasks for b in range(1, 9)}
