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
from mtgraph.strategies.adashare.routing import PolicyGate
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
    """The One-Net weight key of block ``block`` (``b3.shared``; one weight set for all tasks).

    Args:
        block: block index.
        tasks: every task name of the network.

    Returns:
        The weight key.

    Examples:
        >>> from mtgraph.strategies.adashare import block_key
        >>> block_key(3, ("seg", "depth"))
        'b3.shared'
    """
    return group_key(block, tasks, tasks)


def gate_key(task: str, block: int) -> str:
    """The weight key of task ``task``'s policy gate at block ``block`` (``policy.seg.b3``).

    Args:
        task: task name.
        block: block index.

    Returns:
        The weight key.

    Examples:
        >>> from mtgraph.strategies.adashare import gate_key
        >>> gate_key("seg", 3)
        'policy.seg.b3'
    """
    return f"policy.{task}.b{block}"


def gated_blocks(backbone: Backbone) -> tuple[tuple[int, ...], tuple[Decision, ...]]:
    """Split the backbone's blocks into policy-carrying ones and always-executed ones.

    Returns the indices of the skippable blocks (in order) and one rejected
    :class:`Decision` per block that cannot be skipped, with the frontend's
    reason.

    Args:
        backbone: the traced backbone (:func:`mtgraph.trace`).

    Returns:
        ``(gated block indices, decisions for the always-executed blocks)``.

    Raises:
        ConfigError: no block can be skipped, so there is no policy to learn.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.strategies.adashare import gated_blocks
        >>> backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
        >>> gated, kept = gated_blocks(backbone)
        >>> gated
        (1, 2, 3, 4, 5, 6, 7, 8)
        >>> kept[0].where, kept[0].accepted
        ('block 0 (stem)', False)
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


def make_gates(
    tasks: Sequence[str], gated: Iterable[int], *, tau: float = 5.0, straight_through: bool = False
) -> dict[str, PolicyGate]:
    """One fresh gate per (task, gated block), logits initialised to α = 0.5 (the code's "equal").

    Args:
        tasks: task names.
        gated: indices of the gated blocks.
        tau: initial Gumbel-softmax temperature.
        straight_through: hard gates (one-hot forward, soft gradient) instead
            of the paper's soft Gumbel mixture (see :class:`.PolicyGate`).

    Returns:
        Gate weight key (:func:`gate_key`) -> :class:`~mtgraph.strategies.adashare.PolicyGate`.

    Examples:
        >>> from mtgraph.strategies.adashare import make_gates
        >>> gates = make_gates(["seg", "depth"], [1, 2])
        >>> sorted(gates)
        ['policy.depth.b1', 'policy.depth.b2', 'policy.seg.b1', 'policy.seg.b2']
        >>> gates["policy.seg.b1"].mode, gates["policy.seg.b1"].probabilities().tolist()
        ('gumbel', [0.5, 0.5])
        >>> make_gates(["seg"], [1], straight_through=True)["policy.seg.b1"].mode
        'gumbel_st'
    """
    return {gate_key(t, b): PolicyGate(tau=tau, straight_through=straight_through) for t in tasks for b in gated}


def soft_graph(
    backbone: Backbone,
    tasks: Sequence[str],
    *,
    learnable: Collection[int] | None = None,
    shared_prefix: bool = True,
) -> MTGraph:
    """The relaxed AdaShare network over the One-Net weights, in canonical form.

    Args:
        backbone: the traced backbone; its skippable blocks carry a policy.
        tasks: task names (head order).
        learnable: blocks whose policy is currently learned (the curriculum);
            every other block is emitted as a plain executed block. Default:
            every skippable block. Non-skippable blocks are ignored here.
        shared_prefix: compute every block whose input is the same for
            several tasks once for all of them (the locked prefix, the first
            gated block). False builds the unshared relaxed network, every
            task on its own copy of the computation (same weights; for
            comparisons: its outputs are the same).

    Returns:
        The soft graph: executed blocks, their skips and one gate per (task,
        learnable block), with weight keys :func:`block_key` and :func:`gate_key`.

    Raises:
        ConfigError: the backbone has no skippable block.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.strategies.adashare import soft_graph
        >>> backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
        >>> graph = soft_graph(backbone, ["seg", "depth"], learnable=[8])  # only the last block is gated
        >>> for line in mtgraph.print_graph(graph).splitlines()[9:13]: print(line)
        %9 = block 8 w=b8.shared (%8)               # seg depth
        %10 = skip 8 (%8)                           # seg depth
        %11 = gate seg w=policy.seg.b8 (%9, %10)    # seg
        %12 = gate depth w=policy.depth.b8 (%9, %10) # depth
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
    graph = MTGraph(tuple(nodes))
    # Equal blocks/skips of different tasks (same key, same source) merge: the
    # locked prefix and the first gated block are computed once for all tasks.
    return _merge(graph) if shared_prefix else graph


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

    Args:
        gates: gate weight key -> gate (as from :func:`make_gates`).
        tasks: task names (rows).
        gated: gated block indices (columns).
        trainable: blocks whose logits carry gradients (default: all).

    Returns:
        The ``[len(tasks), len(gated), 2]`` policy tensor.

    Raises:
        ConfigError: a (task, block) has no gate.

    Examples:
        >>> from mtgraph.strategies.adashare import make_gates, policy_logits
        >>> gates = make_gates(["seg", "depth"], [1, 2, 3])
        >>> logits = policy_logits(gates, ["seg", "depth"], [1, 2, 3])
        >>> logits.shape, logits.requires_grad
        (torch.Size([2, 3, 2]), True)
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
    """Copy a ``[T, L, 2]`` policy tensor into the gates (e.g. to restore the best policy).

    Args:
        gates: gate weight key -> gate.
        tasks: task names (rows of ``logits``).
        gated: gated block indices (columns of ``logits``).
        logits: the ``[T, L, 2]`` policy tensor to copy.

    Raises:
        ConfigError: ``logits`` does not have shape ``[len(tasks), len(gated), 2]``.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import make_gates, set_logits
        >>> gates = make_gates(["seg"], [1, 2])
        >>> set_logits(gates, ["seg"], [1, 2], torch.tensor([[[0.0, 0.0], [1.0, -1.0]]]))
        >>> gates["policy.seg.b2"].logits.tolist()
        [1.0, -1.0]
    """
    if tuple(logits.shape) != (len(tasks), len(gated), 2):
        raise ConfigError(f"policy logits must have shape [{len(tasks)}, {len(gated)}, 2], got {list(logits.shape)}")
    with torch.no_grad():
        for k, t in enumerate(tasks):
            for j, b in enumerate(gated):
                gates[gate_key(t, b)].logits.copy_(logits[k, j])


def set_temperature(gates: Iterable[MixGate], tau: float) -> None:
    """Set the Gumbel-softmax temperature of every gate (the annealing schedule's current τ).

    Args:
        gates: the gates to update.
        tau: the new temperature, > 0.

    Raises:
        ConfigError: ``tau`` is not positive.

    Examples:
        >>> from mtgraph.strategies.adashare import make_gates, set_temperature
        >>> gates = make_gates(["seg", "depth"], [1])
        >>> set_temperature(gates.values(), 2.5)
        >>> [float(gate.tau) for gate in gates.values()]
        [2.5, 2.5]
    """
    if not tau > 0:
        raise ConfigError(f"temperature must be > 0, got {tau}")
    for gate in gates:
        gate.get_buffer("tau").fill_(float(tau))

