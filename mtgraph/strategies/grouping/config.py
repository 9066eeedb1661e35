"""The validated options of a task-grouping run (:class:`GroupingConfig`), in one place.

The inference budget is not an option here: it is the
:class:`~mtgraph.Budget` given to
:meth:`~mtgraph.strategies.grouping.GroupingStrategy.learn` (see
:mod:`~mtgraph.strategies.grouping.units` for how a budget in GMac becomes
the paper's count of networks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtgraph.errors import ConfigError
from mtgraph.executors import EXECUTORS
from mtgraph.options import check_choice, check_flag, check_number

__all__ = ["METHODS", "COSTS", "OPTIMIZERS", "DEFAULT_LR", "DEFAULT_WEIGHT_DECAY", "KEEP", "EXECUTORS", "GroupingConfig",
           "planned_trainings"]

#: Selection methods: exact, and the paper's two approximations.
METHODS = ("exact", "higher_order", "early_stopping")
#: What a candidate's cost measures: its trunk's multiply-accumulates, or its measured onnxruntime latency.
COSTS = ("macs", "latency")
#: How every candidate is trained: Adam (mtgraph's default) or the paper's SGD.
OPTIMIZERS = ("adam", "sgd")
#: The learning rate of each optimizer when ``GroupingConfig.lr`` is None (SGD: the paper's 0.1).
DEFAULT_LR = {"adam": 3e-3, "sgd": 0.1}
#: The weight decay of each optimizer when ``GroupingConfig.weight_decay`` is None (SGD: the authors' code's 1e-4).
DEFAULT_WEIGHT_DECAY = {"adam": 0.0, "sgd": 1e-4}
#: Which weights a candidate keeps: the epoch with the lowest mean validation loss, or the last.
KEEP = ("best", "last")

_OWNER = "GroupingConfig"


@dataclass(frozen=True)
class GroupingConfig:
    """Options of :meth:`GroupingStrategy.learn <mtgraph.strategies.grouping.GroupingStrategy.learn>`.

    Selection:
        method: ``"exact"`` (train every subset network, branch and bound),
            ``"higher_order"`` (train singles and pairs, predict larger
            networks from the pairs, train the chosen predicted ones) or
            ``"early_stopping"`` (select on short runs, train the chosen
            networks fully); papers/003 §5.
        sweep: budgets, in networks, of the loss-vs-budget curve in
            ``figures`` (None: 1 to k networks in steps of 1/2, plus the
            run's budget; budgets below the cheapest feasible set are left out).
        cost: ``"macs"`` (default: a candidate costs its trunk's MACs over
            one full-size network's) or ``"latency"`` (measured onnxruntime
            latency over the median full-size candidate's; slow and noisy on a
            busy machine).
        random_draws: draws of the Random baseline per budget (0: none).
        pessimal: compute the Pessimal baseline per budget (the worst
            budget-saturated choice; :func:`~mtgraph.strategies.grouping.pessimal_select`).
        width_baselines: also train, for every budget of the sweep, the
            all-in-one network width-scaled to spend it (papers/003 §6;
            :mod:`~mtgraph.strategies.grouping.scaled`); needs
            ``problem.rescale``. One more full training per budget.

    Training every candidate (the unweighted mean of its tasks' losses, papers/003 §3):
        epochs: epochs of one candidate's full run (fractions become whole steps).
        early_fraction: an ``"early_stopping"`` candidate's short run is one
            pass over this fraction of the training data (the paper: 20%),
            whatever ``epochs`` is; values above 1 are several passes (the
            paper's Setting 3 ran 4 passes over its smaller data set).
        optimizer: ``"adam"`` (default) or ``"sgd"``, the paper's: an initial
            learning rate of 0.1 halved whenever the training loss stops
            decreasing (papers/003 §3), momentum 0.9 and weight decay 1e-4
            (the authors' ``train_taskonomy.py``). **Deviation:** Adam at 3e-3
            is the default because at this library's scale it trained the
            candidates to lower validation losses than the paper's SGD on
            every seed measured (``examples/grouping_scenes.py``'s setting:
            4 tasks, 384 scenes, 8 epochs; total validation loss of the 4
            single-task networks, seeds 0/1/2: Adam 1.202/1.183/1.271, SGD
            1.265/1.540/1.559; of the all-in-one network: Adam
            1.462/1.328/1.374, SGD 1.555/1.678/1.546; Adam at 1e-3, seed 0:
            1.330 and 1.727).
        lr: the learning rate (None: the optimizer's default, :data:`DEFAULT_LR`).
        momentum: SGD's momentum.
        weight_decay: None: the optimizer's default (:data:`DEFAULT_WEIGHT_DECAY`).
        halve_lr_on_plateau: halve the learning rate at the end of every
            epoch whose mean training loss is not below the best epoch's so
            far (the paper's schedule, simplified from the authors' windowed
            t-test); None: with SGD only.
        batch_size, eval_batch_size.
        keep: ``"best"``: the epoch with the lowest mean validation loss (the
            paper's checkpoint choice); ``"last"``: the final weights.
        latency_repeats: timing repeats with ``cost="latency"``.

    Running the jobs:
        executor: ``"sequential"``, ``"process"`` (local processes) or ``"ray"``.
        workers: processes for ``"process"`` (None: one per CPU).
        folder: run folder for records, saved candidates and checkpoints; a
            rerun with the same folder skips finished candidates (None: a
            temporary folder, deleted at the end).
        device: where candidates train (None: the problem's device, else
            :func:`~mtgraph.train.fit`'s choice).

    Raises:
        ConfigError: an unknown method, cost, optimizer, keep or executor, or a value out of its range.

    Examples:
        >>> from mtgraph.strategies.grouping import GroupingConfig
        >>> config = GroupingConfig(method="higher_order", epochs=2)
        >>> config.method, config.optimizer_settings()
        ('higher_order', {'optimizer': 'adam', 'lr': 0.003, 'momentum': 0.9, 'weight_decay': 0.0, 'halve_lr_on_plateau': False})
        >>> GroupingConfig(optimizer="sgd").optimizer_settings()  # the paper's
        {'optimizer': 'sgd', 'lr': 0.1, 'momentum': 0.9, 'weight_decay': 0.0001, 'halve_lr_on_plateau': True}
        >>> GroupingConfig(method="greedy")
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: GroupingConfig.method must be one of ['exact', 'higher_order', 'early_stopping'], ...
    """

    method: str = "exact"
    sweep: tuple[float, ...] | None = None
    cost: str = "macs"
    random_draws: int = 1000
    pessimal: bool = True
    width_baselines: bool = False
    epochs: float = 10.0
    early_fraction: float = 0.2
    optimizer: str = "adam"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    halve_lr_on_plateau: bool | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    keep: str = "best"
    latency_repeats: int = 50
    executor: str = "sequential"
    workers: int | None = None
    folder: str | Path | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        check_choice(_OWNER, "method", self.method, METHODS)
        check_choice(_OWNER, "cost", self.cost, COSTS)
        check_choice(_OWNER, "optimizer", self.optimizer, OPTIMIZERS)
        check_choice(_OWNER, "keep", self.keep, KEEP)
        check_choice(_OWNER, "executor", self.executor, EXECUTORS)
        check_flag(_OWNER, "pessimal", self.pessimal)
        check_flag(_OWNER, "width_baselines", self.width_baselines)
        if self.halve_lr_on_plateau is not None:
            check_flag(_OWNER, "halve_lr_on_plateau", self.halve_lr_on_plateau)
        check_number(_OWNER, "random_draws", self.random_draws, low=0, integer=True)
        check_number(_OWNER, "epochs", self.epochs, low=0, strict_low=True)
        check_number(_OWNER, "early_fraction", self.early_fraction, low=0, strict_low=True)
        check_number(_OWNER, "lr", self.lr, low=0, strict_low=True, optional=True)
        check_number(_OWNER, "momentum", self.momentum, low=0, high=1, strict_high=True)
        check_number(_OWNER, "weight_decay", self.weight_decay, low=0, optional=True)
        for name in ("batch_size", "eval_batch_size", "latency_repeats"):
            check_number(_OWNER, name, getattr(self, name), low=1, integer=True)
        check_number(_OWNER, "workers", self.workers, low=1, integer=True, optional=True)
        if self.sweep is not None:
            if isinstance(self.sweep, (str, bytes)) or not hasattr(self.sweep, "__iter__"):
                raise ConfigError(f"{_OWNER}.sweep must be a sequence of budgets in networks, got {self.sweep!r}")
            sweep = tuple(self.sweep)
            for budget in sweep:
                check_number(_OWNER, "sweep", budget, low=0, strict_low=True)
            object.__setattr__(self, "sweep", tuple(float(b) for b in sweep))
        if self.folder is not None and not isinstance(self.folder, (str, Path)):
            raise ConfigError(f"{_OWNER}.folder must be a path or None, got {self.folder!r}")
        if self.device is not None:
            _check_device(self.device)
        if self.cost == "latency" and self.method == "higher_order":
            # Predicted networks are not built before selection, so their latency is unknown.
            raise ConfigError(f"{_OWNER}.cost='latency' needs every candidate measured; use it with method 'exact' "
                              "or 'early_stopping'")

    def optimizer_settings(self) -> dict[str, Any]:
        """The optimizer, learning rate, momentum, weight decay and halving, with None resolved per optimizer.

        Examples:
            >>> from mtgraph.strategies.grouping import GroupingConfig
            >>> GroupingConfig(optimizer="sgd", lr=0.05).optimizer_settings()["lr"]
            0.05
        """
        return {
            "optimizer": self.optimizer,
            "lr": DEFAULT_LR[self.optimizer] if self.lr is None else self.lr,
            "momentum": self.momentum,
            "weight_decay": DEFAULT_WEIGHT_DECAY[self.optimizer] if self.weight_decay is None else self.weight_decay,
            "halve_lr_on_plateau": self.optimizer == "sgd" if self.halve_lr_on_plateau is None else self.halve_lr_on_plateau,
        }


def _check_device(device: Any) -> None:
    if not isinstance(device, (str, torch.device)):
        raise ConfigError(f"{_OWNER}.device must name a torch device such as 'cpu' or 'cuda:0', got {device!r}")
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{_OWNER}.device must name a torch device such as 'cpu' or 'cuda:0', got {device!r}") from exc


def planned_trainings(config: GroupingConfig, num_tasks: int, *, small: bool = False, chosen: float = 2.0) -> float:
    """How many full candidate runs ``config.method`` trains for ``num_tasks`` tasks (early runs counted by length).

    Args:
        config: the options (``method``, ``epochs``, ``early_fraction``).
        num_tasks: the number of tasks k.
        small: one more single-task network per task (the half-size networks).
        chosen: the networks an approximation finally trains (about the budget in networks).

    Returns:
        Full-run equivalents: ``2^k - 1`` (+ k) for the exact method; singles,
        pairs and one predicted network for the higher-order one; for early
        stopping, every candidate's short run (``early_fraction`` of one
        epoch, over ``epochs``) plus the chosen networks.

    Examples:
        >>> from mtgraph.strategies.grouping import GroupingConfig, planned_trainings
        >>> planned_trainings(GroupingConfig(), 3), planned_trainings(GroupingConfig(method="higher_order"), 3)
        (7.0, 7.0)
        >>> planned_trainings(GroupingConfig(method="early_stopping", epochs=1.0, early_fraction=0.5), 2, chosen=1)
        2.5
    """
    k = num_tasks
    singles = k if small else 0
    if config.method == "exact":
        return float(2**k - 1 + singles)
    if config.method == "higher_order":
        return float(k + k * (k - 1) // 2 + singles + (1 if k >= 3 else 0))
    return (2**k - 1 + singles) * config.early_fraction / config.epochs + chosen
