"""The Safe MTL driver: build the gated network, train it with the shared loop, harden the lite variants.

A run (:meth:`SMTLStrategy.learn <mtgraph.strategies.smtl.SMTLStrategy.learn>`)
builds the gated network with passes on the One-Net
(:func:`~.build.smtl_passes`), trains it with :func:`mtgraph.train.fit` and
records α_t per task before training and after every epoch. The soft
variants (``smtl``, ``smtl_c``) are returned as trained, gates included
(their compiled network and ONNX file compute both paths and mix them with
the learned α). The lite variants (``lite``, ``lite_c``) are hardened: each
task keeps only its chosen encoder (public iff α_t > 0.5, ties private), the
others disappear from the graph, the store, the cost and the ONNX file.

**Formulations.** ``"single"`` minimises eq. 2 of papers/004, the mean over
tasks of each task's training loss through its gate, jointly over encoders,
decoders and gates (the paper's preferred form, §4.4). ``"bilevel"`` is
eq. 6 in its first-order form: the training data is split once (seeded;
``gate_fraction`` held out); every step of the encoders and decoders on a
batch of the training part is followed by one step of the gates alone on a
batch of the held-out part, each with its own Adam. The gradient the gates
get is that of the held-out loss *at the current weights*. The reference
code (``train_bilevel.py``, notes B.6) instead differentiates through one
virtual SGD step of the weights (a second-order, DARTS-like unrolled
gradient); that version is **not implemented** here. The paper itself found
the bi-level form no better than the single-level one (Table 6) and too
costly for its larger datasets.

:func:`train_reference` trains the single-task networks (STN) or the One-Net
(the paper's DMTL) with the very same protocol (loop, optimiser, epochs,
batch size, final epoch reported), the references Safe MTL is judged against
(notes D.8, D.11).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from mtgraph.errors import ConfigError
from mtgraph.ir.builders import one_net, stn
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore
from mtgraph.passes import format_pipeline
from mtgraph.problem import Problem
from mtgraph.strategies.result import Curve, Decision, StrategyResult, Table
from mtgraph.strategies.smtl.build import SMTLNetwork, alphas, build_smtl, gate_alpha
from mtgraph.strategies.smtl.config import SMTLConfig
from mtgraph.strategies.smtl.harden import choose, harden_smtl, lite_passes
from mtgraph.tasks import Task
from mtgraph.train import FitResult, Hook, OptimizerGroup, TrainState, evaluate, fit

__all__ = ["AlphaTracker", "learn_smtl", "train_reference", "split_for_gates", "phase_name", "REFERENCES"]

#: The reference architectures of :func:`train_reference`.
REFERENCES = ("stn", "one_net")


class AlphaTracker(Hook):
    """Records α_t = P(public) of every task's gate before training and after every epoch.

    Args:
        gates: task name -> weight key of its gate (:attr:`SMTLNetwork.gates
            <mtgraph.strategies.smtl.build.SMTLNetwork>`).
        every: record after every ``every`` of ``fit``'s epochs (the bi-level
            run's ``fit`` epochs are single model/gate cycles; it records once
            per pass over the training part). Records are numbered in these units.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import AlphaTracker, SMTLConfig, build_smtl
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> net = build_smtl(problem, SMTLConfig())
        >>> tracker = AlphaTracker(net.gates)
        >>> _ = mtgraph.train.fit(net.graph, net.params, problem.tasks, problem.train_data, epochs=1, batch_size=4,
        ...                       hooks=[tracker])
        >>> tracker.records  # before training (epoch -1) and after epoch 0: at step 0 the gradient to α is exactly 0
        [{'epoch': -1, 'alpha': {'seg': 0.5, 'depth': 0.5}}, {'epoch': 0, 'alpha': {'seg': 0.5, 'depth': 0.5}}]
    """

    def __init__(self, gates: Mapping[str, str], every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"AlphaTracker.every must be an int >= 1, got {every!r}")
        self.gates = dict(gates)
        self.every = every
        self.records: list[dict[str, Any]] = []

    def _record(self, state: TrainState, epoch: int) -> None:
        alpha = {t: gate_alpha(state.params[k]) for t, k in self.gates.items()}
        self.records.append({"epoch": epoch, "alpha": alpha})

    def on_fit_start(self, state: TrainState) -> None:
        if not self.records:
            self._record(state, -1)

    def on_epoch_end(self, state: TrainState) -> None:
        done = state.epoch + 1
        if done % self.every == 0:
            self._record(state, done // self.every - 1)

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.records = [dict(r) for r in state.get("records", [])]


def _optimizer(config: SMTLConfig, gate_keys: set[str], *, learn_gates: bool = True) -> Any:
    """Adam over the trained parameters; the gates' logits (if they train) in their own group at ``gate_lr``."""

    def make(named: list[tuple[str, nn.Parameter]]) -> torch.optim.Optimizer:
        model = [p for n, p in named if n.partition("/")[0] not in gate_keys]
        gates = [p for n, p in named if n.partition("/")[0] in gate_keys] if learn_gates else []
        groups: list[dict[str, Any]] = [{"params": model}] if model else []
        if gates:
            groups.append({"params": gates, "lr": config.effective_gate_lr})
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)

    return make


def phase_name(config: SMTLConfig) -> str:
    """The checkpoint phase name of a run of ``config``: one per variant and formulation, unique within a session.

    Examples:
        >>> from mtgraph.strategies.smtl import SMTLConfig, phase_name
        >>> phase_name(SMTLConfig()), phase_name(SMTLConfig(variant="lite_c", formulation="bilevel"))
        ('smtl', 'smtl-lite-c-bilevel')
    """
    base = "smtl" if config.variant == "smtl" else "smtl-" + config.variant.replace("smtl_", "").replace("_", "-")
    return base + ("-bilevel" if config.formulation == "bilevel" else "")


def _device(problem: Problem, config: SMTLConfig) -> Any:
    return config.device if config.device is not None else problem.device


def _batch_size(data: Dataset | DataLoader, config: SMTLConfig) -> int | None:
    # A DataLoader brings its own batch size (fit refuses a contradicting one).
    return None if isinstance(data, DataLoader) else config.batch_size


def _fit_single(net: SMTLNetwork, problem: Problem, config: SMTLConfig, *, tracker: AlphaTracker, progress: bool) -> FitResult:
    gate_keys = set(net.gates.values())
    frozen = set() if config.learn_alpha else gate_keys
    group = OptimizerGroup("main", select=(lambda key, module: key not in frozen) if frozen else None,
                           optimizer=_optimizer(config, gate_keys, learn_gates=config.learn_alpha))
    return fit(net.graph, net.params, problem.tasks, problem.train_data, epochs=config.epochs,
               batch_size=_batch_size(problem.train_data, config), groups=[group], hooks=[tracker], seed=problem.seed,
               eval_data=problem.val_data if config.eval_every else None, eval_every=config.eval_every or 1,
               grad_clip=config.grad_clip, progress=progress, phase=phase_name(config),
               device=_device(problem, config))


def split_for_gates(data: Dataset | DataLoader, fraction: float, seed: int) -> tuple[Dataset | DataLoader, Dataset | DataLoader]:
    """Split training data into (weights part, gates part) for the bi-level formulation: a seeded random split.

    ``round(fraction · n)`` samples (at least one) go to the gates; a
    DataLoader is split into two DataLoaders with its batch size, collate
    function and workers.

    Args:
        data: a map-style dataset, or a DataLoader over one.
        fraction: the gates' share, in (0, 1).
        seed: seeds the split.

    Returns:
        The two parts, disjoint, covering ``data``.

    Raises:
        ConfigError: fewer than two samples, so one part would be empty.

    Examples:
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.strategies.smtl.strategy import split_for_gates
        >>> weights, gates = split_for_gates(SceneDataset(10, size=32), 0.2, seed=0)
        >>> len(weights), len(gates), sorted(weights.indices + gates.indices) == list(range(10))
        (8, 2, True)
    """
    dataset = data.dataset if isinstance(data, DataLoader) else data
    n = len(dataset)  # type: ignore[arg-type]
    held = max(1, round(fraction * n))
    if n < 2 or held >= n:
        raise ConfigError(
            f"the bi-level formulation holds out gate_fraction={fraction} of the {n} training samples for the gates; "
            "both parts need at least one sample (use more data or formulation='single')"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    parts = (Subset(dataset, sorted(order[held:])), Subset(dataset, sorted(order[:held])))
    if not isinstance(data, DataLoader):
        return parts
    return tuple(  # type: ignore[return-value]
        DataLoader(part, batch_size=data.batch_size, shuffle=True, collate_fn=data.collate_fn, num_workers=data.num_workers,
                   drop_last=data.drop_last, pin_memory=data.pin_memory)
        for part in parts
    )


def _batches(data: Dataset | DataLoader, batch_size: int | None) -> int:
    if isinstance(data, DataLoader):
        return len(data)
    assert batch_size is not None  # a Dataset always comes with the config's batch size
    return -(-len(data) // batch_size)  # type: ignore[arg-type]


def _fit_bilevel(net: SMTLNetwork, problem: Problem, config: SMTLConfig, *, progress: bool) -> tuple[FitResult, AlphaTracker]:
    gate_keys = set(net.gates.values())
    weights_part, gates_part = split_for_gates(problem.train_data, config.gate_fraction, problem.seed)
    batch_size = _batch_size(problem.train_data, config)
    groups = [
        OptimizerGroup("weights", select=lambda key, module: key not in gate_keys,
                       optimizer=_optimizer(config, gate_keys, learn_gates=False), data=weights_part,
                       batch_size=batch_size, steps=1),
        OptimizerGroup("gates", select=lambda key, module: key in gate_keys, optimizer=_optimizer(config, gate_keys),
                       data=gates_part, batch_size=batch_size, steps=1),
    ]
    # One fit epoch is one cycle (a weights step, then a gates step); an epoch of the run is one pass over the
    # weights part, so the tracker and the evaluation count in those.
    cycles = _batches(weights_part, batch_size)
    tracker = AlphaTracker(net.gates, every=cycles)
    fitted = fit(net.graph, net.params, problem.tasks, problem.train_data, epochs=config.epochs * cycles,
                 batch_size=batch_size, groups=groups, hooks=[tracker], seed=problem.seed,
                 eval_data=problem.val_data if config.eval_every else None, eval_every=(config.eval_every or 1) * cycles,
                 grad_clip=config.grad_clip, progress=progress, phase=phase_name(config),
                 device=_device(problem, config))
    return fitted, tracker


def _decisions(block_range: tuple[int, int], alpha: Mapping[str, float], lite: bool) -> list[Decision]:
    start, end = block_range
    span = f"blocks {start}..{end}"
    out = []
    for task, a in alpha.items():
        side = choose(a)
        if lite:
            reason = f"α={a:.4f} {'>' if side == 'public' else '<='} 0.5 → keep the {side} encoder (a tie keeps the private one)"
            out.append(Decision(f"gate {task} over {span}", f"keep {side}", True, reason, {"alpha": a, "choice": side}))
        else:
            reason = f"soft gate kept: output = {a:.4f}·public + {1 - a:.4f}·private (leans {side})"
            out.append(Decision(f"gate {task} over {span}", f"mix α={a:.4f}", True, reason, {"alpha": a, "leans": side}))
    return out


def _figures(alpha: Mapping[str, float], records: Sequence[Mapping[str, Any]], lite: bool) -> dict[str, Table | Curve]:
    column = "choice" if lite else "leans"
    table = Table("α_t = P(public encoder) per task", ("task", "alpha", column),
                  tuple((t, a, choose(a)) for t, a in alpha.items()))
    curve = Curve("α_t over training", "epochs done", "α_t = P(public)", tuple(r["epoch"] + 1 for r in records),
                  {t: tuple(r["alpha"][t] for r in records) for t in alpha})
    return {"alpha": table, "alpha_curve": curve}


def _learn(problem: Problem, config: SMTLConfig, *, progress: bool = False) -> StrategyResult:
    """The body of :meth:`SMTLStrategy.learn <mtgraph.strategies.smtl.SMTLStrategy.learn>` (documented there)."""
    if not isinstance(problem, Problem):
        raise ConfigError(f"problem must be an mtgraph.Problem, got {type(problem).__name__}")
    if not isinstance(config, SMTLConfig):
        raise ConfigError(f"config must be an SMTLConfig, got {type(config).__name__}")
    net = build_smtl(problem, config)
    if config.formulation == "bilevel":
        fitted, tracker = _fit_bilevel(net, problem, config, progress=progress)
    else:
        tracker = AlphaTracker(net.gates)
        fitted = _fit_single(net, problem, config, tracker=tracker, progress=progress)
    graph, params = fitted.graph, fitted.params
    alpha = alphas(graph, params)
    pipeline = net.pipeline
    if config.lite:
        hard = harden_smtl(graph, params)
        graph, params = hard.graph, hard.params
        # The choices as a pipeline: it rebuilds this graph from the One-Net without the trained gates.
        pipeline = format_pipeline(lite_passes(problem.task_names, problem.backbone.num_blocks, config, hard.choices))
    history: dict[str, Any] = {
        "train": fitted.history.to_state(), "alpha": tracker.records, "variant": config.variant,
        "formulation": config.formulation, "block_range": net.block_range,
    }
    if problem.val_data is not None:
        history["metrics"] = dict(evaluate(graph, params, problem.tasks, problem.val_data,
                                           batch_size=config.eval_batch_size, device=_device(problem, config)))
    return StrategyResult(strategy="smtl", graph=graph, params=params,
                          decisions=tuple(_decisions(net.block_range, alpha, config.lite)), pipeline=pipeline,
                          figures=dict(_figures(alpha, tracker.records, config.lite)), history=history, start="one_net")


def learn_smtl(
    backbone: Any,
    heads: Mapping[str, nn.Module] | None,
    tasks: Mapping[str, Task],
    train_data: Dataset | DataLoader,
    *,
    config: SMTLConfig | None = None,
    val_data: Dataset | DataLoader | None = None,
    seed: int = 0,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> StrategyResult:
    """Learn a Safe MTL network; **kept for one release**: use ``SMTLStrategy().learn(problem, config)``.

    A thin wrapper: it builds the :class:`~mtgraph.Problem` from its
    arguments (``heads=None`` builds each task's head with its factory) and
    calls :meth:`SMTLStrategy.learn <mtgraph.strategies.smtl.SMTLStrategy.learn>`.

    Args:
        backbone: the traced backbone (or a module to trace, as :meth:`Problem.create <mtgraph.Problem.create>`).
        heads: task -> head module, or None.
        tasks: task name -> :class:`mtgraph.tasks.Task`.
        train_data: map-style dataset or DataLoader.
        config: :class:`SMTLConfig` (default: soft SMTL over the whole encoder).
        val_data: evaluated at the end (``history["metrics"]``).
        seed: seeds the run.
        progress: show a progress bar.
        device: where to train.

    Returns:
        The :class:`~mtgraph.strategies.result.StrategyResult`.

    Raises:
        ConfigError: inputs :class:`~mtgraph.Problem` refuses, or a bad config.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import SMTLConfig, learn_smtl
        >>> p = mtgraph.toy_problem(("seg", "depth"))
        >>> result = learn_smtl(p.backbone, dict(p.heads), dict(p.tasks), p.train_data,
        ...                     config=SMTLConfig(variant="lite", epochs=1, batch_size=4))
        >>> result.figures["alpha"].records()[0]["choice"]
        'private'
    """
    from mtgraph.strategies.smtl.entry import SMTLStrategy

    problem = Problem.create(backbone, tasks, train_data, heads=heads, val_data=val_data, device=device, seed=seed)
    return SMTLStrategy().learn(problem, config, progress=progress)


def train_reference(
    kind: str, problem: Problem, config: SMTLConfig | None = None, *, progress: bool = False
) -> StrategyResult:
    """Train a reference network with Safe MTL's protocol: ``"stn"`` (one network per task) or ``"one_net"`` (DMTL).

    Uses ``config``'s epochs, batch size, learning rate, weight decay and
    device and the same loss (mean over tasks; for the STN the tasks'
    parameters are disjoint, so each network trains on its own loss exactly as
    if trained alone, on the same batches).

    Args:
        kind: ``"stn"`` or ``"one_net"``.
        problem: the backbone, heads, tasks, data and seed.
        config: the protocol (default: ``SMTLConfig()``).
        progress: show a progress bar.

    Returns:
        A StrategyResult with ``strategy=kind`` and, when ``problem`` has
        validation data, ``history["metrics"]``. Its phase name is ``"stn"``
        or ``"one-net"``.

    Raises:
        ConfigError: an unknown ``kind``, or a config that is not an SMTLConfig.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.smtl import SMTLConfig, train_reference
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> stn = train_reference("stn", problem, SMTLConfig(epochs=1, batch_size=4))
        >>> stn.strategy, sorted(stn.history["metrics"])
        ('stn', ['depth', 'seg'])
        >>> train_reference("dmtl", problem)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: reference kind must be one of ['stn', 'one_net'], got 'dmtl'
    """
    if kind not in REFERENCES:
        raise ConfigError(f"reference kind must be one of {list(REFERENCES)}, got {kind!r}")
    config = SMTLConfig() if config is None else config
    if not isinstance(config, SMTLConfig):
        raise ConfigError(f"config must be an SMTLConfig, got {type(config).__name__}")
    if not isinstance(problem, Problem):
        raise ConfigError(f"problem must be an mtgraph.Problem, got {type(problem).__name__}")
    graph: MTGraph = (stn if kind == "stn" else one_net)(problem.backbone.num_blocks, problem.task_names)
    params = ParamStore.create(graph, problem.backbone, problem.heads)
    fitted = fit(graph, params, problem.tasks, problem.train_data, epochs=config.epochs,
                 batch_size=_batch_size(problem.train_data, config),
                 optimizer=_optimizer(config, set()), seed=problem.seed,
                 eval_data=problem.val_data if config.eval_every else None, eval_every=config.eval_every or 1,
                 grad_clip=config.grad_clip, progress=progress, phase=kind.replace("_", "-"),
                 device=_device(problem, config))
    history: dict[str, Any] = {"train": fitted.history.to_state()}
    if problem.val_data is not None:
        history["metrics"] = dict(evaluate(fitted.graph, fitted.params, problem.tasks, problem.val_data,
                                           batch_size=config.eval_batch_size, device=_device(problem, config)))
    return StrategyResult(strategy=kind, graph=fitted.graph, params=fitted.params, pipeline="", history=history,
                          start=kind)  # type: ignore[arg-type]
