"""mtgraph.train.fit: learning, loss composition, hooks, alternating optimizer groups, data order."""

from __future__ import annotations

import math

import pytest
import torch
import train_run as run  # noqa: E402 - tests/scripts is put on sys.path by conftest.py
from torch.utils.data import DataLoader, IterableDataset

from mtgraph.errors import ConfigError, DataError
from mtgraph.train import Hook, OptimizerGroup, TrainState, adam, evaluate, fit, sgd
from mtgraph.train.distributed import epoch_batches


@pytest.fixture(scope="module")
def tasks():
    return run.build_tasks()


def test_three_task_one_net_beats_untrained_on_every_task(tasks):
    graph, params = run.build_model(tasks, seed=0)
    held_out = run.build_data(48, seed=2)
    before = evaluate(graph, params, tasks, held_out)
    untrained_loss = _held_out_losses(graph, params, tasks, held_out)
    result = fit(graph, params, tasks, run.build_data(128, seed=1), steps=150, batch_size=8,
                 optimizer=adam(3e-3), seed=0, device="cpu", progress=False)
    after = evaluate(result.graph, result.params, tasks, held_out)
    trained_loss = _held_out_losses(result.graph, result.params, tasks, held_out)
    for name, task in tasks.items():
        metric = task.primary
        better = after[name][metric] > before[name][metric] if task.higher_is_better[metric] else after[name][metric] < before[name][metric]
        assert better, f"{name}: {metric} {before[name][metric]:.4f} -> {after[name][metric]:.4f}"
        assert trained_loss[name] < 0.7 * untrained_loss[name], (name, untrained_loss[name], trained_loss[name])
    # Concrete numbers, so a regression in learning is visible.
    assert after["seg"]["pixel_acc"] > 0.8
    assert after["normals"]["cos_sim"] > 0.8
    assert after["depth"]["rmse"] < 0.5 * before["depth"]["rmse"]
    assert len(result.history.total) == 150 and result.step == 150
    assert set(result.history.losses) == set(tasks)


def _held_out_losses(graph, params, tasks, data):
    import mtgraph

    module = mtgraph.compile(graph, params).eval()
    images, targets = next(iter(DataLoader(data, batch_size=len(data))))
    with torch.no_grad():
        outputs = module(images)
    return {name: float(task.loss(outputs[name], targets[task.target])) for name, task in tasks.items()}


class Extra(Hook):
    """Adds 0.5 * (mean of the seg output)^2 and records what it saw."""

    def __init__(self):
        self.steps: list[int] = []
        self.epochs_started: list[int] = []
        self.epochs_ended: list[int] = []
        self.fit_calls = [0, 0]

    def on_fit_start(self, state):
        self.fit_calls[0] += 1

    def on_epoch_start(self, state):
        self.epochs_started.append(state.epoch)

    def extra_loss(self, state, outputs, batch):
        self.steps.append(state.step)
        images, targets = batch
        assert set(targets) == {"seg", "depth", "normals"}
        return 0.5 * outputs["seg"].mean() ** 2

    def on_epoch_end(self, state):
        self.epochs_ended.append(state.epoch)
        return None

    def on_fit_end(self, state):
        self.fit_calls[1] += 1


def test_losses_are_weighted_mean_plus_hook_terms_and_hooks_are_called_in_order(tasks):
    graph, params = run.build_model(tasks, seed=0)
    hook = Extra()
    weights = {"seg": 2.0, "depth": 0.5, "normals": 1.0}
    result = fit(graph, params, tasks, run.build_data(24, seed=1), epochs=2, batch_size=8, loss_weights=weights,
                 hooks=[hook], seed=0, device="cpu", eval_data=run.build_data(8, seed=3))
    h = result.history
    assert len(h.total) == 6 and h.groups == ["main"] * 6
    assert hook.steps == list(range(6))
    assert hook.epochs_started == [0, 1] and hook.epochs_ended == [0, 1] and hook.fit_calls == [1, 1]
    for i in range(6):
        expected = sum(weights[t] * h.losses[t][i] for t in tasks) + h.extra["Extra"][i]
        assert h.total[i] == pytest.approx(expected, rel=1e-5)
        assert h.extra["Extra"][i] >= 0
    assert [e["epoch"] for e in h.epochs] == [0, 1] and [e["step"] for e in h.epochs] == [3, 6]
    assert h.epochs[1]["loss"]["seg"] == pytest.approx(sum(h.losses["seg"][3:]) / 3)
    assert set(h.epochs[1]["metrics"]) == set(tasks) and "miou" in h.epochs[1]["metrics"]["seg"]
    assert result.metrics == h.epochs[1]["metrics"]


def test_default_loss_is_the_mean_over_tasks(tasks):
    graph, params = run.build_model(tasks, seed=0)
    h = fit(graph, params, tasks, run.build_data(16, seed=1), steps=2, batch_size=8, device="cpu").history
    for i in range(2):
        assert h.total[i] == pytest.approx(sum(h.losses[t][i] for t in tasks) / 3, rel=1e-6)


class ChangeWatcher(Hook):
    """Checks, every step, that only the active group's parameters moved."""

    def __init__(self):
        self.log: list[tuple[str, set[str]]] = []

    def on_step_start(self, state: TrainState):
        self.before = {k: [p.detach().clone() for p in m.parameters()] for k, m in state.params.items()}

    def on_step_end(self, state: TrainState):
        moved = {k for k, m in state.params.items()
                 if any(not a.equal(b) for a, b in zip(self.before[k], m.parameters()))}
        self.log.append((state.group, moved))


def test_alternating_groups_take_turns_and_update_only_their_parameters(tasks):
    graph, params = run.build_model(tasks, seed=0)
    watcher = ChangeWatcher()
    groups = [
        OptimizerGroup("trunk", lambda key, module: not key.startswith("head."), adam(1e-3), steps=2),
        OptimizerGroup("heads", None, sgd(0.05), data=run.build_data(8, seed=5), batch_size=4, steps=1),
    ]
    result = fit(graph, params, tasks, run.build_data(16, seed=1), epochs=3, batch_size=8, groups=groups,
                 hooks=[watcher], device="cpu")
    assert result.history.groups == ["trunk", "trunk", "heads"] * 3
    heads = {f"head.{t}" for t in tasks}
    trunk = set(params.keys()) - heads
    for group, moved in watcher.log:
        assert moved == (trunk if group == "trunk" else heads), (group, moved)
    assert result.epoch == 3 and result.step == 9


def test_a_group_without_steps_takes_one_pass_over_its_data(tasks):
    graph, params = run.build_model(tasks, seed=0)
    groups = [
        OptimizerGroup("trunk", lambda key, module: not key.startswith("head.")),
        OptimizerGroup("heads", lambda key, module: key.startswith("head."), data=run.build_data(8, seed=5), batch_size=4),
    ]
    result = fit(graph, params, tasks, run.build_data(24, seed=1), epochs=1, batch_size=8, groups=groups, device="cpu")
    assert result.history.groups == ["trunk"] * 3 + ["heads"] * 2


def test_steps_budget_stops_mid_epoch(tasks):
    graph, params = run.build_model(tasks, seed=0)
    result = fit(graph, params, tasks, run.build_data(24, seed=1), steps=4, epochs=10, batch_size=8, device="cpu")
    assert result.step == 4 and result.epoch == 1 and len(result.history.epochs) == 1


def test_a_dataloader_gives_batch_size_and_the_run_is_seed_deterministic(tasks):
    data = run.build_data(16, seed=1)
    finals = []
    for seed in (0, 0, 1):
        graph, params = run.build_model(tasks, seed=0)
        result = fit(graph, params, tasks, DataLoader(data, batch_size=8, shuffle=True), steps=3, seed=seed, device="cpu")
        finals.append(result.history.total)
    assert finals[0] == finals[1]
    assert finals[0] != finals[2]


def test_progress_bar_is_silent_when_not_a_terminal(tasks, capsys):
    graph, params = run.build_model(tasks, seed=0)
    fit(graph, params, tasks, run.build_data(8, seed=1), steps=1, batch_size=8, device="cpu")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_configuration_errors(tasks):
    graph, params = run.build_model(tasks, seed=0)
    data = run.build_data(16, seed=1)
    with pytest.raises(ConfigError, match="give epochs or steps"):
        fit(graph, params, tasks, data, batch_size=8)
    with pytest.raises(ConfigError, match=r"missing \['normals'\]"):
        fit(graph, params, {k: v for k, v in tasks.items() if k != "normals"}, data, steps=1, batch_size=8)
    with pytest.raises(ConfigError, match="loss_weights must give one weight per task"):
        fit(graph, params, tasks, data, steps=1, batch_size=8, loss_weights={"seg": 1.0})
    with pytest.raises(ConfigError, match="pass batch_size"):
        fit(graph, params, tasks, data, steps=1)
    with pytest.raises(ConfigError, match="no full batch of 32"):
        fit(graph, params, tasks, DataLoader(data, batch_size=32, drop_last=True), steps=1)
    with pytest.raises(ConfigError, match="contradicts"):
        fit(graph, params, tasks, DataLoader(data, batch_size=4), steps=1, batch_size=8)
    with pytest.raises(ConfigError, match="iterable dataset"):
        fit(graph, params, tasks, _Stream(), steps=1, batch_size=8)
    with pytest.raises(ConfigError, match="at most one optimizer group"):
        fit(graph, params, tasks, data, steps=1, batch_size=8, groups=[OptimizerGroup("a"), OptimizerGroup("b")])
    with pytest.raises(ConfigError, match="inside each OptimizerGroup"):
        fit(graph, params, tasks, data, steps=1, batch_size=8, groups=[OptimizerGroup("a")], optimizer=adam())
    with pytest.raises(ConfigError, match="must derive from mtgraph.train.Hook"):
        fit(graph, params, tasks, data, steps=1, batch_size=8, hooks=[object()])


class _Stream(IterableDataset):
    def __iter__(self):
        return iter(())


def test_a_missing_target_names_the_task(tasks):
    graph, params = run.build_model(tasks, seed=0)
    renamed = {**tasks, "depth": _with_target(tasks["depth"], "disparity")}
    with pytest.raises(DataError, match="task 'depth' learns target 'disparity'"):
        fit(graph, params, renamed, run.build_data(8, seed=1), steps=1, batch_size=8, device="cpu")


def _with_target(task, target):
    import dataclasses

    return dataclasses.replace(task, target=target)


# --- data order -------------------------------------------------------------------------------


def test_epoch_order_depends_only_on_seed_stream_and_epoch():
    a = epoch_batches(50, 8, seed=3, stream=0, epoch=2)
    assert a == epoch_batches(50, 8, seed=3, stream=0, epoch=2)
    assert a != epoch_batches(50, 8, seed=3, stream=0, epoch=3)
    assert a != epoch_batches(50, 8, seed=4, stream=0, epoch=2)
    assert a != epoch_batches(50, 8, seed=3, stream=1, epoch=2)
    assert sorted(i for b in a for i in b) == list(range(50)) and [len(b) for b in a] == [8] * 6 + [2]
    assert len(epoch_batches(50, 8, seed=3, stream=0, epoch=2, drop_last=True)) == 6
    assert epoch_batches(5, 2, seed=0, stream=0, epoch=0, shuffle=False) == [[0, 1], [2, 3], [4]]


def test_ranks_split_every_global_batch():
    whole = epoch_batches(50, 8, seed=3, stream=0, epoch=1, world_size=1, drop_last=True)
    parts = [epoch_batches(50, 8, seed=3, stream=0, epoch=1, rank=r, world_size=2) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole) == 6  # the short last batch is dropped with 2 ranks
    for k, batch in enumerate(whole):
        assert sorted(parts[0][k] + parts[1][k]) == sorted(batch)
        assert len(parts[0][k]) == len(parts[1][k]) == 4
    with pytest.raises(ConfigError, match="does not divide among 3 processes"):
        epoch_batches(50, 8, seed=0, stream=0, epoch=0, rank=0, world_size=3)


def test_history_pads_hook_terms_that_start_late():
    from mtgraph.train import History

    h = History()
    h.record_step("main", {"a": 1.0}, {}, 1.0)
    h.record_step("main", {"a": 2.0}, {"H": 0.5}, 2.5)
    h.record_step("main", {"a": 3.0}, {}, 3.0)
    assert h.extra == {"H": [None, 0.5, None]}
    assert h.mean_losses(1) == {"a": 2.5}
    assert math.isnan(History().mean_losses(0).get("a", math.nan))
