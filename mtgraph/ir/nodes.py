"""The closed set of IR node kinds.

Nodes refer to their sources by node id: the position of the source in the
graph's node tuple. Ids are only meaningful inside one :class:`MTGraph`.

Levels: the value a node produces sits at a *level* of the backbone, the index
of the next block that could consume it. ``Input`` is at level 0, ``Block`` and
``Skip`` of block ``b`` are at level ``b + 1``, a ``Gate`` is at the level of
its sources, and a ``Head`` consumes a value at the last level.

**Nodes validate their fields at construction** and raise
:class:`~mtgraph.errors.IRError` naming the field: block indices and source
ids are non-negative ints (not bools), weight keys match
:data:`~mtgraph.ir.names.WEIGHT_KEY` and do not start with ``head.``, task
names are identifiers and not reserved
(:data:`~mtgraph.ir.names.RESERVED_TASK_NAMES`). A gate's ``srcs`` may be given
as any sequence of ints; it is stored as a tuple (so the node stays hashable
and prints and parses back to itself). What depends on the whole graph (a
source id names an earlier node, a gate mixes two or more distinct sources at
one level) is :func:`~mtgraph.ir.verify`'s job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from mtgraph.errors import IRError
from mtgraph.ir.names import check_task_name, check_weight_key

__all__ = ["Input", "Block", "Skip", "Gate", "Head", "Node", "head_weights"]


def _index(owner: object, field: str, value: object) -> int:
    """``value`` if it is a non-negative int (a block index or a node id); IRError naming ``owner.field`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise IRError(f"{type(owner).__name__}.{field} must be a non-negative int, got {value!r}")
    return value


def _sources(owner: object, value: object) -> tuple[int, ...]:
    """``value`` as a tuple of node ids; IRError unless it is a sequence of non-negative ints."""
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in value)
    ):
        raise IRError(f"{type(owner).__name__}.srcs must be a sequence of node ids (non-negative ints) such as (2, 3), got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class Input:
    """The image batch: the only node without sources; always node 0.

    Examples:
        >>> from mtgraph.ir import Input
        >>> Input().srcs
        ()
    """

    @property
    def srcs(self) -> tuple[int, ...]:
        """Source node ids (none)."""
        return ()


@dataclass(frozen=True)
class Block:
    """Backbone block ``block`` applied with parameter instance ``weights`` to ``src``.

    Two tasks share computation iff their paths reach the same ``Block``; two
    call sites share parameters iff they name the same ``weights`` key.

    Attributes:
        block: index of the backbone block (0-based).
        weights: ParamStore key of the parameter instance, such as ``b0.shared``.
        src: id of the node whose value the block consumes.

    Raises:
        IRError: a field is not a non-negative int or a well-formed weight key.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.ir import Block, Head, Input
        >>> graph = mtgraph.MTGraph((Input(), Block(block=0, weights="b0.shared", src=0), Head("seg", 1)))
        >>> print(graph)
        %0 = input                                  # seg
        %1 = block 0 w=b0.shared (%0)               # seg
        seg = head (%1)
        >>> graph.nodes[1].srcs
        (0,)
        >>> Block(block=-1, weights="b0.shared", src=0)
        Traceback (most recent call last):
        ...
        mtgraph.errors.IRError: Block.block must be a non-negative int, got -1
    """

    block: int
    weights: str
    src: int

    def __post_init__(self) -> None:
        _index(self, "block", self.block)
        check_weight_key(self.weights, "Block.weights")
        _index(self, "src", self.src)

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

    Attributes:
        block: index of the bypassed backbone block.
        src: id of the node whose value the shortcut consumes.
        weights: ParamStore key of the block whose projection shortcut runs,
            or ``None`` for an identity shortcut.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.ir import Block, Head, Input, Skip
        >>> graph = mtgraph.MTGraph((Input(), Block(0, "b0.seg", 0), Skip(block=1, src=1), Head("seg", 2)))
        >>> print(graph)
        %0 = input                                  # seg
        %1 = block 0 w=b0.seg (%0)                  # seg
        %2 = skip 1 (%1)                            # seg
        seg = head (%2)
        >>> graph.levels  # the skip's value is at the level after block 1
        (0, 1, 2, 2)
    """

    block: int
    src: int
    weights: str | None = None

    def __post_init__(self) -> None:
        _index(self, "block", self.block)
        _index(self, "src", self.src)
        if self.weights is not None:
            check_weight_key(self.weights, "Skip.weights")

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

    Attributes:
        task: the task whose path the gate is on.
        srcs: ids of the mixed nodes (at least two, all at one level); any
            sequence of ints is accepted and stored as a tuple.
        weights: ParamStore key of the gate module (a :class:`~mtgraph.MixGate`).

    Examples:
        >>> import mtgraph
        >>> from mtgraph.ir import Block, Gate, Head, Input, Skip
        >>> graph = mtgraph.MTGraph((
        ...     Input(), Block(0, "b0.seg", 0), Skip(1, 1), Block(1, "b1.seg", 1),
        ...     Gate(task="seg", srcs=(2, 3), weights="gate.seg"), Head("seg", 4),
        ... ))
        >>> mtgraph.verify(graph)  # both sources end at level 2: a valid gate
        >>> print(mtgraph.print_graph(graph).splitlines()[4])
        %4 = gate seg w=gate.seg (%2, %3)           # seg
        >>> Gate(task="seg", srcs=[2, 3], weights="gate.seg").srcs  # a list is stored as a tuple
        (2, 3)
        >>> Gate(task="seg", srcs=[2, "3"], weights="gate.seg")
        Traceback (most recent call last):
        ...
        mtgraph.errors.IRError: Gate.srcs must be a sequence of node ids (non-negative ints) such as (2, 3), got [2, '3']
    """

    task: str
    srcs: tuple[int, ...]
    weights: str

    def __post_init__(self) -> None:
        check_task_name(self.task, "Gate.task")
        object.__setattr__(self, "srcs", _sources(self, self.srcs))
        check_weight_key(self.weights, "Gate.weights")


@dataclass(frozen=True)
class Head:
    """Task ``task``'s head applied to ``src``; every task has exactly one.

    Its parameters live under the key ``head_weights(task)``.

    Attributes:
        task: the task name (an identifier; the compiled module's output key).
        src: id of the node the head reads (a value at the last level).

    Examples:
        >>> from mtgraph.ir import Head
        >>> head = Head(task="depth", src=3)
        >>> head.srcs, head.weights
        ((3,), 'head.depth')
        >>> Head(task="2nd", src=3)
        Traceback (most recent call last):
        ...
        mtgraph.errors.IRError: Head.task '2nd' is not an identifier (letters, digits, '_'; not starting with a digit)
    """

    task: str
    src: int

    def __post_init__(self) -> None:
        check_task_name(self.task, "Head.task")
        _index(self, "src", self.src)

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
    """Return the ParamStore key under which task ``task``'s head is stored.

    Args:
        task: the task name.

    Returns:
        The key ``head.TASK``.

    Examples:
        >>> from mtgraph.ir import head_weights
        >>> head_weights("seg")
        'head.seg'
    """
    return f"head.{task}"
