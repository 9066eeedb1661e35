"""Training progress lines fit 80 columns and say which network is being trained."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console

import mtgraph
from mtgraph.train import loop
from mtgraph.train.loop import _Progress, fit

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_a_progress_line_with_many_tasks_fits_80_columns() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    bar = _Progress(True, 1000, "mtsl-retrain", "One-Net", epochs=12, console=console)
    losses = {f"task_with_a_long_name_{k}": 1.2345678 + k for k in range(8)}
    for step in (1, 500, 1000):
        bar.update(step, step // 100, losses)
    bar.close()
    lines = [line for line in ANSI.sub("", out.getvalue()).replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(len(line) <= 80 for line in lines), lines
    assert "mtsl-retrain · One-Net epoch 11/12" in lines[-1] and "1000/1000" in lines[-1]
    assert "loss " in lines[-1]   # the per-task losses do not fit: their mean does


def test_fit_names_the_network_and_counts_epochs_only_when_it_runs_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[dict[str, Any]] = []

    class Recorder(_Progress):
        def __init__(self, enabled: bool, total: int | None, phase: str, label: str = "", epochs: int | None = None,
                     console: Any = None) -> None:
            shown.append({"total": total, "phase": phase, "label": label, "epochs": epochs})
            super().__init__(False, total, phase, label, epochs)

    monkeypatch.setattr(loop, "_Progress", Recorder)
    problem = mtgraph.toy_problem()
    blocks, tasks = problem.backbone.num_blocks, list(problem.task_names)
    for graph in (mtgraph.stn(blocks, tasks), mtgraph.one_net(blocks, tasks)):
        params = mtgraph.ParamStore.create(graph, problem.backbone, problem.heads)
        fit(graph, params, problem.tasks, problem.train_data, epochs=1, batch_size=2, progress=True)
        fit(graph, params, problem.tasks, problem.train_data, steps=1, batch_size=2, progress=True)
    assert [(s["label"], s["epochs"], s["total"]) for s in shown] == [
        ("STN", 1, 2), ("STN", None, 1), ("One-Net", 1, 2), ("One-Net", None, 1)]
