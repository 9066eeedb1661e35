"""Checkpoints: safe format, atomic files, exact resume (in process and after SIGKILL), NaN handling."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import mtgraph
from mtgraph.errors import CheckpointError, TrainError
from mtgraph.train import (
    CheckpointConfig,
    Hook,
    adam,
    fit,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from mtgraph.train.checkpoint import FORMAT, UNREADABLE_SUFFIX, CheckpointWarning, flatten_state, unflatten_state

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "scripts" / "train_run.py"


import train_run as run  # noqa: E402 - tests/scripts is put on sys.path by conftest.py


@pytest.fixture(scope="module")
def tasks():
    return run.build_tasks()


def _weights(params):
    return {f"{k}/{n}": t.detach().clone() for k, m in params.items() for n, t in m.state_dict().items()}


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


# --- the state codec ----------------------------------------------------------------------------


def test_flatten_state_round_trips_optimizer_and_scheduler_states():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p], lr=0.1, betas=(0.5, 0.9))
    p.sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)  # holds inf
    value = {"opt": opt.state_dict(), "sched": sched.state_dict(), "nan": math.nan, "t": (1, "a", None), 3: [True]}
    tensors: dict[str, torch.Tensor] = {}
    flat = flatten_state(value, "x", tensors)
    text = json.dumps(flat, allow_nan=False)  # strict JSON: no NaN/inf literals, no pickle
    back = unflatten_state(json.loads(text), tensors)
    assert back["opt"]["param_groups"][0]["betas"] == (0.5, 0.9)
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert back["sched"]["best"] == sched.state_dict()["best"] == math.inf
    assert math.isnan(back["nan"]) and back["t"] == (1, "a", None) and back[3] == [True]
    with pytest.raises(CheckpointError, match=r"'x/f' holds a function"):
        flatten_state({"f": lambda: 0}, "x", {})


# --- files --------------------------------------------------------------------------------------


def test_checkpoint_files_are_safetensors_with_json_state_and_are_pruned(tasks, tmp_path):
    graph, params = run.build_model(tasks, seed=0)
    config = CheckpointConfig(tmp_path / "ckpt", every=2, keep=2)
    result = fit(graph, params, tasks, run.build_data(24, seed=1), steps=7, batch_size=8, checkpoint=config, device="cpu")
    files = list_checkpoints(tmp_path / "ckpt")
    assert [f.name for f in files] == ["train.step-000000006.safetensors", "train.step-000000007.safetensors"]
    assert result.checkpoint == files[-1] == latest_checkpoint(tmp_path / "ckpt", "train")
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.endswith(".tmp")]
    with safe_open(str(files[-1]), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT
    state = json.loads(meta["state"])
    assert state["step"] == 7 and state["finished"] is True and state["epoch"] == 2
    assert state["graph"] == mtgraph.print_graph(graph)
    tensors = load_file(str(files[-1]))
    assert any(k.startswith("optimizer/main/state/") and k.endswith("/exp_avg") for k in tensors)
    assert "rng/torch" in tensors
    ckpt = load_checkpoint(files[-1])
    _assert_identical({k: v for k, v in ckpt.weights.items()}, _weights(result.params))
    # The checkpoint's weights load into a fresh store for the same graph.
    _, fresh = run.build_model(tasks, seed=5)
    _assert_identical(_weights(ckpt.params(fresh)), _weights(result.params))


def test_truncated_or_foreign_files_raise_checkpoint_error(tmp_path, tasks):
    graph, params = run.build_model(tasks, seed=0)
    fit(graph, params, tasks, run.build_data(8, seed=1), steps=1, batch_size=8, checkpoint=tmp_path, device="cpu")
    path = latest_checkpoint(tmp_path)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid checkpoint file"):
        load_checkpoint(tmp_path / "cut.safetensors")
    mtgraph.save(graph, params, tmp_path / "arch")
    with pytest.raises(CheckpointError, match="is not an mtgraph checkpoint"):
        load_checkpoint(tmp_path / "arch" / "weights.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_a_folder_holding_the_phase_is_refused_without_resume(tmp_path, tasks):
    graph, params = run.build_model(tasks, seed=0)
    fit(graph, params, tasks, run.build_data(8, seed=1), steps=1, batch_size=8, checkpoint=tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match="already holds checkpoints of phase 'train'.*resume=True"):
        fit(graph, params, tasks, run.build_data(8, seed=1), steps=1, batch_size=8, checkpoint=tmp_path, device="cpu")
    # Another phase in the same folder is fine.
    fit(graph, params, tasks, run.build_data(8, seed=1), steps=1, batch_size=8, checkpoint=tmp_path, phase="retrain", device="cpu")
    assert latest_checkpoint(tmp_path, "retrain").name == "retrain.step-000000001.safetensors"
    with pytest.raises(CheckpointError, match="seed 0, not 3"):
        fit(graph, params, tasks, run.build_data(8, seed=1), steps=2, batch_size=8, checkpoint=tmp_path, resume=True, seed=3, device="cpu")


# --- exact resume ---------------------------------------------------------------------------------


def _train(tasks, folder, *, steps, resume=False, hooks=(), alternate=False):
    graph, params = run.build_model(tasks, seed=0, dropout=0.2)
    options = {}
    if alternate:
        options["groups"] = [
            mtgraph.train.OptimizerGroup("trunk", lambda k, m: not k.startswith("head."), adam(2e-3), steps=2),
            mtgraph.train.OptimizerGroup("heads", None, mtgraph.train.sgd(0.02), data=run.build_data(8, seed=4), batch_size=4, steps=1,
                                         scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5)),
        ]
    else:
        options["optimizer"] = adam(2e-3)
        options["scheduler"] = lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=5e-3, total_steps=steps)
    return fit(graph, params, tasks, run.build_data(20, seed=1), steps=steps, batch_size=8, seed=0,
               checkpoint=CheckpointConfig(folder, every=2, keep=100), resume=resume, hooks=[run.SplitHook(epoch=1), *hooks],
               device="cpu", **options)


@pytest.mark.parametrize("alternate", [False, True], ids=["one-group", "alternating"])
def test_resume_from_a_mid_epoch_checkpoint_is_bit_identical(tasks, tmp_path, alternate):
    whole = _train(tasks, tmp_path / "a", steps=14, alternate=alternate)
    # Keep the checkpoint after step 10 (mid-epoch, after the split) as if the run had died at step 11.
    for cut in (10, 4):  # after and before the rewrite
        folder = tmp_path / f"b{cut}"
        shutil.copytree(tmp_path / "a", folder)
        for path in list_checkpoints(folder):
            if load_checkpoint(path).step > cut:
                path.unlink()
        resumed = _train(tasks, folder, steps=14, resume=True, alternate=alternate)
        assert resumed.resumed and resumed.step == 14
        _assert_identical(_weights(resumed.params), _weights(whole.params))
        assert resumed.history.total == whole.history.total and resumed.history.groups == whole.history.groups
        assert mtgraph.print_graph(resumed.graph) == mtgraph.print_graph(whole.graph)


def test_a_truncated_newest_checkpoint_falls_back_to_the_newest_valid_one(tasks, tmp_path):
    whole = _train(tasks, tmp_path / "a", steps=14)
    folder = tmp_path / "b"
    shutil.copytree(tmp_path / "a", folder)
    # The run "died" after writing step 10's checkpoint, which a full disk then truncated.
    for path in list_checkpoints(folder):
        if load_checkpoint(path).step > 10:
            path.unlink()
    newest = list_checkpoints(folder)[-1]
    truncated = newest.read_bytes()[: newest.stat().st_size // 2]
    newest.write_bytes(truncated)
    with pytest.warns(CheckpointWarning, match=f"skipping unreadable checkpoint .*{newest.name}"):
        resumed = _train(tasks, folder, steps=14, resume=True)
    # Resumed from step 8, the newest whole checkpoint, to the uninterrupted run's weights.
    assert resumed.resumed and resumed.step == 14
    _assert_identical(_weights(resumed.params), _weights(whole.params))
    # The damaged file is kept beside, under a name that no longer counts as a checkpoint; the resumed run wrote
    # a whole checkpoint of step 10 again.
    assert (folder / (newest.name + UNREADABLE_SUFFIX)).read_bytes() == truncated
    assert load_checkpoint(newest).step == 10


def test_resume_is_refused_when_no_checkpoint_of_the_phase_is_readable(tasks, tmp_path):
    _train(tasks, tmp_path, steps=4)
    for path in list_checkpoints(tmp_path):
        path.write_bytes(b"not a checkpoint")
    names = [p.name for p in list_checkpoints(tmp_path)]
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="no readable checkpoint of phase 'train'"):
        _train(tasks, tmp_path, steps=4, resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n + UNREADABLE_SUFFIX for n in names)


def test_resuming_a_finished_phase_returns_its_result(tasks, tmp_path):
    whole = _train(tasks, tmp_path, steps=6)
    again = _train(tasks, tmp_path, steps=6, resume=True)
    assert again.resumed and again.step == 6 and again.history.total == whole.history.total
    _assert_identical(_weights(again.params), _weights(whole.params))


# --- NaN -----------------------------------------------------------------------------------------


def _nan_from(call: int, loss):
    calls = [0]

    def poisoned(output, target):
        value = loss(output, target)
        calls[0] += 1
        return value * math.nan if calls[0] - 1 >= call else value

    return poisoned


def test_nan_loss_raises_naming_the_step_and_task_and_keeps_the_last_good_checkpoint(tasks, tmp_path):
    k = 7
    poisoned = {**tasks, "depth": dataclasses.replace(tasks["depth"], loss=_nan_from(k, tasks["depth"].loss))}
    graph, params = run.build_model(tasks, seed=0)
    config = CheckpointConfig(tmp_path, every=3)
    with pytest.raises(TrainError) as info:
        fit(graph, params, poisoned, run.build_data(40, seed=1), steps=20, batch_size=8, checkpoint=config, device="cpu")
    message = str(info.value)
    assert f"non-finite loss at step {k} " in message and "task(s) ['depth']" in message
    assert "train.step-000000006.safetensors" in message and "weights were not updated" in message
    last = latest_checkpoint(tmp_path)
    assert last.name == "train.step-000000006.safetensors"
    ckpt = load_checkpoint(last)
    assert ckpt.step == 6 and not ckpt.finished
    assert all(torch.isfinite(t).all() for t in ckpt.weights.values())
    assert all(torch.isfinite(t).all() for t in _weights(params).values())


class NanHook(Hook):
    def extra_loss(self, state, outputs, batch):
        return torch.tensor(math.inf) if state.step == 2 else None


def test_a_non_finite_hook_loss_names_the_hook(tasks):
    graph, params = run.build_model(tasks, seed=0)
    with pytest.raises(TrainError, match=r"step 2 .*hook loss\(es\) \['NanHook'\]"):
        fit(graph, params, tasks, run.build_data(40, seed=1), steps=5, batch_size=8, hooks=[NanHook()], device="cpu")


# --- a real process death -------------------------------------------------------------------------


def _script(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = ["--out", str(out), "--steps", "30", "--every", "4", "--samples", "40", "--dropout", "0.1", "--split-epoch", "1", *extra]
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_bit_identical_weights(tmp_path):
    whole = _script(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    kill_at = random.Random().randrange(7, 29)  # before or after the split at the end of epoch 1 (step 10)
    killed = _script(tmp_path / "killed", "--kill-at", str(kill_at))
    assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr)
    assert not (tmp_path / "killed" / "final").exists()
    survivors = list_checkpoints(tmp_path / "killed" / "ckpt")
    # Checkpoints every 4 steps and at every epoch end (5 steps); the one of the killed step was never written.
    assert load_checkpoint(survivors[-1]).step == max(s for s in range(1, kill_at) if s % 4 == 0 or s % 5 == 0)
    resumed = _script(tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(tmp_path / "whole" / "final" / "weights.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "weights.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a), f"weights differ after a kill at step {kill_at}"
    history = json.loads((tmp_path / "killed" / "history.json").read_text())
    assert history["resumed"] and history["step"] == 30
    assert history["total"] == json.loads((tmp_path / "whole" / "history.json").read_text())["total"]
