"""The closed set of IR node kinds.

Nodes refer to their sources by node id: the position of the source in the
graph's node tuple. Ids are only meaningful inside one :class:`MTGraph`.

Levels: the value a node produces sits at a *level* of the backbone, the index
of the next block that could consume it. ``Input`` is at level 0, ``Block`` and
``Skip`` of block ``b`` are at level ``b + 1``, a ``Gate`` is at the level of
its sources, and a ``Head`` consumes a value at the last level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

__all__ = ["Input", "Block", "Skip", "Gate", "Head", "Node", "head_weights"]


@dataclass(frozen=True)
class Input:
    """The image batch: the only node without sources; always node 0."""

    @property
    def srcs(self) -> tuple[int, ...]:
        """Source node ids (none)."""
        return ()


@dataclass(frozen=True)
class Block:
    """Backbone block ``block`` applied with parameter instance ``weights`` to ``src``.

    Two tasks share computation iff their paths reach the same ``Block``; two
    call sites share parameters iff they name the same ``weights`` key.
    """

    block: int
    weights: str
    src: int

    @property
    def srcs(self) -> tuple[int, ...]:
        """Source node ids."""
        return (self.src,)


@dataclass(frozen=True)
class Skip:
    """A task bypasses block ``block``'s main branch and runs only its shortcut.

    ``weights`` names the parameter instance whose shortcut is run; it is
    ``None`` when the shortcut is the identity (it has no parameters). This
    field is a deliberate addition to DESIGN.md's ``Skip(block, src)``: a
    downsampling residual block's projection shortcut has weights, and the IR
    must say whose.
    """

    block: int
    src: int
    weights: str | None = None

    @property
    def srcs(self) -> tuple[int, ...]:
        """Source node ids."""
        return (self.src,)


@dataclass(frozen=True)
class Gate:
    """A learned per-task mixture of several paths that end at the same level.

    The module stored under ``weights`` decides how the sources are mixed (a
    convex combination, a Gumbel-softmax policy, ...); ``harden`` replaces the
    gate by the single chosen source.
    """

    task: str
    srcs: tuple[int, ...]
    weights: str


@dataclass(frozen=True)
class Head:
    """Task ``task``'s head applied to ``src``; every task has exactly one.

    Its parameters live under the key ``head_weights(task)``.
    """

    task: str
    src: int

    @property
    def srcs(self) -> tuple[int, ...]:
        """Source node ids."""
        return (self.src,)

    @property
    def weights(self) -> str:
        """The ParamStore key of this head's module."""
        return head_weights(self.task)


Node = Union[Input, Block, Skip, Gate, Head]  # noqa: UP007 - a runtime alias must work on Python 3.10


def head_weights(task: str) -> str:
    """Return the ParamStore key under which task ``task``'s head is stored."""
    return f"head.{task}"
