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
from mtgraph.ir.builders import one_net
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Gate, head_weights
from mtgraph.modules import MixGate
from mtgraph.params import ParamStore
from mtgraph.passes import GatePass, Pass, SplitPass, format_pipeline, run_passes
from mtgraph.problem import Problem
from mtgraph.strategies.smtl.config import SMTLConfig
from mtgraph.strategies.smtl.decoder_gate import DecoderGate, DualHead

__all__ = [
    "SMTLNetwork", "smtl_passes", "build_smtl", "decoder_level", "gate_nodes", "gate_keys", "gate_alpha", "alphas",
    "PUBLIC", "PRIVATE",
]

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

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import SMTLConfig, build_smtl
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> net = build_smtl(problem, SMTLConfig())
        >>> net.block_range, net.gates
        ((0, 1), {'seg': 'gate.seg.b0-1', 'depth': 'gate.depth.b0-1'})
    """

    graph: MTGraph
    params: ParamStore
    pipeline: str
    block_range: tuple[int, int]
    gates: dict[str, str]


def smtl_passes(
    tasks: Sequence[str], num_blocks: int, config: SMTLConfig, alpha: Mapping[str, float] | None = None
) -> list[Pass]:
    """The passes that turn ``one_net(num_blocks, tasks)`` into the gated graph of ``config``.

    Args:
        tasks: the task names, in order.
        num_blocks: blocks of the traced backbone.
        config: the run's options (variant, block range, initial α, ...).
        alpha: task -> initial α_t of its gate (default: ``config.alpha`` for every task).


    Returns:
        A ``split`` pass when the gated range ends before the last block, then one ``gate`` pass per task.

    Raises:
        ConfigError: the config's block range does not fit ``num_blocks``.

    Examples:
        >>> from mtgraph.passes import format_pipeline
        >>> from mtgraph.strategies.smtl import SMTLConfig, smtl_passes
        >>> print(format_pipeline(smtl_passes(["a", "b"], 3, SMTLConfig(end=1))).replace("},", "},\\n"))
        split{block=2,groups=a/b},
        gate{task=a,start=0,end=1,alpha=0.5,mode=softmax,tau=0.1,private=fresh},
        gate{task=b,start=0,end=1,alpha=0.5,mode=softmax,tau=0.1,private=fresh}
    """
    start, end = config.block_range(num_blocks)
    passes: list[Pass] = []
    if end < num_blocks - 1 and len(tasks) > 1:
        passes.append(SplitPass(block=end + 1, groups=tuple((t,) for t in tasks)))
    for task in tasks:
        initial = config.alpha if alpha is None else alpha[task]
        passes.append(
            GatePass(task=task, start=start, end=end, alpha=float(initial), mode=config.mode, tau=float(config.tau),
                     private=config.private_init)
        )
    return passes


def gate_nodes(graph: MTGraph) -> dict[str, int]:
    """Task -> id of its (single) Gate node; ConfigError if a task has none or several.

    Args:
        graph: a Safe MTL graph (one Gate node per task).

    Returns:
        Task name -> index of its Gate node in ``graph.nodes``.

    Raises:
        ConfigError: a task has no Gate node, or more than one.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import SMTLConfig, build_smtl
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> from mtgraph.strategies.smtl import gate_nodes
        >>> net = build_smtl(problem, SMTLConfig())
        >>> gate_nodes(net.graph)
        {'seg': 7, 'depth': 8}
        >>> gate_nodes(mtgraph.ir.one_net(2, ("a", "b")))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: a Safe MTL graph has exactly one gate per task; found {'a': [], 'b': []} ...
    """
    found: dict[str, list[int]] = {t: [] for t in graph.tasks}
    for i, node in enumerate(graph.nodes):
        if isinstance(node, Gate) and node.task in found:
            found[node.task].append(i)
    bad = {t: ids for t, ids in found.items() if len(ids) != 1}
    if bad:
        raise ConfigError(f"a Safe MTL graph has exactly one gate per task; found {bad} (task -> gate node ids)")
    return {t: ids[0] for t, ids in found.items()}


def gate_alpha(module: nn.Module) -> float:
    """α = P(public) of one Safe MTL gate module (a 2-input MixGate or a DecoderGate).

    Args:
        module: the gate's module from the ParamStore.

    Returns:
        α = P(public), a float in [0, 1].

    Raises:
        ConfigError: ``module`` is not a Safe MTL gate.

    Examples:
        >>> from mtgraph import MixGate
        >>> from mtgraph.strategies.smtl import gate_alpha
        >>> round(gate_alpha(MixGate(2, init_probs=[0.7, 0.3])), 4)
        0.7
        >>> gate_alpha(MixGate(3))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: a Safe MTL gate is a 2-input MixGate or a DecoderGate, got MixGate(...)
    """
    if not isinstance(module, (MixGate, DecoderGate)) or (isinstance(module, MixGate) and module.num_inputs != 2):
        raise ConfigError(f"a Safe MTL gate is a 2-input MixGate or a DecoderGate, got {module!r}")
    return float(module.probabilities()[PUBLIC].detach())


def alphas(graph: MTGraph, params: ParamStore) -> dict[str, float]:
    """α_t = P(public) of every task's gate, read from its module's ``probabilities()``.

    Args:
        graph: a Safe MTL graph (one Gate node per task).
        params: its weights.

    Returns:
        Task name -> α_t.

    Raises:
        ConfigError: the graph does not have exactly one gate per task, or a gate's module is not a Safe MTL gate.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import SMTLConfig, build_smtl
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> from mtgraph.strategies.smtl import alphas
        >>> net = build_smtl(problem, SMTLConfig(alpha=0.7))
        >>> {task: round(a, 4) for task, a in alphas(net.graph, net.params).items()}
        {'seg': 0.7, 'depth': 0.7}
    """
    return {task: gate_alpha(params[key]) for task, key in gate_keys(graph).items()}


def gate_keys(graph: MTGraph) -> dict[str, str]:
    """Task -> weight key of its gate (the keys a retraining keeps frozen to hold the gates fixed).

    Args:
        graph: a Safe MTL graph (one Gate node per task).

    Returns:
        Task name -> the weight key of its Gate node.

    Raises:
        ConfigError: a task has no Gate node, or more than one.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import SMTLConfig, build_smtl, gate_keys
        >>> net = build_smtl(mtgraph.toy_problem(("seg", "depth")), SMTLConfig())
        >>> gate_keys(net.graph)
        {'seg': 'gate.seg.b0-1', 'depth': 'gate.depth.b0-1'}
    """
    out: dict[str, str] = {}
    for task, i in gate_nodes(graph).items():
        node = graph.nodes[i]
        assert isinstance(node, Gate)  # gate_nodes returns Gate nodes only
        out[task] = node.weights
    return out


def decoder_level(params: ParamStore, gates: Mapping[str, str]) -> ParamStore:
    """The modules of SMTL_c / L-SMTL_c (§3.4) on the graph of SMTL: the one step the pipeline cannot express.

    Each gate's :class:`~mtgraph.MixGate` is wrapped in a
    :class:`~.decoder_gate.DecoderGate` (kept, not copied: it holds α_t) and
    each task's head becomes a :class:`~.decoder_gate.DualHead` whose private
    decoder is the head and whose public decoder starts as a copy of it. The
    graph is unchanged: the ``_c`` variants share SMTL's graph, and the
    difference lives in these module types (see :mod:`.decoder_gate`).

    Args:
        params: the weights of an SMTL graph built by :func:`smtl_passes`.
        gates: task -> weight key of its gate (:func:`gate_keys`).

    Returns:
        A new store with the decoder-level modules (``params`` is not modified).

    Raises:
        ConfigError: a gate key that does not hold a 2-input MixGate.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import SMTLConfig, build_smtl, decoder_level, gate_keys
        >>> net = build_smtl(mtgraph.toy_problem(("seg", "depth")), SMTLConfig())
        >>> wrapped = decoder_level(net.params, gate_keys(net.graph))
        >>> type(wrapped["gate.seg.b0-1"]).__name__, type(wrapped["head.seg"]).__name__
        ('DecoderGate', 'DualHead')
    """
    add: dict[str, nn.Module] = {}
    for task, key in gates.items():
        mix = params[key]
        if not isinstance(mix, MixGate):
            raise ConfigError(f"decoder_level: the gate of task {task!r} at {key!r} must be a MixGate, got {mix!r}")
        add[key] = DecoderGate(mix)
        private = params[head_weights(task)]
        add[head_weights(task)] = DualHead(public=copy.deepcopy(private), private=private)
    return params.updated(add=add)


def build_smtl(problem: Problem, config: SMTLConfig) -> SMTLNetwork:
    """Build the gated network of ``config`` for ``problem`` (backbone blocks and heads are copied).

    Args:
        problem: the backbone, heads and tasks (:class:`~mtgraph.Problem`).
        config: the run's options.

    Returns:
        The untrained :class:`SMTLNetwork`.

    Raises:
        ConfigError: a block range outside the backbone or a bad config.
        PassError: anything the ``gate`` pass refuses.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import SMTLConfig, build_smtl
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> net = build_smtl(problem, SMTLConfig(variant="lite"))
        >>> print(mtgraph.print_graph(net.graph).splitlines()[-3])
        %8 = gate depth w=gate.depth.b0-1 (%5, %6)  # depth
        >>> build_smtl(problem, SMTLConfig(start=5))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: SMTLConfig: the gated block range start=5..end=1 is outside the backbone, ...
    """
    if not isinstance(config, SMTLConfig):
        raise ConfigError(f"config must be an SMTLConfig, got {type(config).__name__}")
    tasks = problem.task_names
    num_blocks = problem.backbone.num_blocks
    block_range = config.block_range(num_blocks)
    passes = smtl_passes(tasks, num_blocks, config)
    start_graph = one_net(num_blocks, tasks)
    result = run_passes(start_graph, ParamStore.create(start_graph, problem.backbone, problem.heads), passes)
    graph, params = result.graph, result.params
    gates = gate_keys(graph)
    if config.after_decoders:
        params = decoder_level(params, gates)
    return SMTLNetwork(graph, params, format_pipeline(passes), block_range, gates)
