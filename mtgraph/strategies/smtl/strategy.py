"""The Safe MTL driver: build the gated network, train it with the shared loop, harden the lite variants.

:func:`learn_smtl` minimises eq. 2 of papers/004 — the mean over tasks of
each task's training loss through its gate — jointly over the encoders,
decoders and gates, with :func:`mtgraph.train.fit` (single-level, as the
paper prefers, §4.4). α_t per task is recorded at the start and after every
epoch. The soft variants (``smtl``, ``smtl_c``) are returned as trained,
gates included (their compiled network and ONNX file compute both paths and
mix them with the learned α). The lite variants (``lite``, ``lite_c``) are
hardened: each task keeps only its chosen encoder (public iff α_t > 0.5,
ties private), the others disappear from the graph, the store, the cost and
the ONNX file.

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
from torch.utils.data import DataLoader, Dataset

from mtgraph.errors import ConfigError
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.builders import one_net, stn
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore
from mtgraph.strategies.result import Decision, StrategyResult
from mtgraph.strategies.smtl.build import SMTLNetwork, alphas, build_smtl, gate_alpha
from mtgraph.strategies.smtl.config import SMTLConfig
from mtgraph.strategies.smtl.harden import choose, harden_smtl
from mtgraph.train import FitResult, Hook, OptimizerGroup, TrainState, evaluate, fit

__all__ = ["AlphaTracker", "learn_smtl", "train_reference", "REFERENCES"]

#: The reference architectures of :func:`train_reference`.
REFERENCES = ("stn", "one_net")


class AlphaTracker(Hook):
    """Records α_t = P(public) of every task's gate before training and after every epoch.

    Args:
        gates: task name -> weight key of its gate (:attr:`SMTLNetwork.gates
            <mtgraph.strategies.smtl.build.SMTLNetwork>`).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), torch.randn(2, 3, 32, 32))
        >>> tasks = {"seg": T.segmentation(3, hidden=4), "depth": T.depth(hidden=4)}
        >>> data = SceneDataset(4, size=32, seed=0, num_classes=2)
        >>> from mtgraph.strategies.smtl import AlphaTracker, SMTLConfig, build_smtl
        >>> heads = {name: task.make_head(4, (32, 32)) for name, task in tasks.items()}
        >>> net = build_smtl(backbone, heads, list(tasks), SMTLConfig())
        >>> tracker = AlphaTracker(net.gates)
        >>> _ = mtgraph.train.fit(net.graph, net.params, tasks, data, epochs=1, batch_size=4, hooks=[tracker])
        >>> tracker.records  # before training (epoch -1) and after epoch 0
        [{'epoch': -1, 'alpha': {'seg': 0.5, 'depth': 0.5}}, {'epoch': 0, 'alpha': {'seg': 0.5, 'depth': 0.5}}]
    """

    def __init__(self, gates: Mapping[str, str]) -> None:
        self.gates = dict(gates)
        self.records: list[dict[str, Any]] = []

    def _record(self, state: TrainState, epoch: int) -> None:
        alpha = {t: gate_alpha(state.params[k]) for t, k in self.gates.items()}
        self.records.append({"epoch": epoch, "alpha": alpha})

    def on_fit_start(self, state: TrainState) -> None:
        if not self.records:
            self._record(state, -1)

    def on_epoch_end(self, state: TrainState) -> None:
        self._record(state, state.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.records = [dict(r) for r in state.get("records", [])]


def _check_inputs(backbone: Any, heads: Any, tasks: Any, train_data: Any) -> tuple[str, ...]:
    if not isinstance(backbone, Backbone):
        raise ConfigError(
            f"backbone must be a traced mtgraph.Backbone, got {type(backbone).__name__}; "
            "trace it first: mtgraph.trace(model, example_input)"
        )
    if not isinstance(tasks, Mapping) or not tasks:
        raise ConfigError("tasks must be a non-empty mapping task name -> mtgraph.tasks.Task")
    if heads is not None:
        if not isinstance(heads, Mapping):
            raise ConfigError(f"heads must be a mapping task name -> nn.Module (or None), got {type(heads).__name__}")
        missing = [t for t in tasks if t not in heads]
        if missing:
            raise ConfigError(f"no head for tasks {missing}; heads were given for {list(heads)}")
    if not isinstance(train_data, (Dataset, DataLoader)):
        raise ConfigError(f"train_data must be a map-style torch Dataset or a DataLoader, got {type(train_data).__name__}")
    return tuple(tasks)


def _heads(heads: Mapping[str, nn.Module] | None, tasks: Mapping[str, Any], backbone: Backbone) -> Mapping[str, nn.Module]:
    if heads is not None:
        return {t: heads[t] for t in tasks}
    size = tuple(backbone.input_shape[-2:])
    return {name: task.make_head(backbone.output_shape[0], size) for name, task in tasks.items()}


def _optimizer(config: SMTLConfig, gate_keys: set[str]) -> Any:
    """Adam over every trained parameter; the gates' logits in their own group when ``gate_lr`` is set."""
    gate_lr = config.gate_lr

    def make(named: list[tuple[str, nn.Parameter]]) -> torch.optim.Optimizer:
        if gate_lr is None:
            return torch.optim.Adam([p for _, p in named], lr=config.lr, weight_decay=config.weight_decay)
        model = [p for n, p in named if n.partition("/")[0] not in gate_keys]
        gates = [p for n, p in named if n.partition("/")[0] in gate_keys]
        groups: list[dict[str, Any]] = [{"params": model}] if model else []
        if gates:
            groups.append({"params": gates, "lr": gate_lr})
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)

    return make


def _train(graph: MTGraph, params: ParamStore, tasks: Mapping[str, Any], train_data: Dataset | DataLoader,
           config: SMTLConfig, *, frozen: set[str], gate_keys: set[str], hooks: Sequence[Hook], val_data: Any,
           seed: int, progress: bool, phase: str, device: Any) -> FitResult:
    # A DataLoader brings its own batch size (fit refuses a contradicting one).
    batch_size = None if isinstance(train_data, DataLoader) else config.batch_size
    group = OptimizerGroup("main", select=(lambda key, module: key not in frozen) if frozen else None,
                           optimizer=_optimizer(config, gate_keys))
    return fit(graph, params, tasks, train_data, epochs=config.epochs, batch_size=batch_size, groups=[group],
               hooks=hooks, seed=seed, eval_data=val_data if config.eval_every else None,
               eval_every=config.eval_every or 1, grad_clip=config.grad_clip, progress=progress, phase=phase,
               device=device)


def _decisions(net: SMTLNetwork, alpha: Mapping[str, float], lite: bool) -> list[Decision]:
    start, end = net.block_range
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


def learn_smtl(
    backbone: Backbone,
    heads: Mapping[str, nn.Module] | None,
    tasks: Mapping[str, Any],
    train_data: Dataset | DataLoader,
    *,
    config: SMTLConfig | None = None,
    val_data: Dataset | DataLoader | None = None,
    seed: int = 0,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> StrategyResult:
    """Learn a Safe MTL network (papers/004): public encoder, private encoders, one gate per task.

    Args:
        backbone: the traced backbone (:func:`mtgraph.trace`); its blocks
            ``config.start..config.end`` are gated.
        heads: task -> head module (copied; these are the private decoders,
            and the public decoders' initial weights for ``*_c``), or None to
            build each task's head with its factory.
        tasks: task name -> :class:`mtgraph.tasks.Task`.
        train_data: map-style dataset of ``(image, {target: tensor})``, or a
            DataLoader over one (its batch size then replaces ``config.batch_size``).
        config: :class:`SMTLConfig` (default: soft SMTL over the whole encoder).
        val_data: evaluated at the end (``history["metrics"]``) and, with
            ``config.eval_every``, during training (``history["train"]``); the
            final epoch's weights are kept either way.
        seed: seeds training (data order, Gumbel samples).
        progress: show a progress bar.
        device: where to train (default: :func:`~mtgraph.train.fit`'s choice).

    Returns:
        A :class:`~mtgraph.strategies.result.StrategyResult` (``strategy="smtl"``)
        whose graph is the soft gated network (``smtl``, ``smtl_c``) or the
        hardened one (``lite``, ``lite_c``); ``figures["alpha"]`` has one row
        per task (α_t, the side it leans to or keeps) and
        ``history["alpha"]`` α_t before training and after every epoch.
        ``pipeline`` reproduces the structure from ``one_net`` (the ``_c``
        variants' DualHead heads are not expressible as passes).

    Raises:
        ConfigError: inconsistent inputs or options (a block range outside
            the backbone, α outside [0, 1], ...).

    Examples:
        A lite run of one step on four generated scenes (see
        ``docs/strategies/smtl.md`` for a full walk-through):

        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), torch.randn(2, 3, 32, 32))
        >>> tasks = {"seg": T.segmentation(3, hidden=4), "depth": T.depth(hidden=4)}
        >>> data = SceneDataset(4, size=32, seed=0, num_classes=2)
        >>> from mtgraph.strategies.smtl import SMTLConfig, learn_smtl
        >>> result = learn_smtl(backbone, None, tasks, data, config=SMTLConfig(variant="lite", epochs=1, batch_size=4))
        >>> result.figures["alpha"]  # equal public and private encoders at the start: the gates have not moved yet
        [{'task': 'seg', 'alpha': 0.5, 'choice': 'private'}, {'task': 'depth', 'alpha': 0.5, 'choice': 'private'}]
        >>> any(isinstance(node, mtgraph.ir.Gate) for node in result.graph.nodes)  # hardened: no gate left
        False
    """
    config = SMTLConfig() if config is None else config
    if not isinstance(config, SMTLConfig):
        raise ConfigError(f"config must be an SMTLConfig, got {type(config).__name__}")
    names = _check_inputs(backbone, heads, tasks, train_data)
    net = build_smtl(backbone, _heads(heads, tasks, backbone), names, config)
    gate_keys = set(net.gates.values())
    tracker = AlphaTracker(net.gates)
    fitted = _train(net.graph, net.params, tasks, train_data, config, frozen=set() if config.learn_alpha else gate_keys,
                    gate_keys=gate_keys, hooks=[tracker], val_data=val_data, seed=seed, progress=progress,
                    phase=f"smtl-{config.variant}", device=device)
    graph, params = fitted.graph, fitted.params
    alpha = alphas(graph, params)
    decisions = _decisions(net, alpha, config.lite)
    pipeline = net.pipeline
    history: dict[str, Any] = {"train": fitted.history.to_state(), "alpha": tracker.records}
    if config.lite:
        hard = harden_smtl(graph, params)
        graph, params = hard.graph, hard.params
        pipeline = f"{pipeline},{hard.pipeline}"
    if val_data is not None:
        history["metrics"] = dict(evaluate(graph, params, tasks, val_data, batch_size=config.eval_batch_size))
    figures = {
        "alpha": [{"task": t, "alpha": a, "choice" if config.lite else "leans": choose(a)} for t, a in alpha.items()],
        "block_range": net.block_range,
        "variant": config.variant,
    }
    return StrategyResult(strategy="smtl", graph=graph, params=params, decisions=tuple(decisions), pipeline=pipeline,
                          figures=figures, history=history)


def train_reference(
    kind: str,
    backbone: Backbone,
    heads: Mapping[str, nn.Module] | None,
    tasks: Mapping[str, Any],
    train_data: Dataset | DataLoader,
    *,
    config: SMTLConfig | None = None,
    val_data: Dataset | DataLoader | None = None,
    seed: int = 0,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> StrategyResult:
    """Train a reference network with Safe MTL's protocol: ``"stn"`` (one network per task) or ``"one_net"`` (DMTL).

    Uses ``config``'s epochs, batch size, learning rate and weight decay and
    the same loss (mean over tasks; for the STN the tasks' parameters are
    disjoint, so each network trains on its own loss exactly as if trained
    alone, on the same batches). The arguments after ``kind`` are those of
    :func:`learn_smtl`.

    Args:
        kind: ``"stn"`` or ``"one_net"``.

    Returns:
        A StrategyResult with ``strategy=kind`` and, with ``val_data``,
        ``history["metrics"]``.

    Raises:
        ConfigError: an unknown ``kind``, or inputs :func:`learn_smtl` would refuse.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), torch.randn(2, 3, 32, 32))
        >>> tasks = {"seg": T.segmentation(3, hidden=4), "depth": T.depth(hidden=4)}
        >>> data = SceneDataset(4, size=32, seed=0, num_classes=2)
        >>> from mtgraph.strategies.smtl import SMTLConfig, train_reference
        >>> stn = train_reference("stn", backbone, None, tasks, data, config=SMTLConfig(epochs=1, batch_size=4),
        ...                       val_data=data)
        >>> stn.strategy, sorted(stn.history["metrics"])
        ('stn', ['depth', 'seg'])
        >>> train_reference("dmtl", backbone, None, tasks, data)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: reference kind must be one of ['stn', 'one_net'], got 'dmtl'
    """
    if kind not in REFERENCES:
        raise ConfigError(f"reference kind must be one of {list(REFERENCES)}, got {kind!r}")
    config = SMTLConfig() if config is None else config
    if not isinstance(config, SMTLConfig):
        raise ConfigError(f"config must be an SMTLConfig, got {type(config).__name__}")
    names = _check_inputs(backbone, heads, tasks, train_data)
    graph = (stn if kind == "stn" else one_net)(backbone.num_blocks, names)
    params = ParamStore.create(graph, backbone, _heads(heads, tasks, backbone))
    fitted = _train(graph, params, tasks, train_data, config, frozen=set(), gate_keys=set(), hooks=(), val_data=val_data,
                    seed=seed, progress=progress, phase=kind.replace("_", "-"), device=device)
    history: dict[str, Any] = {"train": fitted.history.to_state()}
    if val_data is not None:
        history["metrics"] = dict(evaluate(fitted.graph, fitted.params, tasks, val_data, batch_size=config.eval_batch_size))
    return StrategyResult(strategy=kind, graph=fitted.graph, params=fitted.params, pipeline="", history=history)
