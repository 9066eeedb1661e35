"""``split``: the Block that several tasks share at block b becomes one copy per task subset.

``split(block=b, groups=((S, E), (D,)))`` finds the one Block node of block
``b`` that every listed task reaches; the groups must cover exactly the tasks
that node serves (no task missing, none extra), else the pass refuses
(:meth:`SplitPass.check` returns the reason; calling the pass raises it as a
PassError).

Semantics (branched networks, papers/001): **the subsets' paths diverge from
block b on.** Every node from block ``b`` downward that depends on the split
node and serves tasks of more than one subset is duplicated per subset, and
each duplicate gets its own deep copy of the weights under a new key named by
the ``group_key`` convention (``b3.S+E``, ``b3.D``). Copies made for one
subset share one deepcopy memo, so a key tied between two call sites inside
a subset stays tied in that subset's copy. Nodes already used by a single
subset are only rewired. Because every copy is exact, the compiled outputs
are bit-identical right after a split; training then moves the copies apart.

The alternative — copying only block b and keeping later blocks as shared
*weights* called from per-subset sites — would also be output-identical,
but it is AdaShare's weight tying, not a split: ``skip`` produces it where
it is wanted.

A split into one group is a no-op. ``split`` and ``fuse`` are inverses on
trees: fusing the Blocks of a block and splitting them back into the same
groups returns the same graph (keys included, for ``group_key``-named keys).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from mtgraph.errors import PassError
from mtgraph.ir.builders import group_key
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Gate, Head, Node, Skip
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
from mtgraph.passes.keys import KeyAllocator
from mtgraph.passes.lineage import LineageEntry
from mtgraph.passes.refusal import Refusal
from mtgraph.passes.result import PassResult, make_result, unchanged
from mtgraph.passes.rewrite import PathRewriter, rewrite_paths

__all__ = ["SplitPass", "descendants"]


def descendants(graph: MTGraph, root: int) -> list[int]:
    """``root`` and every node that depends on it, heads excluded, in node order."""
    found = {root}
    for i in range(root + 1, len(graph.nodes)):
        if not isinstance(graph.nodes[i], Head) and any(s in found for s in graph.nodes[i].srcs):
            found.add(i)
    return sorted(found)


def _with_weights(node: Node, key: str) -> Node:
    if isinstance(node, Block):
        return Block(block=node.block, weights=key, src=node.src)
    if isinstance(node, Skip):
        return Skip(block=node.block, src=node.src, weights=key)
    if isinstance(node, Gate):
        return Gate(task=node.task, srcs=node.srcs, weights=key)
    raise PassError(f"internal error: {type(node).__name__} nodes have no weights to copy")


@dataclass(frozen=True)
class SplitPass(Pass):
    """Split the Block the ``groups``' tasks share at block ``block`` into one copy per group (and every later block).

    Args:
        block: the backbone block whose shared node is split.
        groups: disjoint task groups covering every task the node serves.

    Raises:
        PassError: bad options (at construction), or groups that do not match
            the shared node (see the module docstring).

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ("S", "D"))  # every block shared
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> from mtgraph.passes import SplitPass
        >>> result = SplitPass(1, (("S",), ("D",)))(graph, params)
        >>> print(result.graph)
        %0 = input                                  # S D
        %1 = block 0 w=b0.shared (%0)               # S D
        %2 = block 1 w=b1.S (%1)                    # S
        %3 = block 1 w=b1.D (%1)                    # D
        S = head (%2)
        D = head (%3)
        >>> print(result.lineage)
        b1.S <- copy(b1.shared)
        b1.D <- copy(b1.shared)
        b1.shared <- dropped
    """

    name = "split"

    block: int
    groups: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        what = "split"
        check_index(self.block, "block", what)
        if isinstance(self.groups, str) or not hasattr(self.groups, "__iter__"):
            raise PassError(f"{what}: groups must be a sequence of task groups such as (('S', 'E'), ('D',)), got {self.groups!r}")
        groups = tuple(check_task_names(g, "each group", what) for g in self.groups)
        if not groups:
            raise PassError(f"{what}: groups is empty; give at least one group of tasks")
        seen = [t for g in groups for t in g]
        repeated = sorted({t for t in seen if seen.count(t) > 1})
        if repeated:
            raise PassError(f"{what}: tasks {repeated} are in more than one group; the groups must be disjoint")
        object.__setattr__(self, "groups", groups)

    def _where(self) -> str:
        return f"split block {self.block} into {'/'.join('+'.join(g) for g in self.groups)}"

    def match(self, graph: MTGraph, params: ParamStore) -> int | Refusal:
        """The one Block node of the block that the groups' tasks share, or the refusal of the first failed condition.

        ``graph`` must verify against ``params`` (as :meth:`check` ensures).
        """
        where = self._where()
        tasks = [t for g in self.groups for t in g]
        for task in tasks:
            refusal = unknown_task(self, graph, task, where)
            if refusal is not None:
                return refusal
        refusal = block_outside(self, params.signature, self.block, where)
        if refusal is not None:
            return refusal
        found: dict[str, int] = {}
        for task in tasks:
            ids = task_nodes_at(graph, task, self.block)
            if len(ids) != 1:
                listed = ", ".join(describe_node(graph, i) for i in ids)
                return self.refuse(
                    "gated",
                    f"{where}: task {task!r} has {len(ids)} nodes of block {self.block} ({listed}); harden its gate first",
                    tasks=(task,), block=self.block, nodes=tuple(ids),
                )
            found[task] = ids[0]
        distinct = sorted(set(found.values()))
        if len(distinct) > 1:
            detail = "; ".join(f"{t}: {describe_node(graph, i)}" for t, i in found.items())
            return self.refuse(
                "not-shared",
                f"{where}: the tasks do not share one node at block {self.block} ({detail}); "
                "split applies to a single shared Block",
                tasks=tuple(tasks), block=self.block, nodes=tuple(distinct),
            )
        node_id = distinct[0]
        if not isinstance(graph.nodes[node_id], Block):
            return self.refuse(
                "skipped",
                f"{where}: {describe_node(graph, node_id)} is a skip, not a Block; there are no weights to split",
                tasks=tuple(tasks), block=self.block, nodes=(node_id,),
            )
        order = graph.tasks.index
        served = sorted(graph.served[node_id], key=order)
        missing = [t for t in served if t not in tasks]
        if missing:
            return self.refuse(
                "groups-incomplete",
                f"{where}: the groups must cover exactly the tasks node {describe_node(graph, node_id)} serves, "
                f"{served}; missing {missing}",
                tasks=tuple(missing), block=self.block, nodes=(node_id,),
            )
        return node_id

    def precondition(self, graph: MTGraph, params: ParamStore) -> Refusal | None:
        """The refusal of the first split condition that fails (see the module docstring), or None."""
        found = self.match(graph, params)
        return found if isinstance(found, Refusal) else None

    def apply(self, graph: MTGraph, params: ParamStore) -> PassResult:
        """Duplicate the shared node, and every later node serving several groups, once per group."""
        root = self.match(graph, params)
        if isinstance(root, Refusal):
            raise root.error()
        if len(self.groups) == 1:
            return unchanged(graph, params)
        group_of = {t: k for k, g in enumerate(self.groups) for t in g}
        below = descendants(graph, root)
        # Which (key, group) pairs need their own copy, and which tasks each copy will serve.
        copies: dict[tuple[str, int], set[str]] = {}
        owner: dict[str, Node] = {}
        for j in below:
            node = graph.nodes[j]
            key = getattr(node, "weights", None)
            touched = {group_of[t] for t in graph.served[j]}
            if key is None or len(touched) < 2:
                continue
            owner.setdefault(key, node)
            for g in touched:
                copies.setdefault((key, g), set()).update(t for t in graph.served[j] if group_of[t] == g)
        allocate = KeyAllocator(graph, params)
        memos: dict[int, dict[int, Any]] = {}
        new_keys: dict[tuple[str, int], str] = {}
        added = {}
        entries: list[LineageEntry] = []
        for (key, g), served in sorted(copies.items(), key=lambda kv: (graph.weight_keys().index(kv[0][0]), kv[0][1])):
            node = owner[key]
            members = [t for t in graph.tasks if t in served]
            if isinstance(node, (Block, Skip)):
                base = group_key(node.block, members, graph.tasks)
            else:  # a Gate: the only other kind of node with weights below a Block
                base = f"{key}.{'+'.join(members)}"
            new_key = allocate.new(base)
            new_keys[(key, g)] = new_key
            added[new_key] = copy.deepcopy(params[key], memos.setdefault(g, {}))
            entries.append(LineageEntry(new_key, (key,), "copy"))
        inside = set(below)

        def visit(task: str, old_id: int, node: Node, rewriter: PathRewriter) -> Node:
            key = getattr(node, "weights", None)
            if old_id in inside and key is not None and (key, group_of[task]) in new_keys:
                return _with_weights(node, new_keys[(key, group_of[task])])
            return node

        return make_result(graph, params, rewrite_paths(graph, visit), added, entries)
