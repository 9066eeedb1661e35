"""MTSL's phase schedule: papers/000 Algorithm 1 and appendix C, mapped onto any backbone.

Algorithm 1 alternates a *task-learning* phase (``E_t`` epochs of the
aligned loss, eq. 1) and a *structural-learning* phase (group by CKA, create
group nodes, ``E_s`` epochs of attention amalgamation, remove task nodes),
``n`` times, then fine-tunes with the plain multi-task loss for the rest of a
budget of ``E`` epochs (at least ``f`` of them). Amalgamation epochs are *not*
part of ``E``: the paper counts them as extra ("only adds 34 additional
epochs", §4.2; 34 = the sum of its ``E_s`` list).

Appendix C's values are the defaults here: ``E = 80``, ``E_t = 2, 2, 2, 2,
4, 4, 8, 8, 8, 8`` and ``E_s = 1, 1, 2, 2, 2, 2, 4, 4, 8, 8`` for ten
locations (``n = 10``), so fine-tuning gets ``80 − 48 = 32`` epochs.

**Mapping the lists onto a backbone** (the paper has exactly one phase per
location; a traced backbone has its own block count). The lists are read as
*profiles over depth*: with ``P`` phases (one per block by default) and a list
of ``n`` entries, phase ``i`` takes the entry at the centre of its share of
the list, ``list[floor((i + ½) · n / P)]``. With ``P = n`` this is the list
itself; with fewer phases entries are dropped evenly (nine blocks drop the
fifth entry: ``E_t = 2, 2, 2, 2, 4, 8, 8, 8, 8``, ``E_s = 1, 1, 2, 2, 2, 4, 4,
8, 8``); with more phases entries repeat. ``E`` is not rescaled, so the
fine-tuning phase absorbs the difference (36 epochs for nine blocks).

**Small runs.** Every epoch count may be fractional; :func:`epochs_to_steps`
turns it into optimizer steps (``round(epochs · batches_per_epoch)``, at least
one step for any positive count). :meth:`MTSLConfig.with_budget
<mtgraph.strategies.mtsl.config.MTSLConfig.with_budget>` scales every list and
``E`` by one factor, so ``with_budget(4)`` is the paper's schedule in 4
epochs plus 1.7 epochs of amalgamation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mtgraph.errors import ConfigError

__all__ = [
    "PAPER_ATT_EPOCHS",
    "PAPER_TASK_EPOCHS",
    "PAPER_TOTAL_EPOCHS",
    "Phase",
    "Schedule",
    "build_schedule",
    "epochs_to_steps",
    "map_profile",
]

#: Task-learning epochs per phase, papers/000 appendix C.
PAPER_TASK_EPOCHS: tuple[float, ...] = (2, 2, 2, 2, 4, 4, 8, 8, 8, 8)
#: Attention-amalgamation epochs per structural phase, papers/000 appendix C.
PAPER_ATT_EPOCHS: tuple[float, ...] = (1, 1, 2, 2, 2, 2, 4, 4, 8, 8)
#: Training budget ``E`` (task learning + fine-tuning), papers/000 appendix C.
PAPER_TOTAL_EPOCHS: float = 80.0


@dataclass(frozen=True)
class Phase:
    """One task-learning + structural-learning round of Algorithm 1.

    Attributes:
        index: 0-based phase number.
        task_epochs: ``E_t`` of this phase (aligned multi-task training).
        att_epochs: ``E_s`` of this phase (amalgamation into new group nodes).

    Examples:
        >>> from mtgraph.strategies.mtsl import Phase
        >>> Phase(index=0, task_epochs=2.0, att_epochs=1.0)
        Phase(index=0, task_epochs=2.0, att_epochs=1.0)
    """

    index: int
    task_epochs: float
    att_epochs: float


@dataclass(frozen=True)
class Schedule:
    """The whole MTSL schedule for one backbone.

    Attributes:
        phases: the alternating phases, in order.
        finetune_epochs: epochs of the final phase (``E − Σ E_t``) when every
            phase runs; Algorithm 1 gives fine-tuning whatever is left, so an
            early exit (nothing left to fuse) lengthens it.
        total_epochs: ``E``, task learning plus fine-tuning.
        description: how the lists were mapped, for the decision log.

    Examples:
        >>> from mtgraph.strategies.mtsl import build_schedule
        >>> schedule = build_schedule(task_epochs=(1, 2), att_epochs=(1, 1), total_epochs=5,
        ...                           min_finetune_epochs=0, phases=None, num_blocks=2)
        >>> schedule.task_epochs, schedule.att_epochs, schedule.finetune_epochs
        ((1, 2), (1, 1), 2.0)
    """

    phases: tuple[Phase, ...]
    finetune_epochs: float
    total_epochs: float
    description: str

    @property
    def task_epochs(self) -> tuple[float, ...]:
        """``E_t`` per phase."""
        return tuple(p.task_epochs for p in self.phases)

    @property
    def att_epochs(self) -> tuple[float, ...]:
        """``E_s`` per phase."""
        return tuple(p.att_epochs for p in self.phases)


def map_profile(values: Sequence[float], num_phases: int) -> tuple[float, ...]:
    """Map an epoch list onto ``num_phases`` phases: entry ``floor((i + ½)·n/P)`` for phase ``i``.

    See the module docstring; ``len(values) == num_phases`` returns the list.

    Args:
        values: the epoch list (a profile over depth).
        num_phases: the number of phases ``P`` to map it onto.

    Returns:
        One entry per phase.

    Raises:
        ConfigError: an empty list or ``num_phases < 1``.

    Examples:
        >>> from mtgraph.strategies.mtsl import PAPER_TASK_EPOCHS, map_profile
        >>> map_profile(PAPER_TASK_EPOCHS, 9)  # nine blocks drop the fifth entry
        (2, 2, 2, 2, 4, 8, 8, 8, 8)
        >>> map_profile((1, 2), 4)
        (1, 1, 2, 2)
    """
    values = tuple(values)
    if not values:
        raise ConfigError("an epoch list needs at least one entry")
    if num_phases < 1:
        raise ConfigError(f"the number of phases must be >= 1, got {num_phases}")
    n = len(values)
    return tuple(values[min(n - 1, math.floor((i + 0.5) * n / num_phases))] for i in range(num_phases))


def build_schedule(
    *,
    task_epochs: Sequence[float],
    att_epochs: Sequence[float],
    total_epochs: float,
    min_finetune_epochs: float,
    phases: int | None,
    num_blocks: int,
) -> Schedule:
    """Lay the phase lists onto a backbone of ``num_blocks`` blocks.

    Args:
        task_epochs: ``E_t`` profile (any length, mapped by :func:`map_profile`).
        att_epochs: ``E_s`` profile (idem).
        total_epochs: ``E``.
        min_finetune_epochs: ``f``; Algorithm 1 requires ``Σ E_t ≤ E − f``.
        phases: number of structural phases; ``None`` means one per block.
        num_blocks: blocks of the traced backbone.

    Returns:
        The :class:`Schedule`: one :class:`Phase` per structural phase and the
        fine-tuning epochs left in ``E``.

    Raises:
        ConfigError: more phases than blocks (each phase moves the deepest
            task nodes down by one block, so extra phases would find no layer
            left), or the task phases do not fit in ``E − f``.

    Examples:
        >>> from mtgraph.strategies.mtsl import build_schedule
        >>> schedule = build_schedule(task_epochs=(2, 4), att_epochs=(1,), total_epochs=12,
        ...                           min_finetune_epochs=2, phases=None, num_blocks=3)
        >>> schedule.task_epochs, schedule.att_epochs, schedule.finetune_epochs
        ((2, 4, 4), (1, 1, 1), 2.0)
        >>> build_schedule(task_epochs=(2,), att_epochs=(1,), total_epochs=10,
        ...                min_finetune_epochs=0, phases=4, num_blocks=3)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: the MTSL schedule expects 4 structural phases, one block each, ...
    """
    if num_blocks < 1:
        raise ConfigError(f"the backbone must have at least one block, got {num_blocks}")
    count = num_blocks if phases is None else phases
    if count > num_blocks:
        raise ConfigError(
            f"the MTSL schedule expects {count} structural phases, one block each, but the backbone has only "
            f"{num_blocks} blocks; use phases=None (one phase per block) or phases <= {num_blocks}, "
            "or trace the backbone with finer cuts"
        )
    task = map_profile(task_epochs, count)
    att = map_profile(att_epochs, count)
    spent = math.fsum(task)
    if spent > total_epochs - min_finetune_epochs + 1e-9:
        raise ConfigError(
            f"the task-learning phases take {spent:g} epochs ({', '.join(f'{t:g}' for t in task)}) but the budget "
            f"E = {total_epochs:g} minus the minimum fine-tuning f = {min_finetune_epochs:g} leaves only "
            f"{total_epochs - min_finetune_epochs:g} (Algorithm 1 needs sum(E_t) <= E - f)"
        )
    how = (
        "as given"
        if len(tuple(task_epochs)) == count and len(tuple(att_epochs)) == count
        else (
            f"E_t list of {len(tuple(task_epochs))} and E_s list of {len(tuple(att_epochs))} entries mapped onto "
            f"{count} phases by entry floor((i + 1/2) * n / {count})"
        )
    )
    description = (
        f"{count} phases over {num_blocks} blocks ({how}): E_t = {', '.join(f'{t:g}' for t in task)}; "
        f"E_s = {', '.join(f'{a:g}' for a in att)}; fine-tuning {total_epochs - spent:g} of E = {total_epochs:g}"
    )
    return Schedule(
        phases=tuple(Phase(i, t, a) for i, (t, a) in enumerate(zip(task, att))),
        finetune_epochs=total_epochs - spent,
        total_epochs=float(total_epochs),
        description=description,
    )


def epochs_to_steps(epochs: float, batches_per_epoch: int) -> int:
    """Optimizer steps for a (possibly fractional) number of epochs; at least 1 when ``epochs > 0``.

    Args:
        epochs: a number of epochs, >= 0 (fractions allowed).
        batches_per_epoch: batches in one epoch, >= 1.

    Returns:
        ``round(epochs * batches_per_epoch)``, but at least 1 for any positive ``epochs``.

    Raises:
        ConfigError: negative ``epochs`` or ``batches_per_epoch < 1``.

    Examples:
        >>> from mtgraph.strategies.mtsl import epochs_to_steps
        >>> epochs_to_steps(2.5, 4), epochs_to_steps(0.01, 10), epochs_to_steps(0, 10)
        (10, 1, 0)
    """
    if epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {epochs}")
    if batches_per_epoch < 1:
        raise ConfigError(f"an epoch needs at least one batch, got {batches_per_epoch}")
    if epochs == 0:
        return 0
    return max(1, round(epochs * batches_per_epoch))
