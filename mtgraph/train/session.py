"""Ambient checkpointing: every :func:`~mtgraph.train.fit` call inside a ``with`` block checkpoints into one folder.

A strategy trains in one or many :func:`~mtgraph.train.fit` calls (MTSL in
one or two, AdaShare in three, the affinity tree search once per candidate
network). To make a whole strategy run resumable without giving every
strategy and every internal call a checkpoint argument, wrap it::

    with checkpointing("run/checkpoints", resume=True):
        result = learn_mtsl(backbone, heads, tasks, data, seed=0)

Inside the block, a ``fit`` call that was given no ``checkpoint=`` of its own
checkpoints into the folder under the phase name its caller gave (``phase=``),
and ``resume`` is the session's. Strategies name their phases explicitly and
uniquely (``"adashare-search"``, ``"grouping-early-seg+depth"``), so a rerun
finds each phase's checkpoints by name, whatever order the calls come in; two
fit calls of one session with the same phase name are refused
(CheckpointError), since they would read each other's checkpoints:

* a fit call whose phase finished returns at once from its final checkpoint
  (graph, weights, history, hook states and RNG states as they were when it
  ended, so the code after it continues exactly as in the first run);
* the fit call that was interrupted resumes from its latest checkpoint
  (bit-identical to an uninterrupted run on CPU, as far as its hooks save
  their state through ``Hook.state_dict``);
* later fit calls run as usual.

What is *not* resumed: work done outside ``fit`` (small local training loops,
evaluation, similarity measurements, structural decisions between phases) is
redone on the rerun, which is cheap and, being deterministic, gives the same
values. A hook's attributes that are not part of its ``state_dict`` keep their
fresh values when a finished phase is skipped. A ``fit`` call given an
explicit ``checkpoint=`` keeps it (and its own ``resume``); it is not counted.
The session lives in a :mod:`contextvars` variable, so fit calls in other
processes (``process`` or Ray executors) or in threads started inside the
block do not see it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from mtgraph.errors import CheckpointError, ConfigError
from mtgraph.train.checkpoint import CheckpointConfig

__all__ = ["CheckpointSession", "checkpointing", "session_arguments"]


@dataclass
class CheckpointSession:
    """The state of one :func:`checkpointing` block.

    Attributes:
        config: where and how often the session's fit calls checkpoint.
        resume: passed to every fit call the session takes over.
        phases: the phase names given out so far, in call order.

    Examples:
        >>> from mtgraph.train import CheckpointSession, CheckpointConfig
        >>> session = CheckpointSession(CheckpointConfig("run/checkpoints"), resume=False)
        >>> session.next_phase("train"), session.next_phase("retrain"), session.folder.name
        ('train', 'retrain', 'checkpoints')
        >>> session.next_phase("train")
        Traceback (most recent call last):
        ...
        mtgraph.errors.CheckpointError: two fit calls of one checkpointing session are named 'train'; ...
    """

    config: CheckpointConfig
    resume: bool
    phases: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        """The checkpoint folder."""
        return Path(self.config.folder)

    def next_phase(self, phase: str) -> str:
        """Record the next fit call's phase name and return it; a name used before in the session is refused.

        Raises:
            CheckpointError: ``phase`` was already given to an earlier fit call of this session.
        """
        if phase in self.phases:
            raise CheckpointError(
                f"two fit calls of one checkpointing session are named {phase!r}; give each fit call its own "
                f"phase= name (named so far: {self.phases})"
            )
        self.phases.append(phase)
        return phase


_ACTIVE: ContextVar[CheckpointSession | None] = ContextVar("mtgraph_checkpointing", default=None)


@contextlib.contextmanager
def checkpointing(
    folder: str | os.PathLike[str], resume: bool = False, every: int | None = None, keep: int = 1
) -> Iterator[CheckpointSession]:
    """Checkpoint every :func:`~mtgraph.train.fit` call of the block into ``folder`` (see the module docstring).

    Args:
        folder: the checkpoint folder (created by the first checkpoint written).
        resume: continue from the folder's checkpoints: finished fit calls
            return at once, the interrupted one resumes. Without it a fit
            call whose phase already has checkpoints there raises
            CheckpointError.
        every: also checkpoint every this many optimizer steps (None: at
            epoch ends and at the end of each fit call).
        keep: how many of each fit call's newest checkpoints to keep (1:
            the latest only, which for a finished call is its final one).

    Yields:
        The :class:`CheckpointSession`.

    Raises:
        ConfigError: a session is already active (nested sessions would make
            phase names depend on which block a fit call happens to run in).

    Examples:
        Every ``fit`` call of a strategy run inside the block gets a numbered
        phase in one folder; rerunning it with ``resume=True`` skips the
        finished ones (``mtgraph learn --resume`` does exactly this):

        >>> import tempfile
        >>> from mtgraph.train import checkpointing
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     with checkpointing(folder, resume=True) as session:
        ...         with checkpointing(folder):
        ...             pass
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: a checkpointing session into ... is already active; ...
    """
    active = _ACTIVE.get()
    if active is not None:
        raise ConfigError(
            f"a checkpointing session into {str(active.folder)!r} is already active; "
            "sessions cannot be nested (pass checkpoint= to the inner fit calls instead)"
        )
    session = CheckpointSession(CheckpointConfig(folder, every=every, keep=keep), bool(resume))
    token = _ACTIVE.set(session)
    try:
        yield session
    finally:
        _ACTIVE.reset(token)


def session_arguments(
    checkpoint: CheckpointConfig | str | os.PathLike[str] | None, resume: bool, phase: str
) -> tuple[CheckpointConfig | str | os.PathLike[str] | None, bool, str]:
    """``fit``'s ``(checkpoint, resume, phase)`` after the active session, if any, took over.

    An explicit ``checkpoint`` wins; without a session the arguments are returned unchanged.
    """
    session = _ACTIVE.get()
    if session is None or checkpoint is not None:
        return checkpoint, resume, phase
    return session.config, session.resume, session.next_phase(phase)
