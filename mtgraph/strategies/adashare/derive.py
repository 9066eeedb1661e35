"""From a learned policy to a discrete architecture (papers/002 §3.3, second stage).

A decision matrix ``U`` (bool ``[T, L]`` over the gated blocks, True =
execute) becomes an IR graph by running passes on the One-Net: one ``skip``
per (task, block) the task skips, then ``cse`` and ``dce``. ``skip`` makes a
task's path diverge where it bypasses a block, and ``cse`` merges equal nodes,
so tasks share computation exactly as long as their decisions agree (common
prefixes are computed once) while every call site of block ``b`` keeps the one
weight key ``b{b}.shared`` (1.0x backbone parameters). The pipeline string
returned with the graph reproduces it from ``one_net``.

Also here: the random policies of the ablations (Random #1 / #2, papers/002
§4.1) and the figure data (policy matrix, task correlation, fig. 3e).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mtgraph.errors import ConfigError
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.builders import one_net
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore
from mtgraph.passes import CSEPass, DCEPass, Pass, SkipPass, format_pipeline, run_passes
from mtgraph.strategies.adashare.policy import execute_probability, policy_correlation
from mtgraph.strategies.result import Decision, Heatmap

__all__ = [
    "harden_policy",
    "policy_decisions",
    "random_policy",
    "policy_figures",
    "policy_pipeline",
    "check_decisions",
]


def check_decisions(decisions: torch.Tensor, tasks: Sequence[str], gated: Sequence[int]) -> torch.Tensor:
    """Validate a decision matrix: bool ``[len(tasks), len(gated)]``; returns it on the CPU.

    Args:
        decisions: bool ``[tasks, gated blocks]`` matrix, True = execute.
        tasks: task names.
        gated: gated block indices.

    Returns:
        ``decisions``, detached, on the CPU.

    Raises:
        ConfigError: not a bool tensor of the right shape.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import check_decisions
        >>> check_decisions(torch.ones(2, 3, dtype=torch.bool), ["seg", "depth"], [1, 2, 3]).shape
        torch.Size([2, 3])
        >>> check_decisions(torch.ones(2, 2, dtype=torch.bool), ["seg", "depth"], [1, 2, 3])
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: policy decisions must have shape [2 tasks, 3 gated blocks], got [2, 2]
    """
    if not isinstance(decisions, torch.Tensor) or decisions.dtype != torch.bool:
        raise ConfigError("policy decisions must be a bool tensor [tasks, gated blocks] (True = execute)")
    if tuple(decisions.shape) != (len(tasks), len(gated)):
        raise ConfigError(
            f"policy decisions must have shape [{len(tasks)} tasks, {len(gated)} gated blocks], got {list(decisions.shape)}"
        )
    return decisions.detach().cpu()


def harden_policy(
    backbone: Backbone,
    heads: Mapping[str, nn.Module],
    tasks: Sequence[str],
    gated: Sequence[int],
    decisions: torch.Tensor,
    *,
    params: ParamStore | None = None,
) -> tuple[MTGraph, ParamStore, str]:
    """The hardened AdaShare network for ``decisions``.

    Returns the graph, its ParamStore and the pass pipeline that made the
    graph from ``one_net``. The store holds fresh copies of the backbone's
    blocks and of ``heads`` (the network is retrained from scratch), or, when
    ``params`` is given, the One-Net modules of ``params`` themselves (no
    copy; ``heads`` is then ignored): the searched weights under the hard
    policy.

    Args:
        backbone: the traced backbone.
        heads: task name -> head module (copied).
        tasks: task names, in the rows' order of ``decisions``.
        gated: gated block indices, in the columns' order of ``decisions``.
        decisions: bool ``[tasks, gated blocks]`` matrix, True = execute.
        params: a One-Net store whose modules the network should use instead of copies.

    Returns:
        ``(graph, params, pipeline)``.

    Raises:
        ConfigError: malformed ``decisions``.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.strategies.adashare import gated_blocks, harden_policy
        >>> backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
        >>> gated, _ = gated_blocks(backbone)  # blocks 1..8
        >>> decisions = torch.ones(2, 8, dtype=torch.bool)
        >>> decisions[1, 6] = False  # depth skips block 7
        >>> heads = {"seg": torch.nn.Identity(), "depth": torch.nn.Identity()}
        >>> graph, params, pipeline = harden_policy(backbone, heads, ["seg", "depth"], gated, decisions)
        >>> pipeline
        'skip{task=depth,block=7},cse,dce'
        >>> print(mtgraph.print_graph(graph).splitlines()[9])
        %9 = skip 7 w=b7.shared (%7)                # depth
    """
    tasks = tuple(tasks)
    u = check_decisions(decisions, tasks, gated)
    start = one_net(backbone.num_blocks, tasks)
    if params is None:
        params = ParamStore.create(start, backbone, heads)
    else:
        params = ParamStore(backbone, {k: params[k] for k in start.weight_keys()})
    passes = _policy_passes(tasks, gated, u)
    result = run_passes(start, params, passes)
    return result.graph, result.params, format_pipeline(passes)


def _policy_passes(tasks: Sequence[str], gated: Sequence[int], decisions: torch.Tensor) -> list[Pass]:
    passes: list[Pass] = [
        SkipPass(task=t, block=b) for k, t in enumerate(tasks) for j, b in enumerate(gated) if not bool(decisions[k, j])
    ]
    return [*passes, CSEPass(), DCEPass()]


def policy_pipeline(tasks: Sequence[str], gated: Sequence[int], decisions: torch.Tensor) -> str:
    """The pass pipeline that turns the One-Net into the network of ``decisions`` (a ``skip`` per skipped gate).

    Args:
        tasks: task names, in the rows' order of ``decisions``.
        gated: gated block indices, in the columns' order of ``decisions``.
        decisions: bool ``[tasks, gated blocks]`` matrix, True = execute.

    Returns:
        The pipeline string (``skip{...},...,cse,dce``).

    Raises:
        ConfigError: malformed ``decisions``.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import policy_pipeline
        >>> policy_pipeline(["seg", "depth"], [1, 2], torch.tensor([[True, True], [False, True]]))
        'skip{task=depth,block=1},cse,dce'
    """
    return format_pipeline(_policy_passes(tasks, gated, check_decisions(decisions, tasks, gated)))


def policy_decisions(
    backbone: Backbone,
    tasks: Sequence[str],
    gated: Sequence[int],
    decisions: torch.Tensor,
    logits: torch.Tensor | None = None,
) -> tuple[Decision, ...]:
    """One Decision per (task, gated block): skipped (accepted) or executed, with α when logits are given.

    Args:
        backbone: the traced backbone (names the blocks).
        tasks: task names.
        gated: gated block indices.
        decisions: bool ``[tasks, gated blocks]`` matrix, True = execute.
        logits: the policy logits ``[T, L, 2]`` the decisions came from, if any.

    Returns:
        ``len(tasks) * len(gated)`` decisions, task-major.

    Raises:
        ConfigError: malformed ``decisions`` or ``logits``.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.strategies.adashare import gated_blocks, policy_decisions
        >>> backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
        >>> gated, _ = gated_blocks(backbone)  # blocks 1..8
        >>> decisions = torch.ones(2, 8, dtype=torch.bool)
        >>> decisions[1, 6] = False
        >>> found = policy_decisions(backbone, ["seg", "depth"], gated, decisions, torch.zeros(2, 8, 2))
        >>> len(found), found[14].where, found[14].what, found[14].accepted
        (16, 'block 7 (layer4.0), task depth', 'skip (run its projection shortcut)', True)
    """
    u = check_decisions(decisions, tasks, gated)
    alpha = execute_probability(logits.detach().cpu()) if logits is not None else None
    out = []
    for k, t in enumerate(tasks):
        for j, b in enumerate(gated):
            info = backbone.blocks[b]
            p = float(alpha[k, j]) if alpha is not None else None
            why = f"execute probability α = {p:.3f}" if p is not None else "given policy"
            skip = not bool(u[k, j])
            shortcut = "its projection shortcut" if info.shortcut.has_weights else "the identity"
            out.append(
                Decision(
                    where=f"block {b} ({info.name}), task {t}",
                    what=f"skip (run {shortcut})" if skip else "execute",
                    accepted=skip,
                    reason=f"{why}; {'< 0.5' if skip else '>= 0.5'} decides" if p is not None else why,
                    data={"task": t, "block": b, "alpha": p, "execute": not skip},
                )
            )
    return tuple(out)


def random_policy(
    reference: torch.Tensor,
    *,
    per_task: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random decision matrix skipping as many blocks as ``reference`` (papers/002 Random #1 / #2).

    ``per_task=True`` (Random #2) keeps every task's number of skipped blocks;
    ``per_task=False`` (Random #1) keeps only the total, spread over tasks at
    random. Which blocks are skipped is uniform at random.

    Args:
        reference: bool ``[tasks, gated blocks]`` decisions (e.g. the learned ones).
        per_task: keep each task's number of skips (else only the total).
        generator: torch random generator for reproducible draws.

    Returns:
        A bool matrix of the same shape, True = execute.

    Raises:
        ConfigError: ``reference`` is not a 2-d bool tensor.

    Examples:
        >>> import torch
        >>> from mtgraph.strategies.adashare import random_policy
        >>> reference = torch.tensor([[True, False, False], [True, True, True]])
        >>> drawn = random_policy(reference, generator=torch.Generator().manual_seed(0))
        >>> (~drawn).sum(dim=1).tolist()  # each task skips as many blocks as in the reference
        [2, 0]
        >>> int((~random_policy(reference, per_task=False)).sum())  # Random #1: only the total is kept
        2
    """
    if not isinstance(reference, torch.Tensor) or reference.dtype != torch.bool or reference.ndim != 2:
        raise ConfigError("reference decisions must be a bool tensor [tasks, gated blocks]")
    ref = reference.detach().cpu()
    out = torch.ones_like(ref)
    if per_task:
        for k in range(ref.shape[0]):
            skips = int((~ref[k]).sum())
            order = torch.randperm(ref.shape[1], generator=generator)
            out[k, order[:skips]] = False
        return out
    skips = int((~ref).sum())
    order = torch.randperm(ref.numel(), generator=generator)
    flat = out.reshape(-1)
    flat[order[:skips]] = False
    return flat.reshape(ref.shape)


def policy_figures(
    logits: torch.Tensor, tasks: Sequence[str], gated: Sequence[int], backbone: Backbone
) -> dict[str, Heatmap]:
    """The policy as report figures.

    * ``"policy_matrix"``: the probability that each task executes each gated
      block (rows = blocks ``"3 layer2.0"``, columns = tasks);
    * ``"task_correlation"``: cosine similarity of the tasks' execute
      probabilities (papers/002 fig. 3e).

    Args:
        logits: the policy logits ``[T, L, 2]``.
        tasks: task names.
        gated: gated block indices.
        backbone: the traced backbone (names the blocks).

    Returns:
        ``{"policy_matrix": Heatmap, "task_correlation": Heatmap}``.

    Raises:
        ConfigError: malformed ``logits``.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.strategies.adashare import gated_blocks, policy_figures
        >>> backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
        >>> gated, _ = gated_blocks(backbone)  # blocks 1..8
        >>> figures = policy_figures(torch.zeros(2, 8, 2), ["seg", "depth"], gated, backbone)
        >>> matrix = figures["policy_matrix"]
        >>> matrix.rows[0], matrix.columns, matrix.values[0]
        ('1 layer1.0', ('seg', 'depth'), (0.5, 0.5))
        >>> figures["task_correlation"].is_square
        True
    """
    alpha = execute_probability(logits.detach().cpu().double())  # [T, L]
    rows = tuple(f"{b} {backbone.blocks[b].name}" for b in gated)
    corr = policy_correlation(logits.detach().cpu().double())
    return {
        "policy_matrix": Heatmap("P(execute) per gated block and task", rows, tuple(tasks),
                                 tuple(tuple(row) for row in alpha.T.tolist())),
        "task_correlation": Heatmap.from_matrix("task correlation (cosine of execute probabilities)", tasks, corr),
    }
