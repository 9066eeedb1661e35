"""Export-time choice of Safe MTL: each task keeps one encoder (L-SMTL, L-SMTL_c; papers/004 §3.3).

Rule (paper and reference code): task t uses the **public** encoder iff
α_t > 0.5, otherwise its private one; **a tie (α_t = 0.5) goes to the
private encoder** (the reference code exports private iff p_private >= 0.5).

The ``harden`` pass keeps a gate's first (public) source iff
P(public) >= ``threshold``. Its default ties to the first source, the
public one, so Safe MTL runs it with the smallest double above 0.5,
:data:`TIE_TO_PRIVATE`: for a probability computed in float32 or float64,
``p >= nextafter(0.5, 1)`` is exactly ``p > 0.5``. Then ``dce`` drops what no
task uses any more: the unchosen private encoders, the public encoder when no
task chose it, and the gates. For the decoder-level variants each
:class:`~.decoder_gate.DualHead` is finally replaced by the decoder on the
chosen side, ``h_{S,t}`` or ``h_t``.

The result has no Gate left, so its cost, its compiled module and its ONNX
file contain the chosen paths only.

One difference to know: a lite network *before* hardening, run in eval mode,
uses MixGate's argmax, which breaks an exact tie towards the first (public)
source. The exported choice is the paper's (private). They can differ only
when the two logits are exactly equal, i.e. for a gate that never trained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from mtgraph.errors import ConfigError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import head_weights
from mtgraph.params import ParamStore
from mtgraph.passes import DCEPass, HardenPass, Lineage, Pass, format_pipeline, run_passes
from mtgraph.strategies.smtl.build import alphas, smtl_passes
from mtgraph.strategies.smtl.config import SMTLConfig
from mtgraph.strategies.smtl.decoder_gate import DualHead

__all__ = ["TIE_TO_PRIVATE", "SIDES", "HardenedSMTL", "choose", "choices", "harden_passes", "lite_passes", "harden_smtl"]

#: ``harden{threshold=...}`` value that keeps the public source iff α > 0.5 (ties go to the private one).
TIE_TO_PRIVATE = math.nextafter(0.5, 1.0)
#: What a lite gate can keep.
SIDES = ("public", "private")


def choose(alpha: float) -> str:
    """``"public"`` iff ``alpha`` > 0.5, else ``"private"`` (the tie goes to the private encoder).

    Args:
        alpha: α_t = P(public) of a task's gate.

    Returns:
        ``"public"`` or ``"private"``.

    Examples:
        >>> from mtgraph.strategies.smtl import choose
        >>> choose(0.7), choose(0.5), choose(0.2)
        ('public', 'private', 'private')
    """
    return "public" if alpha > 0.5 else "private"


def choices(graph: MTGraph, params: ParamStore) -> dict[str, str]:
    """Task -> ``"public"`` or ``"private"``: what each task keeps when hardened.

    Args:
        graph: a Safe MTL graph (one Gate node per task).
        params: its weights.

    Returns:
        Task name -> :func:`choose` of its α_t.

    Raises:
        ConfigError: the graph does not have exactly one gate per task.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import SMTLConfig, build_smtl
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> from mtgraph.strategies.smtl import choices
        >>> net = build_smtl(problem, SMTLConfig())  # α = 0.5: a tie
        >>> choices(net.graph, net.params)
        {'seg': 'private', 'depth': 'private'}
    """
    return {task: choose(alpha) for task, alpha in alphas(graph, params).items()}


def harden_passes() -> list[Pass]:
    """The passes of the export choice: ``harden{threshold=TIE_TO_PRIVATE}``, then ``dce``.

    Returns:
        A fresh list of the two passes.

    Examples:
        >>> from mtgraph.passes import format_pipeline
        >>> from mtgraph.strategies.smtl import harden_passes
        >>> format_pipeline(harden_passes())
        'harden{threshold=0.5000000000000001},dce'
    """
    return [HardenPass(threshold=TIE_TO_PRIVATE), DCEPass()]


def lite_passes(tasks: Sequence[str], num_blocks: int, config: SMTLConfig, chosen: Mapping[str, str]) -> list[Pass]:
    """The passes that build a hardened Safe MTL network with the given choices from ``one_net(num_blocks, tasks)``.

    The gated network of :func:`~.build.smtl_passes` with every gate set to
    its decision (α = 1 for ``"public"``, α = 0 for ``"private"``), then
    :func:`harden_passes`: the string records each task's choice and rebuilds
    exactly the graph :func:`harden_smtl` makes from a trained network whose
    gates chose the same (the choice rule keeps public iff α > 0.5).

    Args:
        tasks: the task names, in order.
        num_blocks: blocks of the traced backbone.
        config: the run's options (block range, mode, τ, private init).
        chosen: task -> ``"public"`` or ``"private"``.

    Returns:
        The gated network's passes, then ``harden`` and ``dce``.

    Raises:
        ConfigError: a task without a choice, or a choice that is neither.

    Examples:
        >>> from mtgraph.passes import format_pipeline
        >>> from mtgraph.strategies.smtl import SMTLConfig, lite_passes
        >>> passes = lite_passes(["a", "b"], 2, SMTLConfig(variant="lite"), {"a": "public", "b": "private"})
        >>> print(format_pipeline(passes).replace("},", "},\\n"))
        gate{task=a,start=0,end=1,alpha=1.0,mode=gumbel_st,tau=0.1,private=fresh},
        gate{task=b,start=0,end=1,alpha=0.0,mode=gumbel_st,tau=0.1,private=fresh},
        harden{threshold=0.5000000000000001},
        dce
    """
    wrong = {t: chosen.get(t) for t in tasks if chosen.get(t) not in SIDES}
    if wrong:
        raise ConfigError(f"lite_passes: every task needs a choice in {list(SIDES)}; got {wrong}")
    alpha = {t: 1.0 if chosen[t] == "public" else 0.0 for t in tasks}
    return smtl_passes(tasks, num_blocks, config, alpha) + harden_passes()


@dataclass(frozen=True)
class HardenedSMTL:
    """A hardened Safe MTL network.

    Attributes:
        graph, params: the network with one encoder per task and no gate.
        choices: task -> ``"public"`` / ``"private"``.
        alphas: task -> α_t the choice was made from.
        pipeline: the pass pipeline that was run (``harden{...},dce``).
        lineage: the passes' lineage (dropped keys), plus, for decoder-level
            variants, nothing new: the kept decoder moves under ``head.<task>``
            unchanged.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import SMTLConfig, build_smtl
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> from mtgraph.strategies.smtl import harden_smtl
        >>> net = build_smtl(problem, SMTLConfig(alpha=0.7))
        >>> hard = harden_smtl(net.graph, net.params)
        >>> hard.choices, hard.pipeline
        ({'seg': 'public', 'depth': 'public'}, 'harden{threshold=0.5000000000000001},dce')
    """

    graph: MTGraph
    params: ParamStore
    choices: dict[str, str]
    alphas: dict[str, float]
    pipeline: str
    lineage: Lineage


def harden_smtl(graph: MTGraph, params: ParamStore) -> HardenedSMTL:
    """Keep one encoder per task (public iff α_t > 0.5), drop the rest; works for every Safe MTL variant.

    The input store is not modified: the result shares the kept modules with it.

    Args:
        graph: a Safe MTL graph of any variant (one Gate node per task).
        params: its weights.

    Returns:
        The :class:`HardenedSMTL` network, its choices and the α they were made from.

    Raises:
        ConfigError: the graph does not have exactly one gate per task.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import SMTLConfig, build_smtl
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> from mtgraph.strategies.smtl import harden_smtl
        >>> net = build_smtl(problem, SMTLConfig(variant="lite", alpha=0.7))
        >>> hard = harden_smtl(net.graph, net.params)
        >>> print(mtgraph.print_graph(hard.graph))  # both tasks kept the public encoder
        %0 = input                                  # seg depth
        %1 = block 0 w=b0.shared (%0)               # seg depth
        %2 = block 1 w=b1.shared (%1)               # seg depth
        seg = head (%2)
        depth = head (%2)
    """
    alpha = alphas(graph, params)
    chosen = {task: choose(a) for task, a in alpha.items()}
    passes = harden_passes()
    result = run_passes(graph, params, passes)
    new_params = result.params
    swap: dict[str, nn.Module] = {}
    for task, side in chosen.items():
        head = new_params[head_weights(task)]
        if isinstance(head, DualHead):
            swap[head_weights(task)] = head.public if side == "public" else head.private
    if swap:
        new_params = new_params.updated(add=swap)
    return HardenedSMTL(result.graph, new_params, chosen, alpha, format_pipeline(passes), result.lineage)
