"""Checks the passes share: option validation at construction, and refusals of a graph that does not fit.

Option checks raise :class:`~mtgraph.errors.PassError` (a pass object with a
bad option cannot exist); graph checks return a
:class:`~mtgraph.passes.refusal.Refusal` or None (the graph may change, the
pass stays valid).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mtgraph.errors import PassError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.names import TASK_NAME
from mtgraph.ir.nodes import Block, Skip
from mtgraph.ir.signature import BackboneSignature
from mtgraph.ir.text import format_node
from mtgraph.passes.refusal import Refusal

if TYPE_CHECKING:
    from mtgraph.passes.base import Pass

__all__ = [
    "describe_node",
    "task_nodes_at",
    "check_task_names",
    "check_index",
    "unknown_task",
    "block_outside",
]


def describe_node(graph: MTGraph, i: int) -> str:
    """``'%3 = block 2 w=b2.S+E (%1)'``: a node as error messages name it (its IR line, quoted)."""
    return f"'{format_node(graph.nodes[i], i)}'"


def task_nodes_at(graph: MTGraph, task: str, block: int) -> list[int]:
    """Ids of the Block/Skip nodes of block ``block`` on task ``task``'s path (several when it is gated there)."""
    found = []
    for i in graph.path(task):
        node = graph.nodes[i]
        if isinstance(node, (Block, Skip)) and node.block == block:
            found.append(i)
    return found


def check_task_names(value: object, option: str, what: str, minimum: int = 1) -> tuple[str, ...]:
    """Validate a tasks option: a sequence (not a str) of at least ``minimum`` distinct task names."""
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise PassError(f"{what}: {option} must be a sequence of task names such as ('S', 'E'), got {value!r}")
    tasks = tuple(value)  # type: ignore[arg-type]
    for t in tasks:
        if not isinstance(t, str) or not re.fullmatch(TASK_NAME, t):
            raise PassError(f"{what}: {option} contains {t!r}, which is not a task name (an identifier)")
    repeated = sorted({t for t in tasks if tasks.count(t) > 1})
    if repeated:
        raise PassError(f"{what}: {option} names {repeated} more than once")
    if len(tasks) < minimum:
        raise PassError(f"{what}: {option} needs at least {minimum} task(s), got {list(tasks)}")
    return tasks


def check_index(value: object, option: str, what: str) -> int:
    """Validate a non-negative int option (a block index)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PassError(f"{what}: {option} must be a non-negative int, got {value!r}")
    return value


def unknown_task(pass_: Pass, graph: MTGraph, task: str, where: str) -> Refusal | None:
    """A refusal unless ``task`` is one of the graph's tasks."""
    if task in graph.tasks:
        return None
    return pass_.refuse(
        "unknown-task", f"{where}: task {task!r} does not exist; the graph's tasks are {list(graph.tasks)}", tasks=(task,)
    )


def block_outside(pass_: Pass, signature: BackboneSignature, block: int, where: str) -> Refusal | None:
    """A refusal unless ``block`` indexes a block of the signature table."""
    n = signature.num_blocks
    if 0 <= block < n:
        return None
    return pass_.refuse(
        "block-out-of-range", f"{where}: block {block} is outside the backbone, which has blocks 0..{n - 1}", block=block
    )
