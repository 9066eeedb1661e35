"""Resumable structure learning: ambient checkpointing of fit calls, ``mtgraph learn --resume``, learn under torchrun."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mtgraph
from mtgraph import workflow
from mtgraph.cli import build_parser, main
from mtgraph.errors import CheckpointError, ConfigError
from mtgraph.persist import load
from mtgraph.spec import ModelSpec
from mtgraph.strategies.mtsl import strategy as mtsl_strategy
from mtgraph.strategies.mtsl.entry import MTSLStrategy
from mtgraph.train import CheckpointConfig, Hook, TrainState, checkpointing, fit, list_checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


import train_run as run  # noqa: E402 - tests/scripts is put on sys.path by conftest.py


class StepCounter(Hook):
    """Counts the optimizer steps actually taken (a phase read back from its checkpoint takes none)."""

    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, state: TrainState) -> None:
        self.steps += 1


class Interrupted(Exception):
    """Stands for whatever stops a run half way (a preemption, a kill, an out-of-memory error)."""


class InterruptAt(Hook):
    """Raises :class:`Interrupted` after optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: TrainState) -> None:
        if state.step >= self.step:
            raise Interrupted(f"interrupted after step {state.step}")


@pytest.fixture(scope="module")
def tasks():
    return run.build_tasks()


def _weights(params: mtgraph.ParamStore) -> dict[str, torch.Tensor]:
    return {f"{k}/{n}": t.detach().clone() for k, m in params.items() for n, t in m.state_dict().items()}


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def _two_phases(tasks, *, stop_at: int | None = None) -> tuple[list[mtgraph.train.FitResult], int]:
    """Two fit calls with their own phase names, as a strategy makes them; returns the results and the steps taken."""
    counter = StepCounter()
    data = run.build_data(16, seed=1)
    results = []
    graph, params = run.build_model(tasks, seed=0)
    for call in range(2):
        hooks: list[Hook] = [counter]
        if stop_at is not None and call == 1:
            hooks.append(InterruptAt(stop_at))
        fitted = fit(graph, params, tasks, data, steps=6, batch_size=8, seed=call, hooks=hooks, device="cpu", progress=False,
                     phase=f"train-{call + 1}")
        results.append(fitted)
        graph, params = fitted.graph, fitted.params
    return results, counter.steps


# --- the session ---------------------------------------------------------------------------------


def test_each_fit_call_of_a_session_checkpoints_its_own_phase(tasks, tmp_path):
    with checkpointing(tmp_path) as session:
        (first, second), steps = _two_phases(tasks)
    assert steps == 12
    assert session.phases == ["train-1", "train-2"]
    assert first.checkpoint is not None and first.checkpoint.parent == tmp_path
    assert {load_checkpoint(p).phase for p in list_checkpoints(tmp_path)} == {"train-1", "train-2"}
    assert all(load_checkpoint(p).finished for p in (first.checkpoint, second.checkpoint))


def test_a_resumed_session_reads_finished_phases_back_without_training(tasks, tmp_path):
    with checkpointing(tmp_path):
        (_, whole), _ = _two_phases(tasks)
    with checkpointing(tmp_path, resume=True):
        (first, again), steps = _two_phases(tasks)
    assert steps == 0 and first.resumed and again.resumed
    _assert_identical(_weights(again.params), _weights(whole.params))
    assert again.history.total == whole.history.total


def test_a_session_refuses_two_fit_calls_with_one_phase_name(tasks, tmp_path):
    graph, params = run.build_model(tasks, seed=0)
    data = run.build_data(8, seed=1)
    with checkpointing(tmp_path) as session:
        fit(graph, params, tasks, data, steps=1, batch_size=8, phase="train", device="cpu", progress=False)
        with pytest.raises(CheckpointError, match="two fit calls of one checkpointing session are named 'train'"):
            fit(graph, params, tasks, data, steps=1, batch_size=8, phase="train", device="cpu", progress=False)
    assert session.phases == ["train"]


def test_a_session_without_resume_refuses_a_folder_holding_its_phases(tasks, tmp_path):
    with checkpointing(tmp_path):
        _two_phases(tasks)
    with checkpointing(tmp_path), pytest.raises(CheckpointError, match="resume=True"):
        _two_phases(tasks)


def test_an_interrupted_session_resumes_the_interrupted_phase_bit_identically(tasks, tmp_path):
    with checkpointing(tmp_path / "whole"):
        (_, whole), _ = _two_phases(tasks)
    # Checkpoints every 2 steps; the second fit call dies after its step 3, so it restarts from step 2.
    with checkpointing(tmp_path / "cut", every=2), pytest.raises(Interrupted):
        _two_phases(tasks, stop_at=3)
    assert load_checkpoint(list_checkpoints(tmp_path / "cut", "train-2")[-1]).step == 2
    with checkpointing(tmp_path / "cut", resume=True, every=2):
        (first, resumed), steps = _two_phases(tasks)
    assert first.resumed and resumed.resumed and steps == 4
    _assert_identical(_weights(resumed.params), _weights(whole.params))
    assert resumed.history.total == whole.history.total


def test_sessions_cannot_be_nested(tmp_path):
    with checkpointing(tmp_path / "outer") as outer:
        with pytest.raises(ConfigError, match="cannot be nested"), checkpointing(tmp_path / "inner"):
            pass
        assert outer.folder == tmp_path / "outer"
    with checkpointing(tmp_path / "again") as session:  # the failed attempt left no session behind
        assert session.phases == []


def test_an_explicit_checkpoint_argument_wins_over_the_session(tasks, tmp_path):
    graph, params = run.build_model(tasks, seed=0)
    with checkpointing(tmp_path / "session") as session:
        fitted = fit(graph, params, tasks, run.build_data(16, seed=1), steps=2, batch_size=8, device="cpu",
                     checkpoint=CheckpointConfig(tmp_path / "own"), phase="mine", progress=False)
    assert fitted.checkpoint is not None and fitted.checkpoint.parent == tmp_path / "own"
    assert load_checkpoint(fitted.checkpoint).phase == "mine"
    assert session.phases == [] and list_checkpoints(tmp_path / "session") == []


def test_fit_outside_a_session_writes_no_checkpoint(tasks, tmp_path):
    with checkpointing(tmp_path):
        pass
    graph, params = run.build_model(tasks, seed=0)
    fitted = fit(graph, params, tasks, run.build_data(16, seed=1), steps=2, batch_size=8, device="cpu", progress=False)
    assert fitted.checkpoint is None and list_checkpoints(tmp_path) == []


# --- mtgraph learn -------------------------------------------------------------------------------

#: The smallest learn run: 32 images of 32 px, two tasks, the narrowest built-in backbone, one epoch.
TINY = {"num_train": 32, "num_val": 8, "size": 32, "model": "resnet_tiny_w4", "tasks": ("seg", "depth"), "epochs": 1.0}


def _tiny_config(folder: Path) -> Path:
    path = folder / "tiny.toml"
    path.write_text("num_train = 32\nnum_val = 8\n", encoding="utf-8")
    return path


def _learn_argv(config: Path, out: Path, *extra: str) -> list[str]:
    return ["learn", "--config", str(config), "--model", "resnet_tiny_w4", "--size", "32", "--tasks", "seg,depth",
            "--epochs", "1", "--out", str(out), "--no-progress", *extra]


def _snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time (a rewritten file gets a new one)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _saved_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "architecture" / "weights.safetensors"))


def test_resume_is_read_from_flags_and_config_files(tmp_path):
    parser = build_parser()
    assert workflow.LearnOptions.from_args(parser.parse_args(["learn", "--resume"])).resume
    assert not workflow.LearnOptions.from_args(parser.parse_args(["learn"])).resume
    config = tmp_path / "run.toml"
    config.write_text("resume = true\n", encoding="utf-8")
    assert workflow.LearnOptions.from_args(parser.parse_args(["learn", "--config", str(config)])).resume


def test_learn_resume_after_a_finished_run_trains_nothing_and_keeps_the_weights(tmp_path, capsys):
    config, out = _tiny_config(tmp_path), tmp_path / "out"
    # --resume with no checkpoints yet just starts.
    assert main(_learn_argv(config, out, "--resume")) == 0
    checkpoints = list_checkpoints(out / workflow.CHECKPOINTS)
    assert [load_checkpoint(p).phase for p in checkpoints] == ["mtsl"] and load_checkpoint(checkpoints[0]).finished
    first, before = _saved_weights(out), _snapshot(out / workflow.CHECKPOINTS)

    assert main(_learn_argv(config, out, "--resume")) == 0
    assert _snapshot(out / workflow.CHECKPOINTS) == before  # no checkpoint written: nothing was trained again
    _assert_identical(_saved_weights(out), first)
    capsys.readouterr()

    everything = _snapshot(out)
    assert main(_learn_argv(config, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "checkpoints" in err
    # Resuming with another budget would hand back phases trained with the old one: refused too.
    assert main([*_learn_argv(config, out, "--resume"), "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other options" in err and "epochs: 1.0 there, 2.0 now" in err
    assert _snapshot(out) == everything  # nothing deleted or overwritten


def test_a_run_that_failed_before_training_does_not_block_a_fresh_start(tmp_path, capsys):
    config, out = _tiny_config(tmp_path), tmp_path / "out"
    assert main([*_learn_argv(config, out), "--tasks", "seg"]) == 2  # MTSL needs two tasks
    assert "at least 2 tasks" in capsys.readouterr().err
    assert [p.name for p in (out / workflow.CHECKPOINTS).iterdir()] == [workflow.RUN_OPTIONS]
    assert main(_learn_argv(config, out)) == 0


_config_for = MTSLStrategy.config_for


def _with_retraining(self, problem, epochs, **options):
    """MTSL-R: MTSL then a second fit call that retrains the learned architecture, so the run has two phases."""
    return dataclasses.replace(_config_for(self, problem, epochs, **options), retrain=True)


def test_an_interrupted_learn_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(MTSLStrategy, "config_for", _with_retraining)
    options = workflow.LearnOptions(**{**TINY, "epochs": 2.0}, out=tmp_path / "whole")
    whole = workflow.learn(options, progress=False)

    # The same run dies after step 3 of the retraining phase (its epochs are 2 steps, checkpointed at each end).
    real_fit = mtsl_strategy.fit

    def interrupted_fit(*args, **kwargs):
        if kwargs.get("phase") == "mtsl-r":
            kwargs["hooks"] = [*kwargs.get("hooks", ()), InterruptAt(3)]
        return real_fit(*args, **kwargs)

    cut = dataclasses.replace(options, out=tmp_path / "cut")
    monkeypatch.setattr(mtsl_strategy, "fit", interrupted_fit)
    with pytest.raises(Interrupted):
        workflow.learn(cut, progress=False)
    monkeypatch.setattr(mtsl_strategy, "fit", real_fit)
    folder = cut.out / workflow.CHECKPOINTS
    latest = {p: load_checkpoint(list_checkpoints(folder, p)[-1]) for p in ("mtsl", "mtsl-r")}
    assert latest["mtsl"].finished and not latest["mtsl-r"].finished and latest["mtsl-r"].step == 2
    assert not (cut.out / "architecture").exists()

    with pytest.raises(ConfigError, match="--resume"):
        workflow.learn(cut, progress=False)
    calls: list[tuple[str, bool, int]] = []

    def watched_fit(*args, **kwargs):
        counter = StepCounter()
        kwargs["hooks"] = [*kwargs.get("hooks", ()), counter]
        fitted = real_fit(*args, **kwargs)
        calls.append((kwargs["phase"], fitted.resumed, counter.steps))
        return fitted

    monkeypatch.setattr(mtsl_strategy, "fit", watched_fit)
    resumed = workflow.learn(dataclasses.replace(cut, resume=True), progress=False)
    # MTSL was read back, MTSL-R went on from step 2 to its last step 4.
    assert calls == [("mtsl", True, 0), ("mtsl-r", True, 2)]
    assert resumed == cut.out / "architecture"
    _assert_identical(load_file(str(resumed / "weights.safetensors")), load_file(str(whole / "weights.safetensors")))
    assert (resumed / "architecture.mtir").read_text() == (whole / "architecture.mtir").read_text()


# --- torchrun ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU, whatever the machine has
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun_learn(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "mtgraph.cli",
               *_learn_argv(config, out, "--strategy", "mtsl", *extra)]
    return subprocess.run(command, env=_torchrun_env(), capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_learn_under_torchrun_writes_one_architecture_from_rank_zero(tmp_path):
    config, out = _tiny_config(tmp_path), tmp_path / "out"
    done = _torchrun_learn(config, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote the learned architecture") == 1  # rank 0 alone reports

    # Exactly one architecture and the checkpoints; no temporary file left by a second writer.
    assert sorted(p.name for p in out.iterdir()) == ["architecture", "checkpoints"]
    arch = out / "architecture"
    assert sorted(p.name for p in arch.iterdir()) == ["README.md", "architecture.mtir", "model.json", "weights.safetensors"]
    checkpoints = list_checkpoints(out / "checkpoints")
    assert len(checkpoints) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted([checkpoints[0].name, workflow.RUN_OPTIONS])
    assert load_checkpoint(checkpoints[0]).state["world_size"] == 2
    spec = ModelSpec.load(arch)
    backbone = spec.build_backbone()
    tasks = spec.build_tasks()
    graph, _ = load(arch, backbone, spec.build_heads(backbone, tasks))
    assert set(graph.tasks) == {"seg", "depth"}

    # Resuming under torchrun reads the finished phase back on every rank and writes the same weights.
    first = _saved_weights(out)
    again = _torchrun_learn(config, out, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_identical(_saved_weights(out), first)


def test_an_interrupted_mtsl_phase_resumes_mid_schedule_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """MTSLHook's schedule position and decisions are checkpoint state, so a resume inside the MTSL phase is exact."""
    options = workflow.LearnOptions(**{**TINY, "epochs": 2.0}, out=tmp_path / "whole")
    whole = workflow.learn(options, progress=False)
    real_fit = mtsl_strategy.fit

    def interrupted_fit(*args, **kwargs):
        kwargs["hooks"] = [*kwargs.get("hooks", ()), InterruptAt(3)]
        return real_fit(*args, **kwargs)

    cut = dataclasses.replace(options, out=tmp_path / "cut")
    monkeypatch.setattr(mtsl_strategy, "fit", interrupted_fit)
    with pytest.raises(Interrupted):
        workflow.learn(cut, progress=False)
    monkeypatch.setattr(mtsl_strategy, "fit", real_fit)
    latest = load_checkpoint(list_checkpoints(cut.out / workflow.CHECKPOINTS, "mtsl")[-1])
    assert not latest.finished and latest.step == 2
    hook_states = [h["state"] for h in latest.state["hooks"] if isinstance(h["state"], dict) and "phase" in h["state"]]
    assert hook_states and hook_states[0]["phase"] >= 1  # a structural phase had run before the interruption

    resumed = workflow.learn(dataclasses.replace(cut, resume=True), progress=False)
    _assert_identical(load_file(str(resumed / "weights.safetensors")), load_file(str(whole / "weights.safetensors")))
    assert (resumed / "architecture.mtir").read_text() == (whole / "architecture.mtir").read_text()
