"""Safe MTL architectures to retrain from scratch: fixed random gates, and the learned gates with fresh weights.

The evaluation protocol compares a learned architecture with random draws of
the same search space, each retrained from scratch. For Safe MTL the
architecture *is* the gate setting:

* soft variants (``smtl``, ``smtl_c``): the gated network of
  :func:`~.build.smtl_passes` with each gate fixed at an α_t. The gate keys
  are listed in :attr:`Architecture.frozen
  <mtgraph.strategies.protocol.Architecture>`, so retraining trains the
  encoders and decoders and keeps every α_t where it was set. Every soft
  network of one problem and block range costs the same (both paths always
  run), so a budget can only be matched, not traded;
* lite variants (``lite``, ``lite_c``): one encoder per task, public or
  private (:func:`~.harden.lite_passes`); the choice is structure, nothing
  is left to freeze. Its cost grows with the number of private encoders, so
  a budget selects how many tasks go private.

The pipeline of each architecture rebuilds its graph from the One-Net. The
one thing it cannot express is the ``_c`` variants' decoder-level modules
(:func:`~.build.decoder_level`), applied after the replay.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping

from mtgraph.analysis.cost import cost
from mtgraph.budget import Budget
from mtgraph.errors import BudgetError, ConfigError
from mtgraph.ir.nodes import Gate
from mtgraph.passes import GatePass, format_pipeline, parse_pipeline
from mtgraph.problem import Problem
from mtgraph.strategies.protocol import Architecture, replay
from mtgraph.strategies.result import StrategyResult
from mtgraph.strategies.smtl.build import alphas, decoder_level, gate_keys, smtl_passes
from mtgraph.strategies.smtl.config import SMTLConfig
from mtgraph.strategies.smtl.decoder_gate import DecoderGate
from mtgraph.strategies.smtl.harden import lite_passes

__all__ = ["fixed_gates", "random_architecture", "learned_architecture", "BUDGET_TOLERANCE"]

#: Relative distance from a budget's cost that a random draw may have (±5 %, as the random trees).
BUDGET_TOLERANCE = 0.05


def fixed_gates(problem: Problem, config: SMTLConfig, alpha: Mapping[str, float], *, label: str = "fixed gates") -> Architecture:
    """The soft gated network of ``config`` with every task's gate fixed at ``alpha[task]`` (fresh weights).

    Args:
        problem: the backbone, heads and tasks.
        config: gives the variant (``smtl`` or ``smtl_c``), block range, private init.
        alpha: task -> α_t = P(public), in [0, 1].
        label: the architecture's label.

    Returns:
        The :class:`~mtgraph.strategies.protocol.Architecture`; its ``frozen``
        keys are the gates', its pipeline builds the graph from the One-Net
        (α included), ``details["alpha"]`` is ``alpha``.

    Raises:
        ConfigError: a lite variant (its gates are choices: use :func:`~.harden.lite_passes`).
        PassError: an α outside [0, 1] (the ``gate`` pass refuses it).

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import SMTLConfig, alphas, fixed_gates
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> arch = fixed_gates(problem, SMTLConfig(), {"seg": 0.25, "depth": 0.75})
        >>> sorted(arch.frozen), {t: round(a, 4) for t, a in alphas(arch.graph, arch.params).items()}
        (['gate.depth.b0-1', 'gate.seg.b0-1'], {'seg': 0.25, 'depth': 0.75})
    """
    if config.lite:
        raise ConfigError(f"fixed_gates builds soft gated networks; variant {config.variant!r} chooses one encoder per "
                          "task (build it with lite_passes)")
    pipeline = format_pipeline(smtl_passes(problem.task_names, problem.backbone.num_blocks, config, alpha))
    graph, params = replay(problem, "one_net", pipeline)
    gates = gate_keys(graph)
    if config.after_decoders:
        params = decoder_level(params, gates)
    return Architecture(label, graph, params, "one_net", pipeline, frozenset(gates.values()),
                        {"variant": config.variant, "alpha": dict(alpha)})


def _measure(budget: Budget, arch: Architecture) -> float:
    return budget.measure_of(cost(arch.graph, arch.params))


def _lite(problem: Problem, config: SMTLConfig, chosen: Mapping[str, str], label: str) -> Architecture:
    pipeline = format_pipeline(lite_passes(problem.task_names, problem.backbone.num_blocks, config, chosen))
    return Architecture.build(problem, "one_net", pipeline, label=label,
                              details={"variant": config.variant, "choices": dict(chosen)})


def _private_counts(problem: Problem, config: SMTLConfig, budget: Budget) -> list[int]:
    """The numbers of private encoders whose lite networks cost within the tolerance of ``budget``."""
    tasks = problem.task_names
    target = budget.resolve(problem)
    # Every copy of the gated range costs the same, so a network's cost depends on how many encoder copies run:
    # k private tasks run k copies, plus the public one unless every task went private.
    start, end = config.block_range(problem.backbone.num_blocks)
    blocks = problem.backbone.blocks[start:end + 1]
    copy_cost = sum(b.macs for b in blocks) / 1e9 if budget.measure == "gmac" else float(sum(b.params for b in blocks))
    public_only = _measure(budget, _lite(problem, config, {t: "public" for t in tasks}, ""))
    measured = {k: public_only + (k + (k < len(tasks)) - 1) * copy_cost for k in range(len(tasks) + 1)}
    fitting = [k for k, value in measured.items() if abs(value - target) <= BUDGET_TOLERANCE * target]
    if not fitting:
        unit = "parameters" if budget.measure == "params" else "GMac"
        options = ", ".join(f"{k} private: {v:.6g}" for k, v in measured.items())
        raise BudgetError(f"no lite Safe MTL network is within ±{BUDGET_TOLERANCE:.0%} of the budget {budget} "
                          f"({target:.6g} {unit}); the networks cost ({unit}) {options}")
    return fitting


def random_architecture(
    problem: Problem, rng: random.Random, config: SMTLConfig, budget: Budget | None = None
) -> Architecture:
    """A random architecture of Safe MTL's search space: fixed random gates (soft) or random choices (lite).

    Soft variants: every α_t uniform in [0, 1), the gates frozen. Lite
    variants: without a budget each task public or private with probability
    1/2; with a budget, a number of private encoders whose network costs
    within ±5 % of it (uniformly among those that do), then that many tasks
    uniformly at random.

    Args:
        problem: the backbone, heads and tasks.
        rng: the random source (the draw depends on it alone).
        config: the variant and block range of the search space.
        budget: a cost to match (soft networks all cost the same: the budget
            is then only checked).

    Returns:
        The :class:`~mtgraph.strategies.protocol.Architecture` (``details``:
        ``alpha`` or ``choices``).

    Raises:
        BudgetError: no network of the space is within ±5 % of the budget (the costs there are are listed).

    Examples:
        >>> import random
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import SMTLConfig, random_architecture
        >>> problem = mtgraph.toy_problem(("seg", "depth", "edges"))
        >>> lite = random_architecture(problem, random.Random(0), SMTLConfig(variant="lite"))
        >>> lite.details["choices"], lite.frozen
        ({'seg': 'private', 'depth': 'private', 'edges': 'public'}, frozenset())
        >>> soft = random_architecture(problem, random.Random(0), SMTLConfig())
        >>> {t: round(a, 3) for t, a in soft.details["alpha"].items()}
        {'seg': 0.844, 'depth': 0.758, 'edges': 0.421}
    """
    tasks = problem.task_names
    if config.lite:
        if budget is None:
            chosen = {t: rng.choice(("public", "private")) for t in tasks}
        else:
            k = rng.choice(_private_counts(problem, config, budget))
            private = set(rng.sample(list(tasks), k))
            chosen = {t: "private" if t in private else "public" for t in tasks}
        return _lite(problem, config, chosen, "random choices")
    arch = fixed_gates(problem, config, {t: rng.random() for t in tasks}, label="random gates")
    if budget is not None:
        target, value = budget.resolve(problem), _measure(budget, arch)
        if abs(value - target) > BUDGET_TOLERANCE * target:
            raise BudgetError(
                f"every soft Safe MTL network ({config.variant}, blocks {config.block_range(problem.backbone.num_blocks)}) "
                f"costs {value:.6g}, not within ±{BUDGET_TOLERANCE:.0%} of the budget {budget} ({target:.6g}); "
                "a lite variant trades cost for private encoders"
            )
    return arch


def learned_architecture(problem: Problem, result: StrategyResult) -> Architecture:
    """The learned Safe MTL architecture of ``result`` with fresh encoder and decoder weights.

    Soft results: the gated network with every gate fixed at its learned
    logits (frozen); lite results: the learned choices (the result's own
    pipeline).

    Args:
        problem: the problem ``result`` was learned on.
        result: a Safe MTL result (:meth:`SMTLStrategy.learn <mtgraph.strategies.smtl.SMTLStrategy.learn>`).

    Returns:
        The :class:`~mtgraph.strategies.protocol.Architecture` (``label="learned"``).

    Raises:
        ConfigError: ``result`` is not a Safe MTL result.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import SMTLConfig, alphas, learned_architecture
        >>> from mtgraph.strategies.smtl.entry import SMTLStrategy
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> result = SMTLStrategy().learn(problem, SMTLConfig(epochs=1, batch_size=4))
        >>> arch = learned_architecture(problem, result)
        >>> arch.graph == result.graph, alphas(arch.graph, arch.params) == alphas(result.graph, result.params)
        (True, True)
    """
    if result.strategy != "smtl":
        raise ConfigError(f"learned_architecture needs a Safe MTL result, got one of strategy {result.strategy!r}")
    passes = parse_pipeline(result.pipeline)
    if not any(isinstance(node, Gate) for node in result.graph.nodes):  # lite: the choices are the structure
        chosen = {p.task: "public" if p.alpha > 0.5 else "private" for p in passes if isinstance(p, GatePass)}
        return Architecture.build(problem, "one_net", result.pipeline, label="learned", details={"choices": chosen})
    learned = alphas(result.graph, result.params)
    pipeline = format_pipeline([dataclasses.replace(p, alpha=learned[p.task]) if isinstance(p, GatePass) else p
                                for p in passes])
    graph, params = replay(problem, "one_net", pipeline)
    gates = gate_keys(graph)
    if any(isinstance(result.params[key], DecoderGate) for key in gates.values()):
        params = decoder_level(params, gates)
    for key in gates.values():  # the learned logits exactly (the pipeline's α is their rounded probability)
        params[key].load_state_dict(result.params[key].state_dict())
    return Architecture("learned", graph, params, "one_net", pipeline, frozenset(gates.values()), {"alpha": learned})
