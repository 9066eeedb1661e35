"""The validated options of an MTSL run (:class:`MTSLConfig`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from mtgraph.errors import ConfigError
from mtgraph.strategies.mtsl.grouping import MAX_TASK_NODES
from mtgraph.strategies.mtsl.schedule import PAPER_ATT_EPOCHS, PAPER_TASK_EPOCHS, PAPER_TOTAL_EPOCHS

__all__ = ["MTSLConfig"]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class MTSLConfig:
    """Options of :func:`~mtgraph.strategies.mtsl.learn_mtsl`; defaults are papers/000's.

    Structure:
        gamma: grouping threshold γ in [0, 1] (§3.3, appendix D.2; 0.8).
        grouping_rule: ``"code"`` (default: the fewest-groups-first search
            of the authors' released code) or ``"paper"`` (Algorithm 2 as
            printed). **A choice between two parts of the paper:** Algorithm 2
            averages its score over *groups* and applies γ only after choosing,
            so it splits even uniformly similar task nodes (five task nodes at
            CKA ≈ 0.99 become two groups) and γ never changes the chosen
            grouping; the paper's own results cannot come from it (Table 5:
            all five tasks share layers 1-6; Table 6: γ ≤ 0.7 gives One-Net,
            γ = 1 gives STN). The ``"code"`` search reproduces that threshold
            behaviour: γ = 0 fuses every sibling set (One-Net), γ = 1 fuses
            only identical task nodes (STN otherwise).
            See :mod:`mtgraph.strategies.mtsl.grouping`. Both rules score
            every set partition of a sibling set (Bell(T) of them), so a run
            takes at most 10 tasks (Bell(10) = 115,975); more raise
            ConfigError (:meth:`check_tasks`).
        grouping_images: size of the fixed training subset on which grouping
            CKA is measured (appendix F: 800 images on Cityscapes, all 795 on
            NYUv2); capped at the training set size, at least 4.

    Losses:
        align_weight: λ of eq. 1 (0.2).
        align: ablation switch: CKA alignment in task-learning phases.
        average: ablation switch: initialise a group node with the average of
            its task nodes' weights and optimizer state (True) or a copy of
            the first task node's (False, Table 4's "no Avg").
        att: ablation switch: attention amalgamation (False skips the E_s
            epochs; the group node keeps its initialisation).
        att_reduction: hidden width of ATT_i is ``max(C // att_reduction, 8)``.

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

    Variant:
        retrain: MTSL-R (appendix I): after learning, re-initialise the
            converged architecture and train it for E epochs with L_MTL.

    Raises:
        ConfigError: an option out of range or of the wrong type, naming it.

    Examples:
        >>> from mtgraph.strategies.mtsl import MTSLConfig
        >>> config = MTSLConfig(gamma=0.5).with_budget(4)  # the paper's schedule in E = 4 epochs
        >>> config.gamma, config.total_epochs, config.task_epochs[:3]
        (0.5, 4.0, (0.1, 0.1, 0.1))
        >>> MTSLConfig(gamma=1.5)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: MTSLConfig.gamma must be a number in [0, 1], got 1.5
    """

    gamma: float = 0.8
    grouping_rule: Literal["paper", "code"] = "code"
    grouping_images: int = 800
    align_weight: float = 0.2
    align: bool = True
    average: bool = True
    att: bool = True
    att_reduction: int = 4
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

    def __post_init__(self) -> None:
        if not _number(self.gamma) or not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"MTSLConfig.gamma must be a number in [0, 1], got {self.gamma!r}")
        if self.grouping_rule not in ("paper", "code"):
            raise ConfigError(f"MTSLConfig.grouping_rule must be 'paper' or 'code', got {self.grouping_rule!r}")
        for name in ("align", "average", "att", "retrain"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"MTSLConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if not _number(self.align_weight) or self.align_weight < 0:
            raise ConfigError(f"MTSLConfig.align_weight (λ) must be a number >= 0, got {self.align_weight!r}")
        self._check_int("grouping_images", 4)
        self._check_int("att_reduction", 1)
        self._check_int("eval_batch_size", 1)
        # The unbiased CKA of the alignment term needs 4 samples per batch.
        self._check_int("batch_size", 4 if self.align else 1)
        for name in ("task_epochs", "att_epochs"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
                raise ConfigError(f"MTSLConfig.{name} must be a non-empty sequence of epochs, got {values!r}")
            if not all(_number(v) and v >= 0 for v in values):
                raise ConfigError(f"MTSLConfig.{name} entries must be numbers >= 0, got {list(values)}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if min(self.task_epochs) <= 0:
            # Each structural phase follows task learning; a phase of 0 epochs
            # would put two structural phases at the same step.
            raise ConfigError(f"MTSLConfig.task_epochs entries must be > 0, got {list(self.task_epochs)}")
        if not _number(self.total_epochs) or self.total_epochs <= 0:
            raise ConfigError(f"MTSLConfig.total_epochs (E) must be > 0, got {self.total_epochs!r}")
        if not _number(self.min_finetune_epochs) or not 0 <= self.min_finetune_epochs <= self.total_epochs:
            raise ConfigError(
                f"MTSLConfig.min_finetune_epochs (f) must be in [0, E = {self.total_epochs}], got {self.min_finetune_epochs!r}"
            )
        if self.phases is not None:
            self._check_int("phases", 1)
        for name in ("lr", "lr_decay"):
            if not _number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ConfigError(f"MTSLConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.att_lr is not None and (not _number(self.att_lr) or self.att_lr <= 0):
            raise ConfigError(f"MTSLConfig.att_lr must be None or > 0, got {self.att_lr!r}")
        if not _number(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"MTSLConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        milestones = tuple(self.lr_milestones)
        if not all(_number(m) and 0 < m < 1 for m in milestones) or list(milestones) != sorted(milestones):
            raise ConfigError(
                f"MTSLConfig.lr_milestones must be increasing fractions of E in (0, 1), got {list(milestones)}"
            )
        object.__setattr__(self, "lr_milestones", tuple(float(m) for m in milestones))

    def _check_int(self, name: str, minimum: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"MTSLConfig.{name} must be an int >= {minimum}, got {value!r}")

    def with_budget(self, epochs: float) -> MTSLConfig:
        """A copy whose whole schedule is scaled so that ``E = epochs``.

        Every list entry, E and f are multiplied by ``epochs / total_epochs``:
        the paper's proportions (E_t = 0.6 E over the phases, E_s = 0.425 E,
        fine-tuning 0.4 E) in a budget of any size, e.g. ``with_budget(2)``
        for a test.
        """
        if not _number(epochs) or epochs <= 0:
            raise ConfigError(f"an MTSL budget must be a number of epochs > 0, got {epochs!r}")
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
