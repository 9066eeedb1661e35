"""The validated options of an MTSL run (:class:`MTSLConfig`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from mtgraph.errors import ConfigError
from mtgraph.options import check_choice, check_flag, check_number
from mtgraph.strategies.mtsl.alignment import LOSS_BALANCES, LossBalance
from mtgraph.strategies.mtsl.grouping import MAX_TASK_NODES, RULES
from mtgraph.strategies.mtsl.schedule import PAPER_ATT_EPOCHS, PAPER_TASK_EPOCHS, PAPER_TOTAL_EPOCHS

__all__ = ["MTSLConfig"]

_OWNER = "MTSLConfig"


@dataclass(frozen=True)
class MTSLConfig:
    """Options of an MTSL run (:meth:`MTSLStrategy.learn <mtgraph.strategies.mtsl.MTSLStrategy.learn>`); defaults are papers/000's.

    Structure:
        gamma: grouping threshold γ in [0, 1] (§3.3, appendix D.2; 0.8).
        grouping_rule: ``"code"`` (default: the search of the authors'
            released code) or ``"paper"`` (Algorithm 2 as printed); the
            default of :func:`~mtgraph.strategies.mtsl.group_task_nodes` too.
            **A choice between the paper's text and its results.** The
            released code tries the fewest groups first (one group of all
            task nodes, then at most two groups, ...) and stops at the first
            number of groups whose best grouping reaches γ; so γ decides how
            much is fused: γ = 0 fuses every sibling set (One-Net), γ = 1 only
            identical task nodes (STN otherwise), as Table 6 reports (γ ≤ 0.7
            gives One-Net). Algorithm 2 as printed averages its score over
            *groups* and applies γ only after choosing, so γ never changes
            the chosen grouping and it splits even nearly uniform task nodes
            (five at CKA 0.990-0.995 become two groups, see the example of
            :func:`~mtgraph.strategies.mtsl.group_task_nodes`); the
            paper's Tables 5 and 6 cannot come from it. See
            :mod:`mtgraph.strategies.mtsl.grouping`. Both rules score every
            set partition of a sibling set (Bell(T) of them), so a run takes
            at most 10 tasks (Bell(10) = 115,975); more raise ConfigError
            (:meth:`check_tasks`).
        grouping_images: size of the fixed training subset on which grouping
            CKA is measured (appendix F: 800 images on Cityscapes, all 795 on
            NYUv2); capped at the training set size, at least 4.

    Losses:
        align_weight: λ of eq. 1 (0.2).
        loss_balance: ``"paper"`` (default; the paper and the released code):
            the *sum* of the task losses plus ``λ · Σ_sets (1 − mean CKA)``
            over the pairs of each sibling set; ``"mean_sum"`` (mtgraph's
            earlier balance): the *mean* of the task losses plus
            ``λ · Σ (1 − CKA)`` over every sibling pair. Relative to the task
            losses its alignment is ``T · P`` times the paper's for one
            sibling set of T task nodes and P = T(T−1)/2 pairs: 9× for three
            tasks, 50× for five. See :mod:`mtgraph.strategies.mtsl.alignment`.
        align: ablation switch: CKA alignment in task-learning phases.
        average: ablation switch: initialise a group node with the average of
            its task nodes' weights and optimizer state (True) or a copy of
            the first task node's (False, Table 4's "no Avg").
        att: ablation switch: attention amalgamation (False skips the E_s
            epochs; the group node keeps its initialisation).
        att_reduction: the hidden width of each ATT_i is
            ``C // att_reduction`` (at least 1). Default 1: width C, as the
            released code's attention (two C → C linear layers); the paper
            does not give the width.

    Schedule (see :mod:`mtgraph.strategies.mtsl.schedule`):
        task_epochs / att_epochs: E_t and E_s profiles (appendix C), mapped
            onto the phases; entries may be fractional.
        total_epochs: the budget E (task learning + fine-tuning; ATT extra).
        min_finetune_epochs: f of Algorithm 1.
        phases: number of structural phases (None: one per block).

    Optimisation (appendix C: Adam, lr 1e-4, weight decay 5e-5, batch 16,
    steps at epochs 60 and 70 of 80):
        batch_size, lr, weight_decay, lr_milestones (fractions of E at which
        the learning rate is multiplied by ``lr_decay``), lr_decay, att_lr
        (None: ``lr``), eval_batch_size.

    Where:
        device: where to train; None: the problem's device
            (:attr:`mtgraph.Problem.device`, itself None for
            :func:`mtgraph.train.fit`'s choice). A device given here
            overrides the problem's: the problem says what is learned, the
            configuration how and where.

    Variant:
        retrain: MTSL-R (appendix I): after learning, re-initialise the
            converged architecture and train it for E epochs with L_MTL.

    Raises:
        ConfigError: an option out of range or of the wrong type, naming it.

    Examples:
        >>> from mtgraph.strategies.mtsl import MTSLConfig
        >>> config = MTSLConfig(gamma=0.5).with_budget(4)  # the paper's schedule in E = 4 epochs
        >>> config.gamma, config.total_epochs, config.task_epochs[:3], config.loss_balance
        (0.5, 4.0, (0.1, 0.1, 0.1), 'paper')
        >>> config.task_loss_weights(("seg", "depth"))  # the paper sums the task losses
        {'seg': 1.0, 'depth': 1.0}
        >>> MTSLConfig(gamma=1.5)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: MTSLConfig.gamma must be a number in [0, 1], got 1.5
    """

    gamma: float = 0.8
    grouping_rule: Literal["paper", "code"] = "code"
    grouping_images: int = 800
    align_weight: float = 0.2
    loss_balance: LossBalance = "paper"
    align: bool = True
    average: bool = True
    att: bool = True
    att_reduction: int = 1
    task_epochs: tuple[float, ...] = PAPER_TASK_EPOCHS
    att_epochs: tuple[float, ...] = PAPER_ATT_EPOCHS
    total_epochs: float = PAPER_TOTAL_EPOCHS
    min_finetune_epochs: float = 0.0
    phases: int | None = None
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 5e-5
    lr_milestones: tuple[float, ...] = (0.75, 0.875)
    lr_decay: float = 0.1
    att_lr: float | None = None
    eval_batch_size: int = 64
    retrain: bool = False
    device: str | torch.device | None = None

    def __post_init__(self) -> None:
        check_number(_OWNER, "gamma", self.gamma, low=0, high=1)
        check_choice(_OWNER, "grouping_rule", self.grouping_rule, RULES)
        check_choice(_OWNER, "loss_balance", self.loss_balance, LOSS_BALANCES)
        for name in ("align", "average", "att", "retrain"):
            check_flag(_OWNER, name, getattr(self, name))
        check_number(_OWNER, "align_weight", self.align_weight, low=0)
        check_number(_OWNER, "grouping_images", self.grouping_images, low=4, integer=True)
        check_number(_OWNER, "att_reduction", self.att_reduction, low=1, integer=True)
        check_number(_OWNER, "eval_batch_size", self.eval_batch_size, low=1, integer=True)
        # The unbiased CKA of the alignment term needs 4 samples per batch.
        check_number(_OWNER, "batch_size", self.batch_size, low=4 if self.align else 1, integer=True)
        for name in ("task_epochs", "att_epochs"):
            object.__setattr__(self, name, _epochs(name, getattr(self, name)))
        if min(self.task_epochs) <= 0:
            # Each structural phase follows task learning; a phase of 0 epochs
            # would put two structural phases at the same step.
            raise ConfigError(f"MTSLConfig.task_epochs entries must be > 0, got {list(self.task_epochs)}")
        check_number(_OWNER, "total_epochs", self.total_epochs, low=0, strict_low=True)
        check_number(_OWNER, "min_finetune_epochs", self.min_finetune_epochs, low=0, high=self.total_epochs)
        check_number(_OWNER, "phases", self.phases, low=1, integer=True, optional=True)
        check_number(_OWNER, "lr", self.lr, low=0, strict_low=True)
        check_number(_OWNER, "lr_decay", self.lr_decay, low=0, strict_low=True)
        check_number(_OWNER, "att_lr", self.att_lr, low=0, strict_low=True, optional=True)
        check_number(_OWNER, "weight_decay", self.weight_decay, low=0)
        object.__setattr__(self, "lr_milestones", _milestones(self.lr_milestones))
        if self.device is not None:
            object.__setattr__(self, "device", _device(self.device))

    def task_loss_weights(self, tasks: Sequence[str]) -> dict[str, float]:
        """The weight of each task's loss in ``L_MTL`` under :attr:`loss_balance` (1 each, or 1/T each).

        Examples:
            >>> from mtgraph.strategies.mtsl import MTSLConfig
            >>> MTSLConfig(loss_balance="mean_sum").task_loss_weights(("a", "b", "c", "d"))
            {'a': 0.25, 'b': 0.25, 'c': 0.25, 'd': 0.25}
        """
        weight = 1.0 if self.loss_balance == "paper" else 1.0 / len(tasks)
        return {t: weight for t in tasks}

    def with_budget(self, epochs: float) -> MTSLConfig:
        """A copy whose whole schedule is scaled so that ``E = epochs``.

        Every list entry, E and f are multiplied by ``epochs / total_epochs``:
        the paper's proportions (E_t = 0.6 E over the phases, E_s = 0.425 E,
        fine-tuning 0.4 E) in a budget of any size, e.g. ``with_budget(2)``
        for a test.

        Args:
            epochs: the budget E in epochs (> 0).

        Returns:
            The scaled copy.

        Raises:
            ConfigError: ``epochs`` is not a number > 0.

        Examples:
            >>> from mtgraph.strategies.mtsl import MTSLConfig
            >>> MTSLConfig().with_budget(8).att_epochs[:4]  # the paper's 1, 1, 2, 2 of E = 80, in E = 8
            (0.1, 0.1, 0.2, 0.2)
        """
        check_number(_OWNER, "with_budget(epochs)", epochs, low=0, strict_low=True)
        factor = epochs / self.total_epochs
        return dataclasses.replace(
            self,
            task_epochs=tuple(t * factor for t in self.task_epochs),
            att_epochs=tuple(a * factor for a in self.att_epochs),
            total_epochs=float(epochs),
            min_finetune_epochs=self.min_finetune_epochs * factor,
        )

    @staticmethod
    def check_tasks(tasks: tuple[str, ...]) -> None:
        """Raise ConfigError unless there are 2..MAX_TASK_NODES tasks (Algorithm 2 enumerates Bell(T) groupings)."""
        if len(tasks) < 2:
            raise ConfigError(
                f"MTSL learns where tasks share layers and needs at least 2 tasks, got {len(tasks)}: {list(tasks)}"
            )
        if len(tasks) > MAX_TASK_NODES:
            raise ConfigError(
                f"MTSL groups task nodes by enumerating every set partition (Bell numbers); at most "
                f"{MAX_TASK_NODES} tasks are supported, got {len(tasks)}"
            )


def _epochs(name: str, values: object) -> tuple[float, ...]:
    """``values`` as a tuple of epochs >= 0 (ConfigError naming ``name`` otherwise)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ConfigError(f"MTSLConfig.{name} must be a non-empty sequence of epochs, got {values!r}")
    for value in values:
        check_number(_OWNER, f"{name} entry", value, low=0)
    return tuple(float(v) for v in values)


def _milestones(values: object) -> tuple[float, ...]:
    """``values`` as increasing fractions of E in (0, 1)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"MTSLConfig.lr_milestones must be a sequence of fractions of E, got {values!r}")
    for value in values:
        check_number(_OWNER, "lr_milestones entry", value, low=0, high=1, strict_low=True, strict_high=True)
    if list(values) != sorted(values):
        raise ConfigError(f"MTSLConfig.lr_milestones must be increasing fractions of E in (0, 1), got {list(values)}")
    return tuple(float(v) for v in values)


def _device(value: object) -> torch.device:
    try:
        return torch.device(value)  # type: ignore[call-overload]
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"MTSLConfig.device must name a torch device such as 'cpu' or 'cuda:0', got {value!r}") from exc
