"""The one training schedule every compared architecture is retrained with, from scratch.

The protocol's comparison is only fair if nothing but the architecture
differs: the learned architecture, STN, One-Net, the width-matched One-Net
and the random draws all start from fresh weights and train for the same
number of epochs with the same optimiser, learning-rate schedule, batch size
and seed. :class:`Schedule` is that recipe and :func:`retrain` applies it.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from mtgraph.errors import ConfigError
from mtgraph.ir.graph import MTGraph
from mtgraph.options import check_number
from mtgraph.params import ParamStore
from mtgraph.problem import Problem
from mtgraph.train.checkpoint import CheckpointConfig
from mtgraph.train.evaluate import MetricsTable, evaluate
from mtgraph.train.loop import OptimizerGroup, adam, fit

__all__ = ["Schedule", "retrain"]


@dataclass(frozen=True)
class Schedule:
    """How every architecture of an evaluation is trained: Adam, a step learning-rate decay, a fixed length.

    Attributes:
        epochs: training length in epochs of the training data (rounded to
            whole optimiser steps, at least one); also the strategy's search
            budget when no strategy config is given (``config_for(problem, epochs)``).
        batch_size: images per optimiser step.
        lr: Adam's learning rate.
        weight_decay: Adam's weight decay.
        lr_milestones: fractions of the run at which the learning rate is
            multiplied by ``lr_decay`` (increasing, in (0, 1)).
        lr_decay: the factor applied at each milestone.
        eval_batch_size: batch size of the validation pass.

    Raises:
        ConfigError: a value out of its range.

    Examples:
        >>> from mtgraph.evaluation import Schedule
        >>> schedule = Schedule(epochs=2, batch_size=16)
        >>> schedule.steps(100), schedule.milestone_steps(100)   # 7 batches per epoch (the last one short)
        (14, [10])
        >>> Schedule(lr_milestones=(0.9, 0.5))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: Schedule.lr_milestones must be increasing fractions in (0, 1), got [0.9, 0.5]
    """

    epochs: float = 4.0
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_milestones: tuple[float, ...] = (0.75,)
    lr_decay: float = 0.1
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        check_number("Schedule", "epochs", self.epochs, low=0, strict_low=True)
        check_number("Schedule", "batch_size", self.batch_size, low=1, integer=True)
        check_number("Schedule", "eval_batch_size", self.eval_batch_size, low=1, integer=True)
        check_number("Schedule", "lr", self.lr, low=0, strict_low=True)
        check_number("Schedule", "weight_decay", self.weight_decay, low=0)
        check_number("Schedule", "lr_decay", self.lr_decay, low=0, strict_low=True)
        milestones = tuple(self.lr_milestones)
        ok = all(isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m < 1 for m in milestones)
        if not ok or list(milestones) != sorted(milestones):
            raise ConfigError(f"Schedule.lr_milestones must be increasing fractions in (0, 1), got {list(milestones)}")
        object.__setattr__(self, "epochs", float(self.epochs))
        object.__setattr__(self, "lr_milestones", tuple(float(m) for m in milestones))

    def steps(self, train_size: int, batch_size: int | None = None) -> int:
        """Optimiser steps of a run on ``train_size`` images (at least one); ``batch_size`` overrides the schedule's."""
        return max(1, round(self.epochs * math.ceil(train_size / (batch_size or self.batch_size))))

    def milestone_steps(self, train_size: int, batch_size: int | None = None) -> list[int]:
        """The steps at which the learning rate decays."""
        total = self.steps(train_size, batch_size)
        return sorted({max(1, round(m * total)) for m in self.lr_milestones})

    def to_dict(self) -> dict[str, Any]:
        """The schedule as JSON values.

        Examples:
            >>> from mtgraph.evaluation import Schedule
            >>> Schedule().to_dict()["lr_milestones"]
            [0.75]
        """
        values = asdict(self)
        values["lr_milestones"] = list(self.lr_milestones)
        return values


def retrain(
    problem: Problem,
    graph: MTGraph,
    params: ParamStore,
    schedule: Schedule,
    *,
    seed: int,
    frozen: frozenset[str] = frozenset(),
    checkpoint: str | os.PathLike[str] | None = None,
) -> tuple[MetricsTable, int]:
    """Train ``graph`` from ``params`` with ``schedule`` on the problem's training data; measure it on its validation data.

    Training data given as a DataLoader keeps its own batch size (the
    schedule's ``batch_size`` applies to a Dataset).

    Args:
        problem: gives the tasks, the data and the device (``val_data`` must be set).
        graph: the architecture.
        params: its fresh weights (trained in place).
        schedule: the training recipe.
        seed: seeds the data order and every random choice of the run.
        frozen: weight keys not trained (a fixed gate setting).
        checkpoint: a folder to checkpoint into; a rerun with the same folder
            resumes (a finished run returns at once).

    Returns:
        The validation metrics and the number of optimiser steps.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.evaluation import Schedule, retrain
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> graph = mtgraph.one_net(problem.backbone.num_blocks, problem.task_names)
        >>> params = mtgraph.ParamStore.create(graph, problem.backbone, problem.heads)
        >>> metrics, steps = retrain(problem, graph, params, Schedule(epochs=1, batch_size=2), seed=0)
        >>> steps, sorted(metrics)
        (2, ['depth', 'seg'])
    """
    if problem.val_data is None:
        raise ConfigError("the evaluation protocol measures every architecture on validation data; "
                          "give the Problem val_data")
    size = len(problem.train_dataset)  # type: ignore[arg-type]
    loader = problem.train_data if isinstance(problem.train_data, DataLoader) else None
    batch = (loader.batch_size or 1) if loader is not None else schedule.batch_size
    steps = schedule.steps(size, batch)
    scheduler = functools.partial(torch.optim.lr_scheduler.MultiStepLR, milestones=schedule.milestone_steps(size, batch),
                                  gamma=schedule.lr_decay)
    optimizer = adam(lr=schedule.lr, weight_decay=schedule.weight_decay)
    keys = frozenset(frozen)
    groups = [OptimizerGroup("main", select=lambda key, module: key not in keys, optimizer=optimizer, scheduler=scheduler)]
    result = fit(graph, params, problem.tasks, problem.train_data, steps=steps, batch_size=None if loader else batch,
                 groups=groups, seed=seed, resume=checkpoint is not None, phase="retrain",
                 checkpoint=None if checkpoint is None else CheckpointConfig(checkpoint, keep=1),
                 device=problem.device, progress=False)
    metrics = evaluate(result.graph, result.params, problem.tasks, problem.val_data, batch_size=schedule.eval_batch_size)
    return metrics, result.step
