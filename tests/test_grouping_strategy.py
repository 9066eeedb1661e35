"""Task grouping through the front door on tiny scenes: learn, budgets, passes, random groupings, the old wrapper."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import mtgraph
from mtgraph import Budget, Problem
from mtgraph import tasks as T
from mtgraph.data import SceneDataset
from mtgraph.errors import BudgetError, ConfigError
from mtgraph.strategies import Curve, Heatmap, Table, get_strategy, replay
from mtgraph.strategies.grouping import (
    DEFAULT_NETWORKS,
    GroupingConfig,
    NetworkUnit,
    budget_of_networks,
    learn_grouping,
    networks_in,
    run_grouping,
)
from mtgraph.strategies.grouping.candidates import _HalveOnPlateau
from mtgraph.zoo import resnet_tiny

SIZE = 32
GROUPING = get_strategy("grouping")


def _backbone(width: int) -> mtgraph.Backbone:
    torch.manual_seed(0)
    return mtgraph.trace(resnet_tiny(width=width).eval(), torch.zeros(2, 3, SIZE, SIZE))


@pytest.fixture(scope="module")
def scenes() -> tuple[SceneDataset, SceneDataset]:
    return (SceneDataset(16, size=SIZE, seed=0, unrelated_strength=0.1),
            SceneDataset(8, size=SIZE, seed=1, unrelated_strength=0.1))


def _tasks(names: tuple[str, ...] = ("seg", "unrelated")) -> dict[str, T.Task]:
    made = {"seg": T.segmentation(5, hidden=4), "normals": T.normals(hidden=4),
            "unrelated": T.regression(name="unrelated", hidden=4)}
    return {n: made[n] for n in names}


def _problem(scenes, names: tuple[str, ...] = ("seg", "unrelated"), width: int = 2) -> Problem:  # type: ignore[no-untyped-def]
    train, val = scenes
    torch.manual_seed(1)
    return Problem.create(_backbone(width), _tasks(names), train, val_data=val, seed=0)


def _config(tmp_path: Path, **changes: object) -> GroupingConfig:
    options: dict[str, object] = {"epochs": 1, "batch_size": 8, "lr": 3e-3, "eval_batch_size": 8, "random_draws": 20,
                                  "folder": str(tmp_path)}
    options.update(changes)
    return GroupingConfig(**options)  # type: ignore[arg-type]


def _load(folder: Path, record: dict, backbone: mtgraph.Backbone) -> tuple[mtgraph.MTGraph, mtgraph.ParamStore]:
    tasks = _tasks()
    heads = {t: tasks[t].make_head(backbone.output_shape[0], (SIZE, SIZE)) for t in record["tasks"]}
    return mtgraph.load(folder / record["model"], backbone, heads)


# --------------------------------------------------------------------------- the budget in networks


def test_a_gmac_budget_counts_networks_with_the_heads_paid_once(scenes) -> None:  # type: ignore[no-untyped-def]
    problem = _problem(scenes)
    unit = NetworkUnit.of(problem)
    one_net = problem.reference_costs.one_net_gmac
    assert unit.trunk_macs == problem.backbone.macs and unit.heads_macs > 0
    assert networks_in(problem, Budget.gmac(1, relative_to="one_net")) == pytest.approx(1.0, rel=1e-12)
    # b × One-Net buys b + (b − 1)·H/T networks: the heads are not paid once per network.
    expected = 2 + unit.heads_macs / unit.trunk_macs
    assert networks_in(problem, Budget.gmac(2, relative_to="one_net")) == pytest.approx(expected, rel=1e-12)
    assert budget_of_networks(problem, 3).value == pytest.approx((3 * unit.trunk_macs + unit.heads_macs) / 1e9, rel=1e-12)
    assert budget_of_networks(problem, 1).value == pytest.approx(one_net, rel=1e-12)
    with pytest.raises(ConfigError, match="give a GMac budget"):
        networks_in(problem, Budget.params(2, relative_to="one_net"))
    with pytest.raises(ConfigError, match="number > 0"):
        budget_of_networks(problem, 0)


# --------------------------------------------------------------------------- learn


def test_exact_grouping_builds_the_chosen_candidates_by_passes(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    problem = _problem(scenes)
    small = _backbone(1)
    budget = budget_of_networks(problem, 1.5)
    config = _config(tmp_path)
    result = run_grouping(problem, config, budget, small_backbone=small)
    history = result.history
    assert result.strategy == "grouping" and result.start == "one_net"
    assert history["trainings"] == 5  # seg, unrelated, seg+unrelated, and the two small singles
    assert history["budget"]["networks"] == pytest.approx(1.5, rel=1e-12)
    records = {r["name"]: r for r in history["candidates"]}
    final = history["final"]
    assert final["total_cost"] <= 1.5 + 1e-9
    assert set(final["serving"].values()) <= set(final["networks"])
    # The pipeline is what built the graph: replaying it on One-Net gives exactly the same graph.
    assert replay(problem, result.start, result.pipeline)[0] == result.graph
    groups = [[t for t, n in final["serving"].items() if n == name] for name in dict.fromkeys(final["serving"].values())]
    assert (result.pipeline == "") == (len(groups) == 1)
    # GMac of the solution = the chosen candidates' trunks (their selection costs) + the kept heads, within the budget.
    unit = history["cost_unit"]["one_network"]
    assert unit == problem.backbone.macs
    trunks = sum(records[n]["macs"] for n in set(final["serving"].values()))
    assert trunks == pytest.approx(final["total_cost"] * unit, rel=1e-12)
    heads = sum(records[n]["head_macs"][t] for t, n in final["serving"].items())
    report = mtgraph.cost(result.graph, result.params)
    assert report.total_macs == trunks + heads
    assert report.gmac <= budget.value * (1 + 1e-12)
    # Each task's output is the output of the candidate serving it.
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        got = mtgraph.compile(result.graph, result.params).eval()(x)
        for task, name in final["serving"].items():
            graph, params = _load(tmp_path, records[name], small if records[name]["label"] == "small" else problem.backbone)
            assert torch.equal(got[task], mtgraph.compile(graph, params).eval()(x)[task]), task
    # Selection is exact on the validation losses in the records.
    assert final["total_loss"] == pytest.approx(
        sum(records[n]["val_losses"][t] for t, n in final["serving"].items()), rel=1e-12)
    assert {d.what for d in result.decisions if d.accepted and d.what.startswith("network")} == {
        f"network {n}" for n in final["networks"]}
    # Typed figures only; the curve's exact optimum never gets worse with more budget, the Pessimal never better.
    assert all(isinstance(f, (Curve, Heatmap, Table)) for f in result.figures.values())
    curve = result.figures["loss_vs_budget"]
    assert curve.x[:3] == (1.0, 1.5, 2.0)
    exact = curve.series["selected (exact)"]
    assert all(a >= b for a, b in zip(exact, exact[1:]))
    assert all(w >= e for w, e in zip(curve.series["pessimal"], exact))
    assert all(r >= e - 1e-12 for r, e in zip(curve.series["random (mean)"], exact))
    assert result.figures["pairwise"].rows == ("seg", "unrelated")
    assert {row[0] for row in result.figures["baselines"].rows} == {"all-in-one", "independent", "independent small"}
    assert set(history["metrics"]) == {"seg", "unrelated"}
    # A rerun on the same folder trains nothing and returns the same network.
    again = run_grouping(problem, config, budget, small_backbone=small)
    assert again.history["trainings"] == 0 and len(again.history["reused"]) == 5
    assert mtgraph.print_graph(again.graph) == mtgraph.print_graph(result.graph)
    with torch.no_grad():
        repeat = mtgraph.compile(again.graph, again.params).eval()(x)
    assert all(torch.equal(repeat[t], got[t]) for t in got)


def test_learn_through_the_registry_replays_and_rebuilds_fresh(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    problem = _problem(scenes)
    # Two networks' worth: the selection may keep one network or give each task its own.
    result = GROUPING.learn(problem, _config(tmp_path, random_draws=0), Budget.gmac(2, relative_to="one_net"))
    assert replay(problem, "one_net", result.pipeline)[0] == result.graph
    fresh = GROUPING.architecture(problem, result)
    assert fresh.graph == result.graph and fresh.start == "one_net" and fresh.pipeline == result.pipeline
    assert sorted(sum(fresh.details["groups"], [])) == ["seg", "unrelated"]
    # Fresh weights: not the trained ones.
    key = next(iter(fresh.params.keys()))
    assert fresh.params[key] is not result.params[key]


def test_higher_order_trains_pairs_and_only_the_chosen_predicted_networks(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    names = ("seg", "normals", "unrelated")
    problem = _problem(scenes, names)
    result = GROUPING.learn(problem, _config(tmp_path, method="higher_order"), budget_of_networks(problem, 1))
    history = result.history
    # Budget 1 affords one network serving all three tasks: only the predicted seg+normals+unrelated fits.
    assert history["proxy"]["networks"] == ["normals+seg+unrelated"]
    assert history["trained"] == ["seg (full)", "normals (full)", "unrelated (full)", "normals+seg (full)",
                                  "seg+unrelated (full)", "normals+unrelated (full)", "normals+seg+unrelated (full)"]
    candidates = result.figures["candidates"].records()
    predicted = [c for c in candidates if c["predicted"]]
    assert [c["network"] for c in predicted] == ["normals+seg+unrelated"]
    # Prediction = mean of the task's losses over the pair networks inside (papers/003 §5.3.2).
    records = {r["name"]: r for r in history["candidates"]}
    expected = (records["normals+seg"]["val_losses"]["seg"] + records["seg+unrelated"]["val_losses"]["seg"]) / 2
    assert predicted[0]["seg"] == pytest.approx(expected, rel=1e-12)
    assert history["final"]["task_losses"] == records["normals+seg+unrelated"]["val_losses"]
    assert result.graph.tasks == names and result.pipeline == ""


def test_early_stopping_trains_one_pass_over_a_fifth_of_the_data(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    problem = _problem(scenes)
    # 16 images, batch 4: 4 batches per epoch. Early runs see 20% of the data once: round(0.2 × 4) = 1 step,
    # whatever the full schedule is (20% of a 5-epoch schedule would be 4 steps).
    config = _config(tmp_path, method="early_stopping", epochs=5, early_fraction=0.2, batch_size=4)
    result = GROUPING.learn(problem, config, budget_of_networks(problem, 2))
    history = result.history
    early = [r for r in history["candidates"] if r["phase"] == "early"]
    full = [r for r in history["candidates"] if r["phase"] == "full"]
    assert len(early) == 3 and all(r["steps"] == 1 for r in early)
    assert sorted(r["name"] for r in full) == sorted(history["proxy"]["networks"])
    assert all(r["steps"] == 20 for r in full)
    assert history["trainings"] == 3 + len(full)
    # Every fit call had its own explicit phase name (checkpoint files carry it).
    files = sorted(p.name.split(".step-")[0] for p in tmp_path.glob("candidates/*/checkpoints/*.safetensors"))
    assert {"grouping-early-seg", "grouping-early-unrelated", "grouping-early-seg-unrelated"} <= set(files)
    assert {f"grouping-full-{'-'.join(sorted(r['tasks']))}" for r in full} <= set(files)


def test_budgets_below_the_cheapest_cover_or_in_parameters_are_refused(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    problem = _problem(scenes)
    one = problem.reference_costs.one_net_gmac
    with pytest.raises(BudgetError, match=rf"costs 1 network\(s\), {one:.6g} GMac"):
        GROUPING.learn(problem, _config(tmp_path), Budget.gmac(0.9, relative_to="one_net"))
    with pytest.raises(ConfigError, match="give a GMac budget"):
        GROUPING.learn(problem, _config(tmp_path), Budget.params(3, relative_to="one_net"))
    with pytest.raises(ConfigError, match="must be a GroupingConfig"):
        GROUPING.learn(problem, {"epochs": 2})  # type: ignore[arg-type]
    assert not list(tmp_path.glob("candidates/*"))  # refused before any training


def test_config_validation_and_config_for(scenes) -> None:  # type: ignore[no-untyped-def]
    problem = _problem(scenes, ("seg", "normals", "unrelated"))
    config = GROUPING.config_for(problem, 14.0)
    assert config.method == "exact" and config.epochs == pytest.approx(2.0)  # 7 subsets
    with pytest.raises(ConfigError, match="epochs must be a number > 0"):
        GROUPING.config_for(problem, 0)
    for options, message in (({"method": "greedy"}, "method must be one of"),
                             ({"executor": "threads"}, "executor must be one of"),
                             ({"optimizer": "rmsprop"}, "optimizer must be one of"),
                             ({"early_fraction": 0}, "early_fraction must be a number > 0"),
                             ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\)"),
                             ({"lr": 0}, "lr must be a number > 0"),
                             ({"halve_lr_on_plateau": "yes"}, "halve_lr_on_plateau must be True or False"),
                             ({"device": "gpu7"}, "device must name a torch device"),
                             ({"pessimal": 1}, "pessimal must be True or False"),
                             ({"sweep": "1,2"}, "sweep must be a sequence"),
                             ({"method": "higher_order", "cost": "latency"}, "latency")):
        with pytest.raises(ConfigError, match=message):
            GroupingConfig(**options)  # type: ignore[arg-type]
    # SGD's unset options are the paper's; Adam's are mtgraph's; what is given wins.
    assert GroupingConfig(optimizer="sgd").optimizer_settings() == {
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "halve_lr_on_plateau": True}
    assert GroupingConfig(optimizer="adam").optimizer_settings() == {
        "optimizer": "adam", "lr": 3e-3, "momentum": 0.9, "weight_decay": 0.0, "halve_lr_on_plateau": False}
    assert GroupingConfig(optimizer="sgd", lr=0.02, weight_decay=0.0, halve_lr_on_plateau=False).optimizer_settings() == {
        "optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 0.0, "halve_lr_on_plateau": False}


def test_halving_on_plateau_halves_every_rate_when_the_epoch_loss_stops_falling() -> None:
    hook = _HalveOnPlateau()
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    lrs = []
    for epoch, epoch_losses in enumerate(([3.0, 1.0], [1.0, 1.0], [2.0, 1.0], [0.5, 0.5])):  # means 2, 1, 1.5, 0.5
        for value in epoch_losses:
            hook.on_step_end(SimpleNamespace(losses={"a": value, "b": value}))  # type: ignore[arg-type]
        hook.on_epoch_end(SimpleNamespace(optimizers={"main": optimizer, "empty": None}, epoch=epoch))  # type: ignore[arg-type]
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == [0.1, 0.1, 0.05, 0.05] and hook.halved_at == [2]
    again = _HalveOnPlateau()
    again.load_state_dict(hook.state_dict())
    assert again.state_dict() == hook.state_dict()


def test_the_papers_sgd_trains_the_candidates(tmp_path: Path, scenes, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from mtgraph.strategies.grouping import candidates

    seen: list[tuple[str, object, list[str]]] = []
    real_fit = candidates.fit

    def watched_fit(*args, **kwargs):  # type: ignore[no-untyped-def]
        optimizer = kwargs["optimizer"]([("w", torch.nn.Parameter(torch.zeros(1)))])
        seen.append((type(optimizer).__name__, optimizer.defaults["lr"], [h.name for h in kwargs["hooks"]]))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(candidates, "fit", watched_fit)
    problem = _problem(scenes)
    config = GroupingConfig(optimizer="sgd", epochs=2, batch_size=8, eval_batch_size=8, random_draws=0, pessimal=False,
                            folder=str(tmp_path), device="cpu")
    result = GROUPING.learn(problem, config, budget_of_networks(problem, 1))
    assert result.history["final"]["networks"] == ["seg+unrelated"]
    assert all(r["steps"] == 4 for r in result.history["candidates"])
    assert seen == [("SGD", 0.1, ["grouping-validation", "grouping-halve-lr"])] * 3


def test_latency_costs_are_relative_to_the_median_full_size_network(tmp_path: Path, scenes,  # type: ignore[no-untyped-def]
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from mtgraph.strategies.grouping import candidates

    # The measurement itself (ONNX export + onnxruntime timing) is slow and noisy; fake it per network size.
    def fake_latency(graph: mtgraph.MTGraph, params: mtgraph.ParamStore, folder: Path, repeats: int) -> float:
        return 1.0 + 0.5 * len(graph.tasks)

    monkeypatch.setattr(candidates, "_latency_ms", fake_latency)
    problem = _problem(scenes)
    result = GROUPING.learn(problem, _config(tmp_path, cost="latency"), budget_of_networks(problem, 3))
    assert result.history["cost_unit"] == {"measure": "latency", "one_network": 1.5}  # median of 1.5, 1.5, 2.0
    costs = {row["network"]: row["cost (networks)"] for row in result.figures["candidates"].records()}
    assert costs == {"seg": 1.0, "unrelated": 1.0, "seg+unrelated": pytest.approx(2.0 / 1.5)}
    assert all(r["latency_ms"] == 1.0 + 0.5 * len(r["tasks"]) for r in result.history["candidates"])


def test_the_old_entry_point_still_works_with_a_budget_in_networks(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    train, val = scenes
    backbone = _backbone(2)
    config = _config(tmp_path, random_draws=0, pessimal=False)
    result = learn_grouping(backbone, None, _tasks(), train, config=config, val_data=val, budget=1.0)
    assert result.history["budget"]["networks"] == pytest.approx(1.0, rel=1e-12)
    assert result.history["final"]["networks"] == ["seg+unrelated"] and result.pipeline == ""
    assert DEFAULT_NETWORKS == 2.0
    shallow = mtgraph.trace(resnet_tiny(width=1).eval(), torch.zeros(2, 3, SIZE, SIZE), cuts="stages")
    with pytest.raises(ConfigError, match="same number of blocks"):
        learn_grouping(backbone, None, _tasks(), train, config=config, small_backbone=shallow)
    with pytest.raises(ConfigError, match="small_heads were given without a small_backbone"):
        learn_grouping(backbone, None, _tasks(), train, config=config, small_heads={})


# --------------------------------------------------------------------------- random groupings


@pytest.fixture(scope="module")
def four_tasks() -> Problem:
    return mtgraph.toy_problem(("seg", "depth", "edges", "normals"), blocks=3)


@pytest.mark.parametrize("networks", [1, 2, 3, 4])
def test_random_groupings_cost_within_five_percent_of_reachable_budgets(four_tasks: Problem, networks: int) -> None:
    unit = NetworkUnit.of(four_tasks)
    rng = random.Random(networks)
    seen = set()
    for _ in range(20):
        # Any target within 4% of m networks' cost is reachable, and only by m (neighbouring costs are >= 18% apart).
        target = unit.gmac(networks) * rng.uniform(0.96, 1.04)
        arch = GROUPING.sample_random(four_tasks, rng, Budget.gmac(target))
        gmac = mtgraph.cost(arch.graph, arch.params).gmac
        assert abs(gmac - target) <= 0.05 * target
        assert arch.details["networks"] == networks == len(arch.details["groups"])
        assert sorted(t for g in arch.details["groups"] for t in g) == sorted(four_tasks.task_names)
        assert replay(four_tasks, "one_net", arch.pipeline)[0] == arch.graph
        seen.add(str(arch.details["groups"]))
    # Several groupings of that size are drawn (there are S(4, m) of them: 1, 7, 6, 1).
    count = {1: 1, 2: 7, 3: 6, 4: 1}[networks]
    assert len(seen) == count if count == 1 else len(seen) >= 4


def test_an_unreachable_grouping_budget_names_the_closest_cost(four_tasks: Problem) -> None:
    unit = NetworkUnit.of(four_tasks)
    between = (unit.gmac(1) + unit.gmac(2)) / 2
    closest = min((unit.gmac(1), unit.gmac(2)), key=lambda g: abs(g - between))
    with pytest.raises(BudgetError, match=rf"the closest is {closest:.6g} GMac"):
        GROUPING.sample_random(four_tasks, random.Random(0), Budget.gmac(between))
    with pytest.raises(ConfigError, match="give a GMac budget"):
        GROUPING.sample_random(four_tasks, random.Random(0), Budget.params(1, relative_to="one_net"))
    unbounded = GROUPING.sample_random(four_tasks, random.Random(0))
    assert 1 <= unbounded.details["networks"] <= 4


# --------------------------------------------------------------------------- width-scaled baselines


def test_the_all_in_one_network_is_width_scaled_to_each_budget(tmp_path: Path) -> None:
    from mtgraph.workflow import scene_problem

    problem = scene_problem(("seg", "depth"), size=SIZE, width=4, num_train=16, num_val=8)
    config = _config(tmp_path, width_baselines=True, sweep=(1.0, 2.0), random_draws=0, pessimal=False)
    result = GROUPING.learn(problem, config, budget_of_networks(problem, 2))
    rows = {row["budget"]: row for row in result.history["width_baselines"]}
    candidates = {r["name"]: r for r in result.history["candidates"]}
    # One network's budget: the all-in-one candidate itself (multiplier exactly 1), not trained again.
    assert rows[1.0]["multiplier"] == 1.0 and rows[1.0]["network"] == "depth+seg"
    assert rows[1.0]["loss"] == pytest.approx(sum(candidates["depth+seg"]["val_losses"].values()), rel=1e-12)
    # Two networks' budget: a wider One-Net costing the budget's GMac (heads included) within ±5%, trained like
    # the candidates.
    two = rows[2.0]
    target = budget_of_networks(problem, 2).value
    assert two["within"] and two["multiplier"] > 1 and two["network"] == "depth+seg[w2]"
    assert abs(two["measured_gmac"] - target) <= 0.05 * target
    record = next(p for p in tmp_path.glob("candidates/depth+seg-w2/full.json"))
    assert '"steps": 2' in record.read_text()  # 16 images, batch 8, 1 epoch: as every candidate
    assert result.history["trainings"] == 4  # the 3 candidates and the one scaled network
    curve = result.figures["loss_vs_budget"]
    assert curve.series["all-in-one (width-scaled)"] == (rows[1.0]["loss"], two["loss"])
    assert [r[0] for r in result.figures["width_baselines"].rows] == [1.0, 2.0]
    again = GROUPING.learn(problem, config, budget_of_networks(problem, 2))
    assert again.history["trainings"] == 0 and again.history["width_baselines"] == result.history["width_baselines"]


def test_width_scaled_baselines_need_a_rescalable_problem(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    problem = _problem(scenes)
    with pytest.raises(ConfigError, match="width-scaled baselines need problem.rescale"):
        GROUPING.learn(problem, _config(tmp_path, width_baselines=True), budget_of_networks(problem, 2))
    assert not list(tmp_path.glob("candidates/*"))  # refused before any training
