"""``skip``: one task bypasses block b (AdaShare's hard "skip" decision).

The task's Block for block ``b`` becomes ``Skip(b)``: the identity when the
block's input and output shapes match, or the block's projection shortcut
(with the same weight key as the Block, so the projection's parameters are
the ones the Block was using) when it downsamples. A block that changes shape
and has no shortcut cannot be skipped: PassError with the block's name and
both shapes.

When the Block is shared with other tasks, only the named task's path
diverges: the other tasks keep the Block, and the task's later call sites keep
their weight keys but read the skipped value (AdaShare: one weight set,
different inputs). If the key is then used by no Block any more (an identity
skip of a task-specific block), it is dropped. Skipping an already skipped
block is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtgraph.errors import PassError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Node, Skip
from mtgraph.params import ParamStore
from mtgraph.passes._infra import (
    Pass,
    PassResult,
    PathRewriter,
    check_block,
    check_index,
    check_task,
    check_task_names,
    describe_node,
    make_result,
    rewrite_paths,
    task_nodes_at,
    unchanged,
)

__all__ = ["SkipPass", "skip_node"]


def skip_node(params: ParamStore, block: Block, where: str) -> Skip:
    """The Skip that replaces ``block`` (identity, or projection with the Block's key); PassError if illegal."""
    info = params.backbone.blocks[block.block]
    if not info.skippable:
        raise PassError(
            f"{where}: block {block.block} ({info.name}) cannot be skipped: its input shape {list(info.in_shape)} "
            f"and output shape {list(info.out_shape)} differ and it has no shortcut ({info.shortcut.reason})"
        )
    return Skip(block=block.block, src=block.src, weights=block.weights if info.shortcut.has_weights else None)


@dataclass(frozen=True)
class SkipPass(Pass):
    """Replace task ``task``'s Block for block ``block`` by the block's shortcut.

    Args:
        task: the task that bypasses the block.
        block: the backbone block it skips.

    Raises:
        PassError: bad options (at construction), an unknown task or block, a
            task gated at the block, or a block without a shortcut.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ("S", "D"))
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> from mtgraph.passes import SkipPass
        >>> print(SkipPass("S", block=1)(graph, params).graph)  # block 1 keeps its shape: identity shortcut
        %0 = input                                  # S D
        %1 = block 0 w=b0.shared (%0)               # S D
        %2 = skip 1 (%1)                            # S
        %3 = block 1 w=b1.shared (%1)               # D
        S = head (%2)
        D = head (%3)
        >>> SkipPass("S", block=0)(graph, params)
        Traceback (most recent call last):
        ...
        mtgraph.errors.PassError: skip block 0 for task 'S': block 0 (0) cannot be skipped: ...
    """

    name = "skip"

    task: str
    block: int

    def __post_init__(self) -> None:
        check_task_names((self.task,), "task", "skip")
        check_index(self.block, "block", "skip")

    def apply(self, graph: MTGraph, params: ParamStore) -> PassResult:
        """Replace the task's Block by a Skip; the task's path diverges from the others' there."""
        where = f"skip block {self.block} for task {self.task!r}"
        check_task(graph, self.task, where)
        check_block(params, self.block, where)
        ids = task_nodes_at(graph, self.task, self.block)
        if len(ids) != 1:
            listed = ", ".join(describe_node(graph, i) for i in ids)
            raise PassError(f"{where}: the task has {len(ids)} nodes of block {self.block} ({listed}); harden its gate first")
        target = ids[0]
        old = graph.nodes[target]
        if isinstance(old, Skip):
            return unchanged(graph, params)
        assert isinstance(old, Block)
        skip_node(params, old, where)  # refuse before rewriting

        def visit(task: str, old_id: int, node: Node, rewriter: PathRewriter) -> Node:
            if task == self.task and old_id == target:
                assert isinstance(node, Block)
                return skip_node(params, node, where)
            return node

        return make_result(graph, params, rewrite_paths(graph, visit))
