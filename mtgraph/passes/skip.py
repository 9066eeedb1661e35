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
from mtgraph.ir.signature import BackboneSignature, value_text
from mtgraph.params import ParamStore
from mtgraph.passes.base import Pass
from mtgraph.passes.checks import (
    block_outside,
    check_index,
    check_task_names,
    describe_node,
    task_nodes_at,
    unknown_task,
)
from mtgraph.passes.refusal import Refusal
from mtgraph.passes.result import PassResult, make_result, unchanged
from mtgraph.passes.rewrite import PathRewriter, rewrite_paths

__all__ = ["SkipPass", "skip_node", "not_skippable"]


def not_skippable(pass_: Pass, signature: BackboneSignature, block: int, where: str, task: str) -> Refusal | None:
    """A refusal when block ``block`` has no shortcut (its shapes differ and it is not residual), else None."""
    row = signature.blocks[block]
    if row.skippable:
        return None
    if len(row.inputs) == len(row.outputs) == 1:
        shapes = f"its input shape {list(row.in_shape)} and output shape {list(row.out_shape)} differ"
    else:  # a multi-tensor boundary: the whole values, since any member may differ
        shapes = f"its input value {value_text(row.inputs)} and output value {value_text(row.outputs)} differ"
    return pass_.refuse(
        "not-skippable",
        f"{where}: block {block} ({row.name}) cannot be skipped: {shapes} and it has no shortcut "
        f"({row.shortcut.reason})",
        tasks=(task,), block=block,
    )


def skip_node(signature: BackboneSignature, block: Block) -> Skip:
    """The Skip that replaces ``block`` (identity, or projection with the Block's key) for a skippable block."""
    row = signature.blocks[block.block]
    if not row.skippable:
        raise PassError(f"internal error: block {block.block} ({row.name}) cannot be skipped")
    return Skip(block=block.block, src=block.src, weights=block.weights if row.shortcut.has_weights else None)


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

    def _where(self) -> str:
        return f"skip block {self.block} for task {self.task!r}"

    def match(self, graph: MTGraph, params: ParamStore) -> int | Refusal:
        """The id of the task's node for the block, or the refusal of the first failed condition."""
        where = self._where()
        refusal = unknown_task(self, graph, self.task, where) or block_outside(self, params.signature, self.block, where)
        if refusal is not None:
            return refusal
        ids = task_nodes_at(graph, self.task, self.block)
        if len(ids) != 1:
            listed = ", ".join(describe_node(graph, i) for i in ids)
            return self.refuse(
                "gated",
                f"{where}: the task has {len(ids)} nodes of block {self.block} ({listed}); harden its gate first",
                tasks=(self.task,), block=self.block, nodes=tuple(ids),
            )
        if isinstance(graph.nodes[ids[0]], Block):
            refusal = not_skippable(self, params.signature, self.block, where, self.task)
            if refusal is not None:
                return refusal
        return ids[0]

    def precondition(self, graph: MTGraph, params: ParamStore) -> Refusal | None:
        """Refused for an unknown task or block, a task gated at the block, or a block without a shortcut."""
        found = self.match(graph, params)
        return found if isinstance(found, Refusal) else None

    def apply(self, graph: MTGraph, params: ParamStore) -> PassResult:
        """Replace the task's Block by a Skip; the task's path diverges from the others' there."""
        target = self.match(graph, params)
        if isinstance(target, Refusal):
            raise target.error()
        if isinstance(graph.nodes[target], Skip):
            return unchanged(graph, params)  # skipping an already skipped block changes nothing
        signature = params.signature

        def visit(task: str, old_id: int, node: Node, rewriter: PathRewriter) -> Node:
            if task == self.task and old_id == target and isinstance(node, Block):
                return skip_node(signature, node)
            return node

        return make_result(graph, params, rewrite_paths(graph, visit))
