"""``gate``: give a task a public and a private path over blocks start..end, joined by a Gate (Safe MTL).

The task's current nodes for blocks ``start..end`` stay as its *public* path
(shared with whoever shares them). A *private* path of new Blocks, one per
block of the range and used by this task alone, reads the same input. A
``Gate(task, (public, private), key)`` node whose :class:`~mtgraph.MixGate`
mixes the two replaces the public path's output for this task only:

    out = alpha * public + (1 - alpha) * private,   alpha = P(public)

which is Safe MTL's ``g_t = alpha_t f_S + (1 - alpha_t) f_t`` (papers/004
eq. 1). **Convention: a gate's first source is the public (or "execute")
path, and alpha is the probability of the first source.** ``harden`` keeps the
first source on a tie.

Options:

* ``alpha`` in [0, 1]: the initial P(public);
* ``mode``: the MixGate mode (``softmax`` — Safe MTL's convex combination,
  ``gumbel``, ``gumbel_st`` — the lite L-SMTL choice), ``tau`` its temperature;
* ``private``: how the private path is made — ``fresh`` (copies of the traced
  backbone's blocks: the user's original, e.g. pretrained, weights; lineage
  "fresh"), ``copy`` (copies of the public path's current weights; lineage
  "copy"), or ``skip`` (AdaShare's select-or-skip: the second source is the
  block's shortcut instead of new weights; needs ``start == end``).

Later blocks of the task keep their weight keys and read the gate's output;
where they were shared with other tasks, the task's call sites diverge.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from mtgraph.errors import PassError
from mtgraph.ir.builders import group_key
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Gate, Node
from mtgraph.modules import GATE_MODES, MixGate
from mtgraph.params import ParamStore
from mtgraph.passes.base import Pass
from mtgraph.passes.checks import check_index, check_task_names, describe_node, task_nodes_at, unknown_task
from mtgraph.passes.keys import KeyAllocator
from mtgraph.passes.lineage import LineageEntry
from mtgraph.passes.refusal import Refusal
from mtgraph.passes.result import PassResult, make_result
from mtgraph.passes.rewrite import PathRewriter, rewrite_paths
from mtgraph.passes.skip import not_skippable, skip_node

__all__ = ["GatePass", "PRIVATE_INITS"]

#: How the gate's second path is made.
PRIVATE_INITS = ("fresh", "copy", "skip")


@dataclass(frozen=True)
class GatePass(Pass):
    """Mix task ``task``'s path over blocks ``start..end`` with a private path through a learned gate.

    Args:
        task: the gated task.
        start: first block of the gated range.
        end: last block of the gated range (inclusive).
        alpha: initial probability of the public (first) path, in [0, 1].
        mode: the :class:`~mtgraph.MixGate` mode.
        tau: the gate's temperature, > 0.
        private: how the private path is made: ``fresh``, ``copy`` or ``skip``.

    Raises:
        PassError: bad options (at construction), or a task, range or skip the
            graph does not allow (:meth:`check` returns that refusal).

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.one_net(2, ("S", "D"))
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> from mtgraph.passes import GatePass
        >>> result = GatePass("D", start=1, end=1)(graph, params)
        >>> print(result.graph)
        %0 = input                                  # S D
        %1 = block 0 w=b0.shared (%0)               # S D
        %2 = block 1 w=b1.shared (%1)               # S D
        %3 = block 1 w=b1.D (%1)                    # D
        %4 = gate D w=gate.D.b1 (%2, %3)            # D
        S = head (%2)
        D = head (%4)
        >>> result.params["gate.D.b1"].probabilities().tolist()  # P(public), P(private)
        [0.5, 0.5]
    """

    name = "gate"

    task: str
    start: int
    end: int
    alpha: float = 0.5
    mode: str = "softmax"
    tau: float = 1.0
    private: str = "fresh"

    def __post_init__(self) -> None:
        what = "gate"
        check_task_names((self.task,), "task", what)
        check_index(self.start, "start", what)
        check_index(self.end, "end", what)
        if self.end < self.start:
            raise PassError(f"{what}: the block range start={self.start}..end={self.end} is empty; need start <= end")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise PassError(f"{what}: alpha = P(public path) must be a number in [0, 1], got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if self.mode not in GATE_MODES:
            raise PassError(f"{what}: mode must be one of {list(GATE_MODES)}, got {self.mode!r}")
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not (math.isfinite(self.tau) and self.tau > 0):
            raise PassError(f"{what}: tau must be a positive number, got {self.tau!r}")
        object.__setattr__(self, "tau", float(self.tau))
        if self.private not in PRIVATE_INITS:
            raise PassError(f"{what}: private must be one of {list(PRIVATE_INITS)}, got {self.private!r}")
        if self.private == "skip" and self.start != self.end:
            raise PassError(
                f"{what}: private='skip' gates one block between running it and skipping it; "
                f"got the range {self.start}..{self.end} (use one gate per block)"
            )

    def _where(self) -> str:
        span = f"block {self.start}" if self.start == self.end else f"blocks {self.start}..{self.end}"
        return f"gate task {self.task!r} over {span}"

    def match(self, graph: MTGraph, params: ParamStore) -> list[int] | Refusal:
        """The task's node ids for blocks start..end (one per block: a plain chain), or the first failed condition's refusal."""
        where = self._where()
        refusal = unknown_task(self, graph, self.task, where)
        if refusal is not None:
            return refusal
        n = params.signature.num_blocks
        if self.end >= n:
            return self.refuse(
                "block-out-of-range",
                f"{where}: the range {self.start}..{self.end} is outside the backbone, which has blocks 0..{n - 1}",
                tasks=(self.task,), block=self.end,
            )
        chain: list[int] = []
        for k in range(self.start, self.end + 1):
            ids = task_nodes_at(graph, self.task, k)
            if len(ids) != 1:
                listed = ", ".join(describe_node(graph, i) for i in ids)
                return self.refuse(
                    "gated",
                    f"{where}: the task has {len(ids)} nodes of block {k} ({listed}); it is gated there already",
                    tasks=(self.task,), block=k, nodes=tuple(ids),
                )
            # One node per block means a plain chain: a gate between blocks k-1 and k would put both of
            # its sources, two nodes of block k-1, on the task's path.
            chain.append(ids[0])
        if self.private == "skip":
            if not isinstance(graph.nodes[chain[0]], Block):
                return self.refuse(
                    "skipped",
                    f"{where}: the task already skips block {self.start} ({describe_node(graph, chain[0])})",
                    tasks=(self.task,), block=self.start, nodes=(chain[0],),
                )
            refusal = not_skippable(self, params.signature, self.start, where, self.task)
            if refusal is not None:
                return refusal
        return chain

    def precondition(self, graph: MTGraph, params: ParamStore) -> Refusal | None:
        """Refused for an unknown task, a range outside the backbone or already gated, or an illegal skip."""
        found = self.match(graph, params)
        return found if isinstance(found, Refusal) else None

    def apply(self, graph: MTGraph, params: ParamStore) -> PassResult:
        """Add the private path and the gate; the task's later nodes read the gate."""
        chain = self.match(graph, params)
        if isinstance(chain, Refusal):
            raise chain.error()
        signature = params.signature
        allocate = KeyAllocator(graph, params)
        span = f"b{self.start}" if self.start == self.end else f"b{self.start}-{self.end}"
        gate_key = allocate.new(f"gate.{self.task}.{span}")
        added: dict[str, nn.Module] = {gate_key: MixGate(2, mode=self.mode, tau=self.tau, init_probs=(self.alpha, 1.0 - self.alpha))}
        entries = [LineageEntry(gate_key, (), "fresh")]
        private_keys: list[str] = []
        if self.private != "skip":
            memo: dict[int, Any] = {}
            for k, node_id in zip(range(self.start, self.end + 1), chain):
                key = allocate.new(group_key(k, [self.task], graph.tasks))
                public_key = getattr(graph.nodes[node_id], "weights", None)
                if self.private == "copy" and public_key is not None:
                    added[key] = copy.deepcopy(params[public_key], memo)
                    entries.append(LineageEntry(key, (public_key,), "copy"))
                else:
                    added[key] = params.fresh_block(k, memo)
                    entries.append(LineageEntry(key, (), "fresh"))
                private_keys.append(key)
        first, last = chain[0], chain[-1]
        entry_src: dict[str, int] = {}

        def visit(task: str, old_id: int, node: Node, rewriter: PathRewriter) -> Node | int:
            if task != self.task:
                return node
            if old_id == first:
                entry_src["src"] = node.srcs[0]  # the chain's input, translated for this task
            if old_id != last:
                return node
            public_id = rewriter.add(node)
            if self.private == "skip" and isinstance(node, Block):  # match() checked it is a skippable Block
                other = rewriter.add(skip_node(signature, node))
            else:
                other = entry_src["src"]
                for k, key in zip(range(self.start, self.end + 1), private_keys):
                    other = rewriter.add(Block(block=k, weights=key, src=other))
            return rewriter.add(Gate(task=self.task, srcs=(public_id, other), weights=gate_key))

        return make_result(graph, params, rewrite_paths(graph, visit), added, entries)
