"""learn_grouping end to end on tiny scenes: exact selection, the two approximations, reruns, budgets, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mtgraph
from mtgraph import tasks as T
from mtgraph.data import SceneDataset
from mtgraph.errors import BudgetError, ConfigError
from mtgraph.strategies.grouping import GroupingConfig, config_for_budget, learn_grouping
from mtgraph.zoo import resnet_tiny

SIZE = 32


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


def _config(tmp_path: Path, **changes: object) -> GroupingConfig:
    options: dict[str, object] = {"epochs": 1, "batch_size": 8, "lr": 3e-3, "eval_batch_size": 8, "random_draws": 20,
                                  "folder": str(tmp_path)}
    options.update(changes)
    return GroupingConfig(**options)  # type: ignore[arg-type]


def _load(folder: Path, record: dict, backbone: mtgraph.Backbone) -> tuple[mtgraph.MTGraph, mtgraph.ParamStore]:
    tasks = _tasks()
    heads = {t: tasks[t].make_head(backbone.output_shape[0], (SIZE, SIZE)) for t in record["tasks"]}
    return mtgraph.load(folder / record["model"], backbone, heads)


def test_exact_grouping_compiles_the_chosen_candidates(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    train, val = scenes
    full, small = _backbone(2), _backbone(1)
    config = _config(tmp_path, budget=1.5)
    result = learn_grouping(full, None, _tasks(), train, config=config, val_data=val, small_backbone=small)
    history = result.history
    assert result.strategy == "grouping"
    assert history["trainings"] == 5  # seg, unrelated, seg+unrelated, and the two small singles
    records = {r["name"]: r for r in history["candidates"]}
    final = history["final"]
    assert final["total_cost"] <= 1.5 + 1e-9
    assert set(final["serving"].values()) <= set(final["networks"])
    # GMac of the compiled solution = the chosen candidates' trunks (their selection costs) + the kept heads.
    unit = history["cost_unit"]["one_network"]
    assert unit == full.macs
    trunks = sum(records[n]["macs"] for n in final["networks"])
    assert trunks == pytest.approx(final["total_cost"] * unit, rel=1e-12)
    heads = sum(records[n]["head_macs"][t] for t, n in final["serving"].items())
    assert mtgraph.cost(result.graph, result.params).total_macs == trunks + heads
    # Each task's output is the output of the candidate serving it.
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        got = mtgraph.compile(result.graph, result.params).eval()(x)
        for task, name in final["serving"].items():
            backbone = small if records[name]["small"] else full
            graph, params = _load(tmp_path, records[name], backbone)
            assert torch.equal(got[task], mtgraph.compile(graph, params).eval()(x)[task]), task
    # Selection is exact on the validation losses in the records.
    assert final["total_loss"] == pytest.approx(
        sum(records[n]["val_losses"][t] for t, n in final["serving"].items()), rel=1e-12)
    assert {d.what for d in result.decisions if d.accepted and d.what.startswith("network")} == {
        f"network {n}" for n in final["networks"]}
    curve = result.figures["curve"]
    assert [row["budget"] for row in curve][:3] == [1.0, 1.5, 2.0]
    assert all(a["loss"] >= b["loss"] for a, b in zip(curve, curve[1:]))  # the exact optimum never gets worse
    labels, matrix = next(iter(result.figures["similarity"].values()))
    assert labels == ["seg", "unrelated"] and len(matrix) == 2
    assert {b["baseline"] for b in result.figures["baselines"]} == {"all-in-one", "independent", "independent small"}
    assert set(history["metrics"]) == {"seg", "unrelated"}
    # A rerun on the same folder trains nothing and returns the same network.
    again = learn_grouping(full, None, _tasks(), train, config=config, val_data=val, small_backbone=small)
    assert again.history["trainings"] == 0 and len(again.history["reused"]) == 5
    assert mtgraph.print_graph(again.graph) == mtgraph.print_graph(result.graph)
    with torch.no_grad():
        repeat = mtgraph.compile(again.graph, again.params).eval()(x)
    assert all(torch.equal(repeat[t], got[t]) for t in got)


def test_higher_order_trains_pairs_and_only_the_chosen_predicted_networks(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    train, val = scenes
    names = ("seg", "normals", "unrelated")
    result = learn_grouping(_backbone(2), None, _tasks(names), train, val_data=val,
                            config=_config(tmp_path, method="higher_order", budget=1.0))
    history = result.history
    # Budget 1 affords one network serving all three tasks: only the predicted seg+normals+unrelated fits.
    assert history["proxy"]["networks"] == ["normals+seg+unrelated"]
    assert history["trained"] == ["seg (full)", "normals (full)", "unrelated (full)", "normals+seg (full)",
                                  "seg+unrelated (full)", "normals+unrelated (full)", "normals+seg+unrelated (full)"]
    predicted = [c for c in result.figures["candidates"] if c["predicted"]]
    assert [c["network"] for c in predicted] == ["normals+seg+unrelated"]
    # Prediction = mean of the task's losses over the pair networks inside (papers/003 §5.3.2).
    records = {r["name"]: r for r in history["candidates"]}
    expected = (records["normals+seg"]["val_losses"]["seg"] + records["seg+unrelated"]["val_losses"]["seg"]) / 2
    assert predicted[0]["seg"] == pytest.approx(expected, rel=1e-12)
    assert history["final"]["task_losses"] == records["normals+seg+unrelated"]["val_losses"]
    assert result.graph.tasks == names and result.pipeline == ""


def test_early_stopping_selects_on_short_runs_then_trains_the_choice(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    train, val = scenes
    result = learn_grouping(_backbone(2), None, _tasks(), train, val_data=val,
                            config=_config(tmp_path, method="early_stopping", epochs=5, early_fraction=0.2, budget=2.0))
    history = result.history
    early = [r for r in history["candidates"] if r["phase"] == "early"]
    full = [r for r in history["candidates"] if r["phase"] == "full"]
    assert len(early) == 3 and all(r["steps"] == 2 for r in early)  # 0.2 * 5 epochs * 2 batches per epoch
    assert sorted(r["name"] for r in full) == sorted(history["proxy"]["networks"])
    assert all(r["steps"] == 10 for r in full)
    assert history["trainings"] == 3 + len(full)


def test_budget_below_the_cheapest_cover_is_refused(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    train, val = scenes
    with pytest.raises(BudgetError, match="must be at least 1"):
        learn_grouping(_backbone(2), None, _tasks(), train, val_data=val, config=_config(tmp_path, budget=0.5))


def test_config_validation_and_budget_in_epochs() -> None:
    config = config_for_budget(7.0)
    assert config.total_epochs == 7.0
    assert config.per_candidate_epochs(3, small=False) == pytest.approx(1.0)  # 7 subsets
    assert config.per_candidate_epochs(3, small=True) == pytest.approx(0.7)  # + 3 small singles
    assert GroupingConfig(epochs=4).per_candidate_epochs(5, small=True) == 4.0
    with pytest.raises(ConfigError, match="method must be one of"):
        GroupingConfig(method="greedy")
    with pytest.raises(ConfigError, match="budget must be"):
        GroupingConfig(budget=0)
    with pytest.raises(ConfigError, match="executor must be one of"):
        GroupingConfig(executor="threads")
    with pytest.raises(ConfigError, match="early_fraction"):
        GroupingConfig(early_fraction=1.5)


def test_input_errors(tmp_path: Path, scenes) -> None:  # type: ignore[no-untyped-def]
    train, _ = scenes
    full = _backbone(2)
    with pytest.raises(ConfigError, match="traced mtgraph.Backbone"):
        learn_grouping(resnet_tiny(width=2), None, _tasks(), train)
    with pytest.raises(ConfigError, match="latency"):
        learn_grouping(full, None, _tasks(), train, config=GroupingConfig(method="higher_order", cost="latency"))
    shallow = mtgraph.trace(resnet_tiny(width=1).eval(), torch.zeros(2, 3, SIZE, SIZE), cuts="stages")
    with pytest.raises(ConfigError, match="same number of blocks"):
        learn_grouping(full, None, _tasks(), train, small_backbone=shallow)
    with pytest.raises(ConfigError, match="must be a GroupingConfig"):
        learn_grouping(full, None, _tasks(), train, config={"budget": 2})  # type: ignore[arg-type]


def test_latency_costs_are_relative_to_the_median_full_size_network(tmp_path: Path, scenes,  # type: ignore[no-untyped-def]
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from mtgraph.strategies.grouping import candidates

    # The measurement itself (ONNX export + onnxruntime timing) is slow and noisy; fake it per network size.
    def fake_latency(graph: mtgraph.MTGraph, params: mtgraph.ParamStore, folder: Path, repeats: int) -> float:
        return 1.0 + 0.5 * len(graph.tasks)

    monkeypatch.setattr(candidates, "_latency_ms", fake_latency)
    train, val = scenes
    result = learn_grouping(_backbone(2), None, _tasks(), train, val_data=val,
                            config=_config(tmp_path, cost="latency", budget=3.0))
    assert result.history["cost_unit"] == {"measure": "latency", "one_network": 1.5}  # median of 1.5, 1.5, 2.0
    costs = {row["network"]: row["cost"] for row in result.figures["candidates"]}
    assert costs == {"seg": 1.0, "unrelated": 1.0, "seg+unrelated": pytest.approx(2.0 / 1.5)}
    assert all(r["latency_ms"] == 1.0 + 0.5 * len(r["tasks"]) for r in result.history["candidates"])
