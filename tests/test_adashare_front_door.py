"""AdaShare through the common front door: learn, replay, random policies at a GMac, architecture, phases."""

from __future__ import annotations

import random

import pytest
import torch

import mtgraph
from mtgraph import Budget, Problem
from mtgraph.analysis.macs import count_parameters
from mtgraph.data import InMemory, SceneDataset
from mtgraph.errors import ConfigError
from mtgraph.ir import Skip
from mtgraph.strategies import Heatmap, get_strategy, replay
from mtgraph.strategies.adashare import (
    AdaShareConfig,
    PolicyCosts,
    policy_pipeline,
    random_policy_at_gmac,
    run_fixed_policy,
)
from mtgraph.tasks import depth, normals, segmentation
from mtgraph.train import checkpointing
from mtgraph.zoo import resnet_tiny


@pytest.fixture(scope="module")
def problem() -> Problem:
    torch.manual_seed(0)
    tasks = [segmentation(5, hidden=8), normals(hidden=8), depth(hidden=8)]
    return Problem.create(resnet_tiny(4), tasks, InMemory(SceneDataset(24, 32, seed=1)),
                          val_data=InMemory(SceneDataset(8, 32, seed=2)))


def _tiny(**changes) -> AdaShareConfig:  # type: ignore[no-untyped-def]
    options = dict(epochs=8, weight_steps=1, policy_steps=1, batch_size=8, warmup_steps=1, retrain_steps=2,
                   calibration_batches=1, decided_margin=0.0)
    options.update(changes)
    return AdaShareConfig(**options)


@pytest.fixture(scope="module")
def learned(problem: Problem) -> mtgraph.strategies.StrategyResult:
    return get_strategy("adashare").learn(problem, _tiny())


def _one_backbone(problem: Problem) -> int:
    return count_parameters(b.module for b in problem.backbone.blocks) + count_parameters(problem.heads.values())


# --------------------------------------------------------------------------- learn


def test_the_pipeline_replayed_on_one_net_gives_exactly_the_learned_graph(problem, learned) -> None:  # type: ignore[no-untyped-def]
    assert learned.strategy == "adashare" and learned.start == "one_net"
    graph, params = replay(problem, learned.start, learned.pipeline)
    assert graph == learned.graph
    # Per-site BatchNorm statistics are weights, not structure: the learned store has site modules for the
    # shared call sites, the replayed one none; both compile to the same graph.
    assert set(params.keys()) == set(learned.params.restricted(learned.graph).keys())


def test_figures_are_typed_and_the_data_is_in_the_history(learned) -> None:  # type: ignore[no-untyped-def]
    figures = learned.figures
    assert {name for name, f in figures.items() if isinstance(f, Heatmap)} == {
        "policy_matrix", "task_correlation", "policy_hamming"}
    assert {name for name, f in figures.items() if isinstance(f, mtgraph.strategies.Curve)} == {
        "policy_over_epochs", "gradient_balance", "search_score"}
    assert len(figures["policy_over_epochs"].series) == 3 * 8  # a series per (task, gated block)
    assert figures["policy_over_epochs"].x == tuple(float(e) for e in range(8))
    records = learned.history["search"]["records"]
    last = records[learned.history["search"]["best_epoch"]]
    alpha = torch.tensor(last["alpha"], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(figures["policy_matrix"].values, dtype=torch.float64), alpha.T)


def test_a_budget_and_a_foreign_config_are_refused(problem) -> None:  # type: ignore[no-untyped-def]
    adashare = get_strategy("adashare")
    with pytest.raises(ConfigError, match="AdaShare has no cost budget"):
        adashare.learn(problem, _tiny(), Budget.gmac(1.0, relative_to="one_net"))
    with pytest.raises(ConfigError, match="config must be an AdaShareConfig, got dict"):
        adashare.learn(problem, {"epochs": 8})  # type: ignore[arg-type]


def test_every_fit_call_has_its_own_phase_name(problem, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Two sampled policies: warm-up, search and two retrainings in one checkpointing session; a repeated
    # phase name would raise CheckpointError.
    config = _tiny(epochs=1, curriculum=False, derive="sample", num_samples=6, retrain_steps=1)
    with checkpointing(tmp_path / "ckpt") as session:
        result = get_strategy("adashare").learn(problem, config)
    tried = result.history["architectures_tried"]
    assert tried > 1  # α near 0.5 after one epoch: six samples give several distinct policies
    assert session.phases == ["adashare-warmup", "adashare-search", *(f"adashare-retrain-{k}" for k in range(tried))]


def test_the_config_device_is_where_every_phase_trains(problem) -> None:  # type: ignore[no-untyped-def]
    result = get_strategy("adashare").learn(problem, _tiny(epochs=1, curriculum=False, device="cpu"))
    assert {p.device.type for _, m in result.params.items() for p in m.parameters()} == {"cpu"}
    with pytest.raises(ConfigError, match="AdaShareConfig.device must name a torch device"):
        _tiny(device="tpu:x")


def test_config_for_gives_a_search_that_unlocks_every_block(problem) -> None:  # type: ignore[no-untyped-def]
    config = get_strategy("adashare").config_for(problem, 4)
    assert config.epochs == config.epochs_to_unlock(8) == 8
    assert (config.lambda_sparsity, config.lambda_sharing) == (0.01, 0.002)  # measured at this scale, not Table 7's
    assert (config.sparsity_form, config.sharing_form) == ("code", "code")
    assert config.tau0 * config.tau_decay ** (config.epochs - 1) == pytest.approx(0.3)


# --------------------------------------------------------------------------- random policies at a GMac


def test_policy_costs_equal_the_cost_of_the_built_network(problem) -> None:  # type: ignore[no-untyped-def]
    costs = PolicyCosts.of(problem)
    rng = random.Random(4)
    for _ in range(6):
        u = random_policy_at_gmac(costs, rng, keep_blocks=False)
        graph, params = replay(problem, "one_net", policy_pipeline(costs.tasks, costs.gated, u))
        assert mtgraph.cost(graph, params).total_macs == costs.macs(u)


@pytest.mark.parametrize("relative", [1.0, 1.3, 1.8, 2.4])
def test_random_policies_at_or_above_one_net_hit_the_gmac_with_one_backbone(problem, relative) -> None:  # type: ignore[no-untyped-def]
    adashare = get_strategy("adashare")
    budget = Budget.gmac(relative, relative_to="one_net")
    target = budget.resolve(problem)
    rng = random.Random(1)
    for _ in range(3):
        arch = adashare.sample_random(problem, rng, budget)
        report = mtgraph.cost(arch.graph, arch.params)
        assert abs(report.gmac - target) <= 0.05 * target
        assert report.total_params == _one_backbone(problem)
        assert arch.details["every_block_run"] is True
        assert replay(problem, "one_net", arch.pipeline)[0] == arch.graph


@pytest.mark.parametrize("relative", [0.3, 0.7])
def test_random_policies_below_one_net_skip_some_block_for_every_task(problem, relative) -> None:  # type: ignore[no-untyped-def]
    budget = Budget.gmac(relative, relative_to="one_net")
    target = budget.resolve(problem)
    arch = get_strategy("adashare").sample_random(problem, random.Random(2), budget)
    report = mtgraph.cost(arch.graph, arch.params)
    assert abs(report.gmac - target) <= 0.05 * target
    assert arch.details["every_block_run"] is False and report.total_params < _one_backbone(problem)


def test_random_policies_are_refused_a_parameter_budget(problem) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="matched in GMac"):
        get_strategy("adashare").sample_random(problem, random.Random(0), Budget.params(1.0, relative_to="one_net"))


def test_random_policies_avoid_excluded_ones(problem) -> None:  # type: ignore[no-untyped-def]
    costs = PolicyCosts.of(problem)
    rng = random.Random(0)
    drawn: list[torch.Tensor] = []
    for _ in range(5):
        drawn.append(random_policy_at_gmac(costs, rng, 1.2 * problem.reference_costs.one_net_gmac, exclude=drawn))
    assert len({str(u.tolist()) for u in drawn}) == 5


# --------------------------------------------------------------------------- architecture


def test_architecture_is_the_learned_policy_with_fresh_weights_and_fresh_site_statistics(problem) -> None:  # type: ignore[no-untyped-def]
    u = torch.ones(3, 8, dtype=torch.bool)
    u[0, 1] = u[2, 4] = False  # seg skips block 2, depth block 5: later blocks run at several sites
    result = run_fixed_policy(problem, u, _tiny(retrain_steps=3))
    arch = get_strategy("adashare").architecture(problem, result)
    assert arch.label == "learned" and arch.start == "one_net" and arch.graph == result.graph
    assert arch.details["decisions"] == u.tolist()
    fresh = replay(problem, "one_net", result.pipeline)[1]
    for key in fresh.keys():
        for name, tensor in fresh[key].state_dict().items():
            assert torch.equal(arch.params[key].state_dict()[name], tensor), (key, name)  # untrained
            if tensor.is_floating_point() and tensor.numel() > 1 and "running" not in name and key.startswith("b"):
                assert not torch.equal(result.params[key].state_dict()[name], tensor), (key, name)  # trained
    # Every shared call site has its own statistics, fresh (not the trained result's).
    sites = arch.params.site_items()
    assert sites and {key for (key, _), _ in sites} == {key for (key, _), _ in result.params.site_items()}
    for _, module in sites:
        bn = next(m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert sum(isinstance(n, Skip) for n in arch.graph.nodes) == 2
