"""The gated Safe MTL graph (papers/004 §3.2-3.4), built with the ``split`` and ``gate`` passes.

Starting from the One-Net over the traced backbone, for a gated block range
``start..end``:

1. ``split{block=end+1, groups=t1/t2/...}`` (only when ``end`` is not the last
   block): blocks after the range become each task's own, part of its
   private decoder ``h_t``;
2. one ``gate{task=t, start, end, alpha, mode, tau, private}`` per task: the
   shared chain ``start..end`` is the public encoder ``f_S``, the pass adds a
   private copy ``f_t`` reading the same input and a ``Gate`` node whose
   :class:`~mtgraph.MixGate` computes ``α_t f_S(x) + (1 − α_t) f_t(x)``
   (eq. 1). Blocks before ``start`` stay one shared stem.

With the default range (the whole encoder) this is exactly the paper's
model: public encoder, one private encoder per task, one gate per task, the
heads as private decoders. The pipeline string of these passes reproduces the
structure from ``one_net``.

**Parameterisation of α_t ∈ [0, 1].** Each gate is a 2-input MixGate over
(public, private) holding two logits; α_t = softmax(logits)[0] = P(public),
so α_t is in [0, 1] by construction, for any logits, and the gradient
never dies at a bound (unlike clamping), and α_t f_S + (1 − α_t) f_t is a
convex combination (unlike two independent sigmoids). It is the reference
code's softmax over two logits (notes B.2, D.1), and for the lite variants
the same logits are the Bernoulli log-probabilities that ``gumbel_st`` samples
from (eq. 3-4: one-hot forward, softmax gradient, temperature τ). Internally
there is one convention, α = P(public) (the paper's); the reference code's
lite logit parametrises p_private = 1 − α.

**Decoder-level gates** (``smtl_c``, ``lite_c``): the same graph, with the
gate's module wrapped in a :class:`~.decoder_gate.DecoderGate` and each head
replaced by a :class:`~.decoder_gate.DualHead` (public and private decoder);
see :mod:`.decoder_gate` for why and for the limits.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from mtgraph.errors import ConfigError
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.builders import one_net
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Gate, head_weights
from mtgraph.modules import MixGate
from mtgraph.params import ParamStore
from mtgraph.passes import GatePass, Pass, SplitPass, format_pipeline, run_passes
from mtgraph.strategies.smtl.config import SMTLConfig
from mtgraph.strategies.smtl.decoder_gate import DecoderGate, DualHead

__all__ = ["SMTLNetwork", "smtl_passes", "build_smtl", "gate_nodes", "gate_alpha", "alphas", "PUBLIC", "PRIVATE"]

#: Index of the public source of every SMTL gate (the ``gate`` pass's convention: first source = public).
PUBLIC = 0
#: Index of the private source.
PRIVATE = 1


@dataclass(frozen=True)
class SMTLNetwork:
    """A gated Safe MTL network before training.

    Attributes:
        graph: the gated graph.
        params: its weights (fresh copies of the backbone blocks and heads, new gates).
        pipeline: the pass pipeline that builds ``graph`` from ``one_net(num_blocks, tasks)``.
        block_range: the gated ``(start, end)``.
        gates: task -> weight key of its gate.
    """

    graph: MTGraph
    params: ParamStore
    pipeline: str
    block_range: tuple[int, int]
    gates: dict[str, str]


def smtl_passes(tasks: Sequence[str], num_blocks: int, config: SMTLConfig) -> list[Pass]:
    """The passes that turn ``one_net(num_blocks, tasks)`` into the gated graph of ``config``."""
    start, end = config.block_range(num_blocks)
    passes: list[Pass] = []
    if end < num_blocks - 1 and len(tasks) > 1:
        passes.append(SplitPass(block=end + 1, groups=tuple((t,) for t in tasks)))
    for task in tasks:
        passes.append(
            GatePass(task=task, start=start, end=end, alpha=float(config.alpha), mode=config.mode, tau=float(config.tau),
                     private=config.private_init)
        )
    return passes


def gate_nodes(graph: MTGraph) -> dict[str, int]:
    """Task -> id of its (single) Gate node; ConfigError if a task has none or several."""
    found: dict[str, list[int]] = {t: [] for t in graph.tasks}
    for i, node in enumerate(graph.nodes):
        if isinstance(node, Gate) and node.task in found:
            found[node.task].append(i)
    bad = {t: ids for t, ids in found.items() if len(ids) != 1}
    if bad:
        raise ConfigError(f"a Safe MTL graph has exactly one gate per task; found {bad} (task -> gate node ids)")
    return {t: ids[0] for t, ids in found.items()}


def gate_alpha(module: nn.Module) -> float:
    """α = P(public) of one Safe MTL gate module (a 2-input MixGate or a DecoderGate)."""
    if not isinstance(module, (MixGate, DecoderGate)) or (isinstance(module, MixGate) and module.num_inputs != 2):
        raise ConfigError(f"a Safe MTL gate is a 2-input MixGate or a DecoderGate, got {module!r}")
    return float(module.probabilities()[PUBLIC].detach())


def alphas(graph: MTGraph, params: ParamStore) -> dict[str, float]:
    """α_t = P(public) of every task's gate, read from its module's ``probabilities()``."""
    out: dict[str, float] = {}
    for task, i in gate_nodes(graph).items():
        node = graph.nodes[i]
        assert isinstance(node, Gate)
        out[task] = gate_alpha(params[node.weights])
    return out


def _check_heads(heads: Mapping[str, nn.Module], tasks: Sequence[str]) -> None:
    if not isinstance(heads, Mapping):
        raise ConfigError(f"heads must be a mapping task name -> nn.Module, got {type(heads).__name__}")
    missing = [t for t in tasks if t not in heads]
    if missing:
        raise ConfigError(f"no head for tasks {missing}; heads were given for {list(heads)}")


def build_smtl(backbone: Backbone, heads: Mapping[str, nn.Module], tasks: Sequence[str], config: SMTLConfig) -> SMTLNetwork:
    """Build the gated network of ``config`` over ``backbone`` for ``tasks`` (heads are copied).

    Raises ConfigError for a block range outside the backbone, missing heads
    or a bad config; the ``gate`` pass's PassError for anything it refuses.
    """
    if not isinstance(backbone, Backbone):
        raise ConfigError(
            f"backbone must be a traced mtgraph.Backbone, got {type(backbone).__name__}; "
            "trace it first: mtgraph.trace(model, example_input)"
        )
    if not isinstance(config, SMTLConfig):
        raise ConfigError(f"config must be an SMTLConfig, got {type(config).__name__}")
    tasks = tuple(tasks)
    _check_heads(heads, tasks)
    block_range = config.block_range(backbone.num_blocks)
    passes = smtl_passes(tasks, backbone.num_blocks, config)
    start_graph = one_net(backbone.num_blocks, tasks)
    result = run_passes(start_graph, ParamStore.create(start_graph, backbone, heads), passes)
    graph, params = result.graph, result.params
    gates = {t: _gate_key(graph, i) for t, i in gate_nodes(graph).items()}
    if config.after_decoders:
        add: dict[str, nn.Module] = {}
        for task, key in gates.items():
            mix = params[key]
            assert isinstance(mix, MixGate)
            add[key] = DecoderGate(mix)
            private = params[head_weights(task)]
            add[head_weights(task)] = DualHead(public=copy.deepcopy(private), private=private)
        params = params.updated(add=add)
    return SMTLNetwork(graph, params, format_pipeline(passes), block_range, gates)


def _gate_key(graph: MTGraph, i: int) -> str:
    node = graph.nodes[i]
    assert isinstance(node, Gate)
    return node.weights
