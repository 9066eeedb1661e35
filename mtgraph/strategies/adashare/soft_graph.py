"""AdaShare's relaxed network as an IR graph: one Gumbel gate per (task, block).

The One-Net (papers/002 §3.1): every task runs the same backbone weights, and
for every skippable block ``b`` and task ``t`` a two-way gate mixes executing
the block with skipping it (eq. 2-3)::

    %i = block b w=b{b}.shared (prev_t)
    %j = skip b [w=b{b}.shared] (prev_t)          # identity or projection shortcut
    %k = gate t w=policy.t.b{b} (%i, %j)          # MixGate(mode="gumbel")

Gate source order is (execute, skip), matching ``policy.EXECUTE = 0`` and
``policy.SKIP = 1``, so a gate's two logits *are* the (task, block) row of the
policy tensor ``[T, L, 2]``; :func:`policy_logits` stacks them (differentiably)
for the sparsity and sharing losses. Keeping one :class:`~mtgraph.MixGate` per
gate (rather than one policy module read by every gate) keeps the IR honest:
each gate node names its own parameters, the graph compiles, costs and saves
like any other, and the policy optimiser simply takes the gates' parameters.

**Which blocks carry a policy** is read from the traced graph
(``BlockInfo.shortcut``): identity and projection blocks are gated, a block
whose shortcut is ``none`` (the stem, a shape-changing block without a
residual sum) always executes and is reported by a :class:`Decision`.

**Curriculum in the graph.** A block whose policy is still locked is forced
to execute (the authors' code pads locked blocks with a one-hot select), so
:func:`soft_graph` emits it as a plain shared ``Block`` with no gate. That is
exact, it leaves locked logits out of the computation (they get no gradient
and cannot move), and canonical-form CSE computes the locked prefix once for
all tasks instead of once per task (notes §B.5 item 15).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import torch

from mtgraph.errors import ConfigError
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.builders import group_key
from mtgraph.ir.canonical import canonicalize, merge_duplicates
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Block, Gate, Head, Input, Node, Skip
from mtgraph.modules import MixGate
from mtgraph.strategies.result import Decision

__all__ = [
    "gated_blocks",
    "gate_key",
    "block_key",
    "make_gates",
    "soft_graph",
    "policy_logits",
    "set_temperature",
    "set_logits",
]


def block_key(block: int, tasks: Sequence[str]) -> str:
    """The One-Net weight key of block ``block`` (``b3.shared``; one weight set for all tasks)."""
    return group_key(block, tasks, tasks)


def gate_key(task: str, block: int) -> str:
    """The weight key of task ``task``'s policy gate at block ``block`` (``policy.seg.b3``)."""
    return f"policy.{task}.b{block}"


def gated_blocks(backbone: Backbone) -> tuple[tuple[int, ...], tuple[Decision, ...]]:
    """Split the backbone's blocks into policy-carrying ones and always-executed ones.

    Returns the indices of the skippable blocks (in order) and one rejected
    :class:`Decision` per block that cannot be skipped, with the frontend's
    reason.

    Raises:
        ConfigError: no block can be skipped, so there is no policy to learn.
    """
    gated: list[int] = []
    kept: list[Decision] = []
    for info in backbone.blocks:
        if info.skippable:
            gated.append(info.index)
            continue
        kept.append(
            Decision(
                where=f"block {info.index} ({info.name})",
                what="gate select-or-skip",
                accepted=False,
                reason=f"kept for every task: the block cannot be skipped ({info.shortcut.reason or 'no shortcut'}); "
                f"shapes {list(info.in_shape)} -> {list(info.out_shape)}",
                data={"block": info.index, "shortcut": info.shortcut.kind},
            )
        )
    if not gated:
        names = ", ".join(f"{b.index} ({b.name}): {b.shortcut.reason or 'no shortcut'}" for b in backbone.blocks)
        raise ConfigError(
            "AdaShare needs at least one skippable block (a residual block or a shape-preserving block), "
            f"but none of the backbone's {backbone.num_blocks} blocks can be skipped: {names}"
        )
    return tuple(gated), tuple(kept)


def make_gates(tasks: Sequence[str], gated: Iterable[int], *, tau: float = 5.0) -> dict[str, MixGate]:
    """One fresh Gumbel gate per (task, gated block), logits initialised to α = 0.5 (the code's "equal")."""
    return {
        gate_key(t, b): MixGate(2, mode="gumbel", tau=tau, init_probs=(0.5, 0.5)) for t in tasks for b in gated
    }


def soft_graph(
    backbone: Backbone,
    tasks: Sequence[str],
    *,
    learnable: Collection[int] | None = None,
) -> MTGraph:
    """The relaxed AdaShare network over the One-Net weights, in canonical form.

    Args:
        backbone: the traced backbone; its skippable blocks carry a policy.
        tasks: task names (head order).
        learnable: blocks whose policy is currently learned (the curriculum);
            every other block is emitted as a plain executed block. Default:
            every skippable block. Non-skippable blocks are ignored here.

    Raises:
        ConfigError: the backbone has no skippable block.
    """
    tasks = tuple(tasks)
    gated, _ = gated_blocks(backbone)
    learn = set(gated) if learnable is None else set(learnable) & set(gated)
    nodes: list[Node] = [Input()]
    current = {t: 0 for t in tasks}
    for info in backbone.blocks:
        b = info.index
        key = block_key(b, tasks)
        for t in tasks:
            nodes.append(Block(block=b, weights=key, src=current[t]))
            if b not in learn:
                current[t] = len(nodes) - 1
                continue
            execute = len(nodes) - 1
            # A Skip names the weights whose projection it runs; None for the identity.
            nodes.append(Skip(block=b, src=current[t], weights=key if info.shortcut.has_weights else None))
            nodes.append(Gate(task=t, srcs=(execute, len(nodes) - 1), weights=gate_key(t, b)))
            current[t] = len(nodes) - 1
    nodes.extend(Head(task=t, src=current[t]) for t in tasks)
    # Equal blocks/skips of different tasks (same key, same source) merge: the
    # locked prefix and the first gated block are computed once for all tasks.
    return _merge(MTGraph(tuple(nodes)))


def _merge(graph: MTGraph) -> MTGraph:
    return canonicalize(merge_duplicates(graph))


def policy_logits(
    gates: Mapping[str, MixGate],
    tasks: Sequence[str],
    gated: Sequence[int],
    *,
    trainable: Collection[int] | None = None,
) -> torch.Tensor:
    """The policy tensor ``[T, L, 2]`` (index 0 execute, 1 skip) stacked from the gates' logits.

    Differentiable: a loss on it sends gradients into each gate's ``logits``.
    With ``trainable``, the logits of the other blocks enter as constants
    (detached), so a loss leaves their gradient untouched (None).
    """
    keep = set(gated) if trainable is None else set(trainable)
    try:
        rows = [
            torch.stack([gates[gate_key(t, b)].logits if b in keep else gates[gate_key(t, b)].logits.detach() for b in gated])
            for t in tasks
        ]
    except KeyError as exc:
        raise ConfigError(f"no policy gate {exc.args[0]!r}; gates exist for {sorted(gates)}") from None
    # Gate sources are ordered (execute, skip): logits[..., EXECUTE] is the execute logit.
    return torch.stack(rows)


def set_logits(gates: Mapping[str, MixGate], tasks: Sequence[str], gated: Sequence[int], logits: torch.Tensor) -> None:
    """Copy a ``[T, L, 2]`` policy tensor into the gates (e.g. to restore the best policy)."""
    if tuple(logits.shape) != (len(tasks), len(gated), 2):
        raise ConfigError(f"policy logits must have shape [{len(tasks)}, {len(gated)}, 2], got {list(logits.shape)}")
    with torch.no_grad():
        for k, t in enumerate(tasks):
            for j, b in enumerate(gated):
                gates[gate_key(t, b)].logits.copy_(logits[k, j])


def set_temperature(gates: Iterable[MixGate], tau: float) -> None:
    """Set the Gumbel-softmax temperature of every gate (the annealing schedule's current τ)."""
    if not tau > 0:
        raise ConfigError(f"temperature must be > 0, got {tau}")
    for gate in gates:
        gate.get_buffer("tau").fill_(float(tau))

