"""``fuse``: tasks that reach the same source at block b get one shared Block for block b (MTSL's group node).

Conditions, each refused (:meth:`FusePass.check` returns the
:class:`~mtgraph.passes.Refusal`; calling the pass raises it as a PassError)
naming the tasks, the block and what failed:

* every task has exactly one node of block ``b`` on its path (a task gated
  there has two: harden first), and it is a ``Block`` (not a ``Skip``);
* all those Blocks consume the same node (the tasks already share every
  earlier block): "the tasks reach the same source at block b";
* the Blocks serve no task outside ``tasks`` (fusing them would silently
  re-route that task too: list it, or split it off first);
* with ``init="average"``, the weights to average have one structure.

When the tasks already share one node, nothing changes (whoever else that
node serves).

The new Block's weights are a new key named by the ``group_key`` convention
(``b3.S+E``, ``b3.shared`` when every task is fused). With ``init="average"``
they are the mean of the distinct old keys' weights, each key counted once
(MTSL appendix C: "averaging all parameters to initialize the group node"),
BatchNorm running statistics included; with ``init="copy"`` they are a copy
of ``source_task``'s block. Every consumer of the old Blocks (later blocks,
skips, gates, heads) is rewired to the new node.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from mtgraph.errors import PassError
from mtgraph.ir.builders import group_key
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Node
from mtgraph.params import ParamStore
from mtgraph.passes.averaging import average_modules, structure_mismatch
from mtgraph.passes.base import Pass
from mtgraph.passes.checks import (
    block_outside,
    check_index,
    check_task_names,
    describe_node,
    task_nodes_at,
    unknown_task,
)
from mtgraph.passes.keys import KeyAllocator
from mtgraph.passes.lineage import LineageEntry
from mtgraph.passes.refusal import Refusal
from mtgraph.passes.result import PassResult, make_result, unchanged
from mtgraph.passes.rewrite import PathRewriter, rewrite_paths

__all__ = ["FusePass", "FUSE_INITS"]

#: How the fused Block's weights are initialised.
FUSE_INITS = ("average", "copy")


@dataclass(frozen=True)
class FusePass(Pass):
    """Give ``tasks`` one shared Block for block ``block``, initialised by ``init`` ("average" or "copy" of ``source_task``).

    Args:
        tasks: two or more task names.
        block: the backbone block to fuse.
        init: ``"average"`` (mean of the tasks' weights) or ``"copy"`` (of ``source_task``'s).
        source_task: the task whose block ``init="copy"`` copies.

    Raises:
        PassError: bad options (at construction), or a fusion the graph does
            not allow (see the module docstring), naming the tasks and block.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.stn(2, ("S", "D"))  # one network per task
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> from mtgraph.passes import FusePass
        >>> result = FusePass(("S", "D"), block=0)(graph, params)
        >>> print(result.graph)
        %0 = input                                  # S D
        %1 = block 0 w=b0.shared (%0)               # S D
        %2 = block 1 w=b1.S (%1)                    # S
        %3 = block 1 w=b1.D (%1)                    # D
        S = head (%2)
        D = head (%3)
        >>> print(result.lineage.entries[0])
        b0.shared <- average(b0.S, b0.D)
        >>> FusePass(("S", "D"), block=1)(graph, params)  # block 1 reads different inputs
        Traceback (most recent call last):
        ...
        mtgraph.errors.PassError: fuse tasks S+D at block 1: the tasks do not share a source at block 1 ...
    """

    name = "fuse"

    tasks: tuple[str, ...]
    block: int
    init: str = "average"
    source_task: str | None = None

    def __post_init__(self) -> None:
        what = "fuse"
        object.__setattr__(self, "tasks", check_task_names(self.tasks, "tasks", what, minimum=2))
        check_index(self.block, "block", what)
        if self.init not in FUSE_INITS:
            raise PassError(f"{what}: init must be one of {list(FUSE_INITS)}, got {self.init!r}")
        if self.init == "copy" and self.source_task not in self.tasks:
            raise PassError(
                f"{what}: init='copy' copies the block of source_task, which must be one of tasks "
                f"{list(self.tasks)}; got source_task={self.source_task!r}"
            )
        if self.init == "average" and self.source_task is not None:
            raise PassError(f"{what}: source_task={self.source_task!r} is only meaningful with init='copy'")

    def _where(self) -> str:
        return f"fuse tasks {'+'.join(self.tasks)} at block {self.block}"

    def match(self, graph: MTGraph, params: ParamStore) -> dict[str, int] | Refusal:
        """Each task's Block node for the block, or the refusal of the first condition that fails.

        ``graph`` must verify against ``params`` (as :meth:`check` ensures).
        """
        where = self._where()
        for task in self.tasks:
            refusal = unknown_task(self, graph, task, where)
            if refusal is not None:
                return refusal
        refusal = block_outside(self, params.signature, self.block, where)
        if refusal is not None:
            return refusal
        found: dict[str, int] = {}
        for task in self.tasks:
            ids = task_nodes_at(graph, task, self.block)
            if len(ids) != 1:
                listed = ", ".join(describe_node(graph, i) for i in ids)
                return self.refuse(
                    "gated",
                    f"{where}: task {task!r} has {len(ids)} nodes of block {self.block} on its path ({listed}); "
                    "it is gated there, so harden the gate first",
                    tasks=(task,), block=self.block, nodes=tuple(ids),
                )
            if not isinstance(graph.nodes[ids[0]], Block):
                return self.refuse(
                    "skipped",
                    f"{where}: task {task!r} skips block {self.block} ({describe_node(graph, ids[0])}); "
                    "only Block nodes can be fused",
                    tasks=(task,), block=self.block, nodes=(ids[0],),
                )
            found[task] = ids[0]
        sources = {t: graph.nodes[i].srcs[0] for t, i in found.items()}
        if len(set(sources.values())) > 1:
            detail = "; ".join(f"{t} reads {describe_node(graph, s)}" for t, s in sources.items())
            return self.refuse(
                "no-common-source",
                f"{where}: the tasks do not share a source at block {self.block} ({detail}); "
                "fusing needs their Blocks to consume the same node: fuse the earlier blocks first",
                tasks=self.tasks, block=self.block, nodes=tuple(dict.fromkeys(found.values())),
            )
        distinct = sorted(set(found.values()))
        for i in distinct if len(distinct) > 1 else ():
            extra = sorted(graph.served[i] - set(self.tasks), key=graph.tasks.index)
            if extra:
                return self.refuse(
                    "serves-other-tasks",
                    f"{where}: node {describe_node(graph, i)} also serves {extra}, which are not among the tasks "
                    f"{list(self.tasks)}; add them to tasks or split them off first",
                    tasks=tuple(extra), block=self.block, nodes=(i,),
                )
        keys = self._old_keys(graph, found)
        if self.init == "average" and len(keys) > 1:
            mismatch = structure_mismatch([params[k] for k in keys], keys)
            if mismatch is not None:
                return self.refuse("structure-mismatch", mismatch, tasks=self.tasks, block=self.block, nodes=tuple(distinct))
        return found

    def _old_ids(self, found: dict[str, int]) -> list[int]:
        """The distinct nodes to fuse, in the order of the first task reaching each."""
        return sorted(set(found.values()), key=lambda i: min(self.tasks.index(t) for t, j in found.items() if j == i))

    def _old_keys(self, graph: MTGraph, found: dict[str, int]) -> list[str]:
        blocks = (graph.nodes[i] for i in self._old_ids(found))
        return list(dict.fromkeys(b.weights for b in blocks if isinstance(b, Block)))

    def precondition(self, graph: MTGraph, params: ParamStore) -> Refusal | None:
        """The refusal of the first fusion condition that fails (see the module docstring), or None."""
        found = self.match(graph, params)
        return found if isinstance(found, Refusal) else None

    def apply(self, graph: MTGraph, params: ParamStore) -> PassResult:
        """Fuse the tasks' Blocks for the block into one node with new weights."""
        found = self.match(graph, params)
        if isinstance(found, Refusal):
            raise found.error()
        old_ids = self._old_ids(found)
        if len(old_ids) == 1:
            return unchanged(graph, params)
        blocks = {t: graph.nodes[i] for t, i in found.items()}
        old_keys = self._old_keys(graph, found)
        added: dict[str, nn.Module] = {}
        entries: list[LineageEntry] = []
        if len(old_keys) == 1:
            new_key = old_keys[0]  # duplicate call sites of one key: merging them needs no new weights
        else:
            new_key = KeyAllocator(graph, params).new(group_key(self.block, self.tasks, graph.tasks))
            if self.init == "average":
                weights = tuple(1.0 / len(old_keys) for _ in old_keys)
                added[new_key] = average_modules([params[k] for k in old_keys], weights, old_keys)
                entries.append(LineageEntry(new_key, tuple(old_keys), "average", weights))
            else:
                source = blocks[str(self.source_task)]
                if not isinstance(source, Block):
                    raise PassError(f"internal error: {self._where()}: the source task's node is not a Block")
                source_key = source.weights
                added[new_key] = copy.deepcopy(params[source_key])
                entries.append(LineageEntry(new_key, (source_key,), "copy"))
        replaced = set(old_ids)

        def visit(task: str, old_id: int, node: Node, rewriter: PathRewriter) -> Node:
            if old_id in replaced:
                # Sources are translated per task; every fused Block read the same node, so this is one node.
                return Block(block=self.block, weights=new_key, src=node.srcs[0])
            return node

        new_graph = rewrite_paths(graph, visit)
        return make_result(graph, params, new_graph, added, entries)
