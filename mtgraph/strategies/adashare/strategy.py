"""The AdaShare strategy driver (papers/002 §3.3, appendix A): search, derive, retrain.

1. **Warm-up.** The One-Net (every block shared and executed) is trained on
   the whole training set for a fraction of the search's iterations.
2. **Policy search.** The soft graph (:mod:`.soft_graph`) is trained with
   :func:`mtgraph.train.fit` and two alternating optimizer groups: each epoch
   the ``weights`` group (SGD) takes its steps on a fixed 80% split with
   policies sampled from the current distribution, then the ``policy`` group
   (Adam, the gates' logits only) takes its steps on the other 20% with the
   weights frozen, minimising ``Σ λ_k L_k + λ_sp L_sparsity + λ_sh L_sharing``
   (eq. 4-7). A :class:`~mtgraph.train.Hook` anneals τ (``τ0 · decay^epoch``),
   adds the regularisers in the policy turn, unlocks the curriculum (epoch
   ``e`` learns the last ``e + 1`` gated blocks; an unlock is a
   :class:`~mtgraph.train.Rewrite` to a soft graph with one more gated
   level), and tracks the best policy on validation data once every block is
   unlocked.
3. **Derive.** The best logits are hardened (argmax, or several samples) and
   turned into an IR graph by ``skip`` passes on the One-Net plus ``cse``/``dce``
   (:mod:`.derive`).
4. **Retrain** from scratch (fresh copies of the backbone and heads) on the
   whole training set, then recalibrate BatchNorm statistics per call site
   (:mod:`.sites`).

Evaluating a network with hard decisions (the best-policy score, the retrain's
early stopping, the final metrics) always uses per-call-site BatchNorm
statistics re-estimated on training batches: a block called from several
sites must not be evaluated with one mixed set of running statistics.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx as fx
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from mtgraph.compile import compile as compile_graph
from mtgraph.errors import ConfigError
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.builders import one_net
from mtgraph.ir.graph import MTGraph
from mtgraph.modules import MixGate
from mtgraph.params import ParamStore
from mtgraph.strategies.adashare.derive import (
    harden_policy,
    policy_decisions,
    policy_figures,
)
from mtgraph.strategies.adashare.policy import (
    curriculum_mask,
    derive_policy,
    execute_probability,
    policy_regularization,
    temperature,
)
from mtgraph.strategies.adashare.sites import recalibrate, shared_bn_sites
from mtgraph.strategies.adashare.soft_graph import (
    gated_blocks,
    make_gates,
    policy_logits,
    set_temperature,
    soft_graph,
)
from mtgraph.strategies.result import Decision, StrategyResult
from mtgraph.train import Hook, OptimizerGroup, Rewrite, TrainState, fit, sgd
from mtgraph.train.evaluate import evaluate_module

__all__ = ["AdaShareConfig", "learn_adashare", "retrain_policy", "adashare_module", "evaluate_hard"]

WEIGHTS_GROUP = "weights"
POLICY_GROUP = "policy"


def _check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                  strict_low: bool = False, integer: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ConfigError(f"AdaShareConfig.{name} must be a finite {'integer' if integer else 'number'}, got {value!r}")
    if low is not None and (value <= low if strict_low else value < low):
        raise ConfigError(f"AdaShareConfig.{name} must be {'>' if strict_low else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"AdaShareConfig.{name} must be <= {high}, got {value!r}")


@dataclass(frozen=True)
class AdaShareConfig:
    """Every knob of the AdaShare strategy; defaults follow the paper (Table 7, NYU v2) and its code.

    Search:
        epochs: policy epochs (weight-then-policy cycles); with the curriculum
            it must be at least ``(L − 1) · curriculum_speed + 1`` so every
            gated block gets unlocked.
        weight_steps / policy_steps: steps per turn (None: one pass over the
            80% / 20% split).
        policy_fraction: share of the training set used for the policy (0.2).
        batch_size: batch size of every phase.
        warmup_steps: hard-sharing warm-up steps (None: ``warmup_fraction`` of
            the search's total steps; the paper warms up for 20%).
        weight_lr, weight_momentum, weight_decay: SGD of the weights in the
            warm-up and the search (the paper: SGD; Table 7: lr 0.001).
        policy_lr, policy_weight_decay: Adam of the policy logits (0.01, 5e-4).
        tau0, tau_decay: Gumbel-softmax temperature ``tau0 · tau_decay**epoch``.
        lambda_sparsity, lambda_sharing: λ_sp, λ_sh of eq. 7 (>= 0; Table 7,
            NYU v2 2-task: 0.05 and 0.05).
        sparsity_form, sharing_form: ``"paper"`` (eq. 5 / eq. 6) or ``"code"``
            (the released code's variants), see :mod:`.policy`.
        curriculum: learn the last l blocks' policies at epoch l (False: all
            blocks from the first epoch, the "w/o curriculum" ablation).
        curriculum_speed: epochs per newly unlocked block.
        task_weights: λ_k of eq. 4 per task (None: 1 for every task, the sum).
        calibration_batches: training batches used to re-estimate BatchNorm
            statistics per call site before every hard evaluation.
    Derive and retrain:
        derive: ``"argmax"`` (execute iff α >= 0.5) or ``"sample"`` (the
            paper's "we sample a select-or-skip decision").
        num_samples: with ``"sample"``, how many policies are drawn; every
            distinct one is retrained and the best on validation is kept.
        retrain_steps: optimizer steps of the retraining.
        retrain_lr: Adam learning rate of the retraining (betas (0.5, 0.999),
            weight decay 1e-4, as the released code).
        retrain_lr_step: halve the learning rate every this many steps (None: constant).
        retrain_select: ``"best"`` keeps the weights of the best validation
            evaluation (the paper's early stop), ``"last"`` the final ones.
        retrain_eval_every: evaluate every this many epochs while retraining.

    Raises:
        ConfigError: a value out of its range (a negative λ, ``epochs < 1``,
            ``policy_fraction`` outside (0, 1), an unknown form, ...).

    Examples:
        >>> from mtgraph.strategies.adashare import AdaShareConfig
        >>> config = AdaShareConfig(epochs=8, retrain_steps=100)
        >>> config.tau0, config.epochs_to_unlock(8)  # 8 gated blocks: all unlocked after 8 epochs
        (5.0, 8)
        >>> AdaShareConfig(lambda_sparsity=-0.1)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: AdaShareConfig.lambda_sparsity must be >= 0 ...
    """

    epochs: int = 24
    weight_steps: int | None = None
    policy_steps: int | None = None
    policy_fraction: float = 0.2
    batch_size: int = 16
    warmup_steps: int | None = None
    warmup_fraction: float = 0.2
    weight_lr: float = 0.001
    weight_momentum: float = 0.9
    weight_decay: float = 1e-4
    policy_lr: float = 0.01
    policy_weight_decay: float = 5e-4
    tau0: float = 5.0
    tau_decay: float = 0.965
    lambda_sparsity: float = 0.05
    lambda_sharing: float = 0.05
    sparsity_form: Literal["paper", "code"] = "paper"
    sharing_form: Literal["paper", "code"] = "paper"
    curriculum: bool = True
    curriculum_speed: int = 1
    task_weights: Mapping[str, float] | None = None
    calibration_batches: int = 8
    derive: Literal["argmax", "sample"] = "argmax"
    num_samples: int = 1
    retrain_steps: int = 2000
    retrain_lr: float = 0.001
    retrain_lr_step: int | None = None
    retrain_select: Literal["best", "last"] = "best"
    retrain_eval_every: int = 1

    def __post_init__(self) -> None:
        for name in ("lambda_sparsity", "lambda_sharing"):
            value = getattr(self, name)
            _check_number(name, value)
            if value < 0:
                raise ConfigError(f"AdaShareConfig.{name} must be >= 0 (a negative weight would reward the opposite), got {value!r}")
        _check_number("epochs", self.epochs, low=1, integer=True)
        _check_number("weight_steps", self.weight_steps, low=1, integer=True, optional=True)
        _check_number("policy_steps", self.policy_steps, low=1, integer=True, optional=True)
        _check_number("policy_fraction", self.policy_fraction, low=0, high=1, strict_low=True)
        if self.policy_fraction >= 1:
            raise ConfigError(f"AdaShareConfig.policy_fraction must be < 1 (the weights need data too), got {self.policy_fraction}")
        _check_number("batch_size", self.batch_size, low=1, integer=True)
        _check_number("warmup_steps", self.warmup_steps, low=0, integer=True, optional=True)
        _check_number("warmup_fraction", self.warmup_fraction, low=0)
        for name in ("weight_lr", "policy_lr", "retrain_lr", "tau0"):
            _check_number(name, getattr(self, name), low=0, strict_low=True)
        for name in ("weight_momentum", "weight_decay", "policy_weight_decay"):
            _check_number(name, getattr(self, name), low=0)
        _check_number("tau_decay", self.tau_decay, low=0, high=1, strict_low=True)
        for name in ("sparsity_form", "sharing_form"):
            if getattr(self, name) not in ("paper", "code"):
                raise ConfigError(f"AdaShareConfig.{name} must be 'paper' or 'code', got {getattr(self, name)!r}")
        _check_number("curriculum_speed", self.curriculum_speed, low=1, integer=True)
        _check_number("calibration_batches", self.calibration_batches, low=1, integer=True)
        if self.derive not in ("argmax", "sample"):
            raise ConfigError(f"AdaShareConfig.derive must be 'argmax' or 'sample', got {self.derive!r}")
        _check_number("num_samples", self.num_samples, low=1, integer=True)
        _check_number("retrain_steps", self.retrain_steps, low=0, integer=True)
        _check_number("retrain_lr_step", self.retrain_lr_step, low=1, integer=True, optional=True)
        if self.retrain_select not in ("best", "last"):
            raise ConfigError(f"AdaShareConfig.retrain_select must be 'best' or 'last', got {self.retrain_select!r}")
        _check_number("retrain_eval_every", self.retrain_eval_every, low=1, integer=True)
        if self.task_weights is not None:
            for task, weight in self.task_weights.items():
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
                    raise ConfigError(f"AdaShareConfig.task_weights[{task!r}] must be a finite number >= 0, got {weight!r}")

    def epochs_to_unlock(self, num_gated: int) -> int:
        """Epochs after which every gated block's policy is learnable (1 without curriculum)."""
        return (num_gated - 1) * self.curriculum_speed + 1 if self.curriculum else 1


# --------------------------------------------------------------------------- evaluation with hard decisions


def _images(data: Dataset, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Images of ``data`` in a fixed shuffled order (an own generator: the global RNG is not touched)."""
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    for images, _ in loader:
        yield images


def _device(params: ParamStore) -> torch.device:
    for _, module in params.items():
        for p in module.parameters():
            return p.device
    return torch.device("cpu")


def _calibrated(graph: MTGraph, params: ParamStore, calibration: Dataset, *, batches: int, batch_size: int, seed: int,
                copy_all: bool) -> tuple[fx.GraphModule, ParamStore, int]:
    """A compiled network with per-site statistics re-estimated, its store and the batches used.

    With ``copy_all`` every called key gets a site module, so the statistics
    of ``params`` itself are not touched. Every train/eval flag is left as it was.
    """
    store = params.with_site_statistics(graph, every_site=copy_all)
    module = compile_graph(graph, store)
    device = _device(params)
    used = recalibrate(module, (x.to(device) for x in _images(calibration, batch_size, seed)), max_batches=batches)
    return module, store, used


def adashare_module(
    graph: MTGraph,
    params: ParamStore,
    calibration: Dataset,
    *,
    batches: int = 8,
    batch_size: int = 16,
    seed: int = 0,
    copy_all: bool = True,
) -> tuple[fx.GraphModule, ParamStore]:
    """Compile ``graph`` with BatchNorm statistics per call site, re-estimated on ``calibration`` images.

    Parameters stay shared with ``params``; with ``copy_all`` (default) the
    store's own BatchNorm buffers are not touched. Returns the module in eval
    mode (modules it shares with ``params``, such as heads without
    BatchNorm, are switched to eval mode too) and the store holding its
    per-site statistics: ``mtgraph.save(graph, store, folder)`` or
    ``export_onnx(graph, store, path)`` deploys exactly this network.

    Args:
        graph: the hardened network.
        params: its weights.
        calibration: dataset of ``(image, targets)`` whose images re-estimate the statistics.
        batches: calibration batches to use.
        batch_size: images per calibration batch.
        seed: fixes the calibration images' order.
        copy_all: give every called key a site module (``params``' buffers stay untouched).

    Returns:
        ``(module, store)``.

    Raises:
        ConfigError: ``calibration`` yields no batch.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.adashare import gated_blocks, harden_policy, adashare_module
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
        >>> tasks = {"seg": segmentation(5, hidden=4), "depth": depth(hidden=4)}
        >>> heads = {name: task.make_head(backbone.output_shape[0], (32, 32)) for name, task in tasks.items()}
        >>> decisions = torch.ones(2, 8, dtype=torch.bool)
        >>> decisions[1, 6] = False  # depth skips block 7
        >>> graph, params, _ = harden_policy(backbone, heads, list(tasks), gated_blocks(backbone)[0], decisions)
        >>> module, store = adashare_module(graph, params, SceneDataset(4, 32, seed=1), batches=1, batch_size=2)
        >>> module.training, sorted(module(torch.randn(1, 3, 32, 32)))
        (False, ['depth', 'seg'])
    """
    module, store, _ = _calibrated(graph, params, calibration, batches=batches, batch_size=batch_size, seed=seed,
                                   copy_all=copy_all)
    return module.eval(), store


def evaluate_hard(
    graph: MTGraph,
    params: ParamStore,
    tasks: Mapping[str, Any],
    calibration: Dataset,
    data: DataLoader | Dataset,
    *,
    batches: int = 8,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Every task's metrics of ``graph`` over ``data``, with per-call-site BatchNorm statistics.

    Gates (if any) take their argmax decision. ``params`` is not modified:
    neither its tensors nor its modules' train/eval flags (this runs in the
    middle of training).

    Args:
        graph: the network.
        params: its weights.
        tasks: task name -> :class:`mtgraph.tasks.Task`.
        calibration: dataset whose images re-estimate the BatchNorm statistics.
        data: the evaluation data (Dataset or DataLoader).
        batches: calibration batches to use.
        batch_size: images per calibration batch.
        seed: fixes the calibration images' order.

    Returns:
        ``{task: {metric: value}}``.

    Raises:
        ConfigError: no calibration batch.
        DataError: empty evaluation data or a batch without a task's target.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.adashare import gated_blocks, harden_policy, evaluate_hard
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
        >>> tasks = {"seg": segmentation(5, hidden=4), "depth": depth(hidden=4)}
        >>> heads = {name: task.make_head(backbone.output_shape[0], (32, 32)) for name, task in tasks.items()}
        >>> decisions = torch.ones(2, 8, dtype=torch.bool)
        >>> decisions[1, 6] = False  # depth skips block 7
        >>> graph, params, _ = harden_policy(backbone, heads, list(tasks), gated_blocks(backbone)[0], decisions)
        >>> metrics = evaluate_hard(graph, params, tasks, SceneDataset(4, 32, seed=1), SceneDataset(4, 32, seed=2),
        ...                         batches=1, batch_size=4)
        >>> {task: sorted(values) for task, values in metrics.items()}
        {'seg': ['miou', 'pixel_acc'], 'depth': ['abs_err', 'abs_rel', 'rmse']}
    """
    with torch.random.fork_rng():
        module, _, _ = _calibrated(graph, params, calibration, batches=batches, batch_size=batch_size, seed=seed,
                                   copy_all=True)
        metrics = evaluate_module(module, tasks, data, batch_size=64, device=_device(params))
    return {t: dict(v) for t, v in metrics.items()}


def _score(metrics: Mapping[str, Mapping[str, float]], reference: Mapping[str, Mapping[str, float]],
           tasks: Mapping[str, Any]) -> float:
    """Mean relative change (percent) of each task's primary metric over ``reference``, signed so higher is better."""
    terms = []
    for name, task in tasks.items():
        metric = task.primary
        sign = 1.0 if task.higher_is_better[metric] else -1.0
        ref = reference[name][metric]
        terms.append(sign * (metrics[name][metric] - ref) / max(abs(ref), 1e-12))
    return 100.0 * sum(terms) / len(terms)


# --------------------------------------------------------------------------- hooks


class _PolicySearch(Hook):
    """Temperature, curriculum, policy regularisers and best-policy tracking of the search phase."""

    def __init__(self, *, backbone: Backbone, task_names: tuple[str, ...], tasks: Mapping[str, Any],
                 gated: tuple[int, ...], gates: Mapping[str, MixGate], config: AdaShareConfig,
                 evaluate: Any, reference: Mapping[str, Mapping[str, float]] | None) -> None:
        self.backbone, self.task_names, self.tasks, self.gated, self.gates = backbone, task_names, tasks, gated, gates
        self.config, self.evaluate, self.reference = config, evaluate, reference
        self.records: list[dict[str, Any]] = []
        self.best_logits: torch.Tensor | None = None
        self.best_score = -math.inf
        self.best_epoch = -1

    @property
    def name(self) -> str:
        return "adashare_policy"

    def mask(self, epoch: int) -> torch.Tensor:
        """Learnable gated blocks at ``epoch`` (bool over the gated blocks)."""
        if not self.config.curriculum:
            return torch.ones(len(self.gated), dtype=torch.bool)
        return curriculum_mask(len(self.gated), epoch, speed=self.config.curriculum_speed)

    def learnable(self, epoch: int) -> tuple[int, ...]:
        """Learnable block indices at ``epoch``."""
        return tuple(b for b, on in zip(self.gated, self.mask(epoch).tolist()) if on)

    def logits(self) -> torch.Tensor:
        return policy_logits(self.gates, self.task_names, self.gated)

    def on_epoch_start(self, state: TrainState) -> None:
        set_temperature(self.gates.values(), temperature(state.epoch, self.config.tau0, self.config.tau_decay))

    def extra_loss(self, state: TrainState, outputs: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor | None:
        if state.group != POLICY_GROUP:
            return None
        mask = self.mask(state.epoch)
        # Locked blocks take part as constants: their logits get no gradient and
        # cannot move (they are not in the graph, hence not in the optimizer).
        logits = policy_logits(self.gates, self.task_names, self.gated, trainable=self.learnable(state.epoch))
        c = self.config
        return policy_regularization(
            logits, lambda_sparsity=c.lambda_sparsity, lambda_sharing=c.lambda_sharing, blocks=mask.to(logits.device),
            sparsity_form=c.sparsity_form, sharing_form=c.sharing_form,
        )

    def on_epoch_end(self, state: TrainState) -> Rewrite | None:
        epoch = state.epoch
        logits = self.logits().detach().cpu().clone()
        record: dict[str, Any] = {
            "epoch": epoch,
            "tau": temperature(epoch, self.config.tau0, self.config.tau_decay),
            "learnable": list(self.learnable(epoch)),
            "alpha": execute_probability(logits).tolist(),
            "score": None,
        }
        complete = len(self.learnable(epoch)) == len(self.gated)
        if complete:
            if self.evaluate is not None and self.reference is not None:
                decisions = derive_policy(logits, mode="argmax")
                graph, params = _harden_with(self.backbone, self.task_names, self.gated, decisions, state.params)
                metrics = self.evaluate(graph, params)
                score = _score(metrics, self.reference, self.tasks)
                record.update(score=score, metrics=metrics)
            else:
                score = float(epoch)  # no validation data: the latest policy is the best one
            if score > self.best_score:
                self.best_score, self.best_epoch, self.best_logits = score, epoch, logits
        self.records.append(record)
        following = self.learnable(epoch + 1)
        if following != self.learnable(epoch):
            graph = soft_graph(self.backbone, self.task_names, learnable=following)
            newly = sorted(set(following) - set(self.learnable(epoch)))
            return Rewrite(graph, state.params, {}, note=f"curriculum: unlock block(s) {newly}")
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records, "best_score": self.best_score if math.isfinite(self.best_score) else None,
                "best_epoch": self.best_epoch, "best_logits": self.best_logits}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.records = list(state["records"])
        self.best_score = -math.inf if state["best_score"] is None else float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.best_logits = state["best_logits"]


class _EarlyStop(Hook):
    """Early stopping: evaluate (per-site BatchNorm statistics) every few epochs, restore the best weights at the end.

    With ``keep_best=False`` only the final weights are evaluated.
    """

    def __init__(self, evaluate: Any, reference: Mapping[str, Mapping[str, float]] | None,
                 tasks: Mapping[str, Any], every: int, keep_best: bool) -> None:
        self.evaluate, self.reference, self.tasks = evaluate, reference, tasks
        self.every, self.keep_best = every, keep_best
        self.records: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_state: dict[str, dict[str, torch.Tensor]] | None = None

    @property
    def name(self) -> str:
        return "adashare_retrain"

    def on_epoch_end(self, state: TrainState) -> Rewrite | None:
        # Keeping the last weights needs no evaluation on the way (only the final one).
        if self.evaluate is not None and self.keep_best and (state.epoch + 1) % self.every == 0:
            self._evaluate(state)
        return None

    def _evaluate(self, state: TrainState) -> None:
        metrics = self.evaluate(state.graph, state.params)
        if self.reference is None:
            self.reference = metrics  # the first evaluation is the yardstick of the later ones
        score = _score(metrics, self.reference, self.tasks)
        self.records.append({"epoch": state.epoch, "step": state.step, "score": score, "metrics": metrics})
        if self.keep_best and score > self.best_score:
            self.best_score = score
            self.best_state = {k: {n: t.detach().clone() for n, t in m.state_dict().items()} for k, m in state.params.items()}

    def on_fit_end(self, state: TrainState) -> None:
        if self.evaluate is None:
            return
        if not self.records or self.records[-1]["step"] != state.step:
            self._evaluate(state)  # training stopped inside an epoch: the final weights compete too
        if self.keep_best and self.best_state is not None:
            for key, module in state.params.items():
                module.load_state_dict(self.best_state[key])


# --------------------------------------------------------------------------- phases


def _harden_with(backbone: Backbone, task_names: Sequence[str], gated: Sequence[int], decisions: torch.Tensor,
                 params: ParamStore) -> tuple[MTGraph, ParamStore]:
    """The hardened graph for ``decisions`` running the weights of ``params`` (not fresh copies)."""
    graph, hardened, _ = harden_policy(backbone, {}, task_names, gated, decisions, params=params)
    return graph, hardened


def _check_inputs(backbone: Any, heads: Any, tasks: Any, train_data: Any) -> tuple[str, ...]:
    if not isinstance(backbone, Backbone):
        raise ConfigError(
            f"backbone must be a traced mtgraph.Backbone, got {type(backbone).__name__}; "
            "trace it first: mtgraph.trace(model, example_input)"
        )
    if not isinstance(tasks, Mapping) or not tasks:
        raise ConfigError("tasks must be a non-empty mapping task name -> mtgraph.tasks.Task")
    if not isinstance(heads, Mapping):
        raise ConfigError(f"heads must be a mapping task name -> nn.Module, got {type(heads).__name__}")
    missing = [t for t in tasks if t not in heads]
    if missing:
        raise ConfigError(f"no head for tasks {missing}; heads were given for {list(heads)}")
    if not isinstance(train_data, Dataset):
        raise ConfigError(f"train_data must be a map-style torch Dataset, got {type(train_data).__name__}")
    return tuple(tasks)


def _split(data: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """A fixed split of ``data`` into (1 − fraction, fraction), drawn once from ``seed`` (notes §B.5 item 16)."""
    n = len(data)  # type: ignore[arg-type]
    n_policy = max(1, round(n * fraction))
    if n - n_policy < 1:
        raise ConfigError(f"the training set has {n} samples: too few to split {1 - fraction:.0%} / {fraction:.0%}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(data, order[n_policy:]), Subset(data, order[:n_policy])


def _loss_weights(config: AdaShareConfig, names: Sequence[str]) -> dict[str, float]:
    if config.task_weights is None:
        return {t: 1.0 for t in names}
    unknown = sorted(set(config.task_weights) - set(names))
    missing = [t for t in names if t not in config.task_weights]
    if unknown or missing:
        raise ConfigError(f"AdaShareConfig.task_weights must name every task {list(names)}; missing {missing}, unknown {unknown}")
    return {t: float(config.task_weights[t]) for t in names}


def _turn(steps: int | None, data: Dataset, batch_size: int) -> int:
    n = len(data)  # type: ignore[arg-type]
    return steps if steps is not None else max(1, math.ceil(n / batch_size))


def _retrain_optimizer(config: AdaShareConfig) -> Any:
    return functools.partial(torch.optim.Adam, lr=config.retrain_lr, betas=(0.5, 0.999), weight_decay=1e-4)


def _retrain_scheduler(config: AdaShareConfig) -> Any:
    if config.retrain_lr_step is None:
        return None
    return functools.partial(torch.optim.lr_scheduler.StepLR, step_size=config.retrain_lr_step, gamma=0.5)


@dataclass
class _Retrained:
    graph: MTGraph
    params: ParamStore
    pipeline: str
    calibration_batches: int
    metrics: dict[str, dict[str, float]] | None
    score: float | None
    history: dict[str, Any] = field(default_factory=dict)


def _retrain(backbone: Backbone, heads: Mapping[str, nn.Module], tasks: Mapping[str, Any], names: tuple[str, ...],
             gated: tuple[int, ...], decisions: torch.Tensor, train_data: Dataset, val_data: Dataset | None,
             config: AdaShareConfig, reference: Mapping[str, Mapping[str, float]] | None, seed: int,
             progress: bool) -> _Retrained:
    graph, params, pipeline = harden_policy(backbone, heads, names, gated, decisions)
    evaluate = _evaluator(tasks, train_data, val_data, config, seed)
    early = _EarlyStop(evaluate, reference, tasks, config.retrain_eval_every, config.retrain_select == "best")
    fitted = None
    if config.retrain_steps > 0:
        fitted = fit(
            graph, params, tasks, train_data, steps=config.retrain_steps, epochs=None, batch_size=config.batch_size,
            optimizer=_retrain_optimizer(config), scheduler=_retrain_scheduler(config),
            loss_weights=_loss_weights(config, names), hooks=[early], seed=seed, phase="retrain", progress=progress,
        )
        graph, params = fitted.graph, fitted.params
    # Deployed statistics: every key called from several sites gets a site
    # module in the result's store, so compile, save and export use them.
    params = params.with_site_statistics(graph)
    module = compile_graph(graph, params)
    used = recalibrate(module, (x.to(_device(params)) for x in _images(train_data, config.batch_size, seed)),
                       max_batches=config.calibration_batches)
    metrics = score = None
    if val_data is not None:
        metrics = {t: dict(v) for t, v in evaluate_module(module, tasks, val_data, device=_device(params)).items()}
        score = _score(metrics, reference, tasks) if reference is not None else None
    history = {"losses": fitted.history.losses if fitted else {}, "evaluations": early.records,
               "selected": config.retrain_select}
    return _Retrained(graph, params, pipeline, used, metrics, score, history)


def _evaluator(tasks: Mapping[str, Any], train_data: Dataset, val_data: Dataset | None, config: AdaShareConfig,
               seed: int) -> Any:
    if val_data is None:
        return None
    return functools.partial(evaluate_hard, tasks=tasks, calibration=train_data, data=val_data,
                             batches=config.calibration_batches, batch_size=config.batch_size, seed=seed)


def _site_decision(graph: MTGraph, params: ParamStore, calibration_batches: int) -> Decision:
    shared = shared_bn_sites(graph, params)
    return Decision(
        where="BatchNorm statistics",
        what="per-call-site running statistics",
        accepted=shared > 0,
        reason=(f"{shared} call site(s) reuse a block's weights with different inputs; their BatchNorm statistics were "
                f"re-estimated per site on {calibration_batches} training batches; they are site modules of the "
                "result's ParamStore, so compile, save and ONNX export use them")
        if shared else "every weight key has one call site: the store's own statistics are exact",
        data={"shared_sites": shared, "calibration_batches": calibration_batches},
    )


def _result(strategy: str, backbone: Backbone, names: tuple[str, ...], gated: tuple[int, ...], decisions: torch.Tensor,
            chosen: _Retrained, extra_decisions: Sequence[Decision], logits: torch.Tensor | None,
            history: dict[str, Any]) -> StrategyResult:
    decisions_out = (*extra_decisions, *policy_decisions(backbone, names, gated, decisions, logits),
                     _site_decision(chosen.graph, chosen.params, chosen.calibration_batches))
    figures = policy_figures(logits, names, gated, backbone) if logits is not None else {}
    history = {**history, "retrain": chosen.history, "calibration_batches": chosen.calibration_batches,
               "metrics": chosen.metrics, "score": chosen.score, "decisions": decisions.tolist(), "gated": list(gated)}
    return StrategyResult(strategy=strategy, graph=chosen.graph, params=chosen.params, decisions=tuple(decisions_out),
                          pipeline=chosen.pipeline, figures=figures, history=history)


# --------------------------------------------------------------------------- public entry points


def retrain_policy(
    backbone: Backbone,
    heads: Mapping[str, nn.Module],
    tasks: Mapping[str, Any],
    train_data: Dataset,
    decisions: torch.Tensor,
    *,
    config: AdaShareConfig,
    val_data: Dataset | None = None,
    seed: int = 0,
    progress: bool = False,
) -> StrategyResult:
    """Train the network of a given select-or-skip policy from scratch (AdaShare's second stage).

    ``decisions`` is a bool ``[tasks, gated blocks]`` matrix (True = execute)
    over the backbone's skippable blocks in order, e.g. a random policy for
    the ablations. Uses ``config``'s retrain and calibration options.

    Args:
        backbone: the traced backbone.
        heads: task name -> head module (copied).
        tasks: task name -> :class:`mtgraph.tasks.Task`.
        train_data: map-style dataset of ``(image, {target: tensor})``.
        decisions: bool ``[tasks, gated blocks]`` matrix, True = execute.
        config: the :class:`AdaShareConfig` (retrain and calibration options).
        val_data: early stopping and final metrics (optional).
        seed: seeds the retraining.
        progress: show progress bars.

    Returns:
        A :class:`StrategyResult` with strategy ``"adashare-fixed"``.

    Raises:
        ConfigError: bad inputs or malformed ``decisions``.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.adashare import AdaShareConfig, retrain_policy
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
        >>> tasks = {"seg": segmentation(5, hidden=4), "depth": depth(hidden=4)}
        >>> heads = {name: task.make_head(backbone.output_shape[0], (32, 32)) for name, task in tasks.items()}
        >>> config = AdaShareConfig(epochs=1, curriculum=False, weight_steps=1, policy_steps=1, batch_size=4,
        ...                         warmup_steps=0, retrain_steps=1, calibration_batches=1)
        >>> decisions = torch.ones(2, 8, dtype=torch.bool)
        >>> decisions[1, 6] = False  # depth skips block 7
        >>> result = retrain_policy(backbone, heads, tasks, SceneDataset(8, 32, seed=1), decisions, config=config)
        >>> result.strategy, result.pipeline
        ('adashare-fixed', 'skip{task=depth,block=7},cse,dce')
    """
    names = _check_inputs(backbone, heads, tasks, train_data)
    gated, kept = gated_blocks(backbone)
    reference = None
    chosen = _retrain(backbone, heads, tasks, names, gated, decisions, train_data, val_data, config, reference, seed, progress)
    return _result("adashare-fixed", backbone, names, gated, decisions, chosen, kept, None,
                   {"architectures_tried": 1})


def learn_adashare(
    backbone: Backbone,
    heads: Mapping[str, nn.Module],
    tasks: Mapping[str, Any],
    train_data: Dataset,
    *,
    config: AdaShareConfig,
    val_data: Dataset | None = None,
    seed: int = 0,
    progress: bool = False,
) -> StrategyResult:
    """Learn which blocks each task executes (AdaShare, papers/002) and return the retrained network.

    Args:
        backbone: the traced backbone (:func:`mtgraph.trace`); its skippable
            blocks (identity or projection shortcut) get a policy per task,
            the others are always executed (reported as decisions).
        heads: task name -> head module (copied, never trained in place).
        tasks: task name -> :class:`mtgraph.tasks.Task` (loss, metrics).
        train_data: map-style dataset of ``(image, {target: tensor})``.
        config: the :class:`AdaShareConfig`.
        val_data: selects the best policy (and the retrain's early stop); without
            it the last policy and the last weights are used.
        seed: seeds the data split, every training phase and the sampling.
        progress: show progress bars.

    Returns:
        A :class:`StrategyResult` (strategy ``"adashare"``): the hardened,
        retrained graph and params; decisions per (task, block) with α;
        ``pipeline`` (the ``skip``/``cse``/``dce`` passes from ``one_net``);
        figures ``policy_matrix`` and ``task_correlation``; history with the
        search records (τ, α, validation score per epoch), the best epoch,
        ``architectures_tried``, the retraining, ``calibration_batches`` and
        the final validation metrics. Call sites that reuse a block's weights
        carry their own BatchNorm statistics as site modules of ``params``.

    Raises:
        ConfigError: no skippable block, bad config (a negative λ, ...), or
            too few epochs for the curriculum to unlock every block.

    Examples:
        A search of one epoch without curriculum and a one-step retraining (real runs use the defaults):

        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.adashare import AdaShareConfig, learn_adashare
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
        >>> tasks = {"seg": segmentation(5, hidden=4), "depth": depth(hidden=4)}
        >>> heads = {name: task.make_head(backbone.output_shape[0], (32, 32)) for name, task in tasks.items()}
        >>> config = AdaShareConfig(epochs=1, curriculum=False, weight_steps=1, policy_steps=1, batch_size=4,
        ...                         warmup_steps=0, retrain_steps=1, calibration_batches=1)
        >>> result = learn_adashare(backbone, heads, tasks, SceneDataset(8, 32, seed=1), config=config)
        >>> result.strategy, result.graph.tasks, len(result.history["decisions"][0])  # one decision per gated block
        ('adashare', ('seg', 'depth'), 8)
        >>> learn_adashare(backbone, heads, tasks, SceneDataset(8, 32, seed=1), config=AdaShareConfig(epochs=2))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: the curriculum unlocks one of the 8 gated blocks every 1 epoch(s), ...
    """
    if not isinstance(config, AdaShareConfig):
        raise ConfigError(f"config must be an AdaShareConfig, got {type(config).__name__}")
    names = _check_inputs(backbone, heads, tasks, train_data)
    gated, kept = gated_blocks(backbone)
    needed = config.epochs_to_unlock(len(gated))
    if config.epochs < needed:
        raise ConfigError(
            f"the curriculum unlocks one of the {len(gated)} gated blocks every {config.curriculum_speed} epoch(s), "
            f"so AdaShareConfig.epochs must be >= {needed} to learn every block's policy, got {config.epochs}"
        )
    weights_data, policy_data = _split(train_data, config.policy_fraction, seed)
    n_w = _turn(config.weight_steps, weights_data, config.batch_size)
    n_a = _turn(config.policy_steps, policy_data, config.batch_size)
    warmup = config.warmup_steps if config.warmup_steps is not None else round(config.warmup_fraction * config.epochs * (n_w + n_a))
    loss_weights = _loss_weights(config, names)
    weight_opt = sgd(config.weight_lr, config.weight_momentum, weight_decay=config.weight_decay)

    # The One-Net weights and every gate, in one store.
    gates = make_gates(names, gated, tau=config.tau0)
    full = soft_graph(backbone, names)
    params = ParamStore.create(full, backbone, heads, gates=gates)  # the store holds these gate objects

    # Phase 0: warm-up with hard sharing.
    shared = one_net(backbone.num_blocks, names)
    warm_losses: dict[str, list[float]] = {}
    if warmup > 0:
        warm = fit(shared, params, tasks, train_data, steps=warmup, batch_size=config.batch_size, optimizer=weight_opt,
                   loss_weights=loss_weights, seed=seed, phase="warmup", progress=progress)
        params, warm_losses = warm.params, warm.history.losses
    evaluate = _evaluator(tasks, train_data, val_data, config, seed)
    reference = evaluate(shared, params) if evaluate is not None else None

    # Phase 1: alternate weights (80%) and policy (20%).
    search = _PolicySearch(backbone=backbone, task_names=names, tasks=tasks, gated=gated, gates=gates, config=config,
                           evaluate=evaluate, reference=reference)
    groups = [
        OptimizerGroup(WEIGHTS_GROUP, None, weight_opt, data=weights_data, batch_size=config.batch_size, steps=n_w),
        OptimizerGroup(POLICY_GROUP, lambda key, module: key.startswith("policy."),
                       functools.partial(torch.optim.Adam, lr=config.policy_lr, weight_decay=config.policy_weight_decay),
                       data=policy_data, batch_size=config.batch_size, steps=n_a),
    ]
    start = soft_graph(backbone, names, learnable=search.learnable(0))
    searched = fit(start, params, tasks, train_data, epochs=config.epochs, batch_size=config.batch_size, groups=groups,
                   loss_weights=loss_weights, hooks=[search], seed=seed, phase="search", progress=progress)
    best = search.best_logits if search.best_logits is not None else search.logits().detach().cpu()
    selection = Decision(
        where="policy search",
        what=f"best policy of epoch {search.best_epoch}",
        accepted=True,
        reason=(f"validation score {search.best_score:+.2f}% (primary metrics vs the warmed-up One-Net) was the best "
                f"of the epochs with every block unlocked (from epoch {needed - 1})")
        if reference is not None else "no validation data: the policy of the last epoch is used",
        data={"epoch": search.best_epoch, "score": search.best_score if reference is not None else None},
    )

    # Phase 2: derive and retrain from scratch.
    if config.derive == "argmax":
        candidates = [derive_policy(best, mode="argmax")]
    else:
        generator = torch.Generator().manual_seed(seed)
        draws = [derive_policy(best, mode="sample", generator=generator) for _ in range(config.num_samples)]
        candidates = list({tuple(map(tuple, d.tolist())): d for d in draws}.values())
    tried = []
    for k, decisions in enumerate(candidates):
        tried.append((decisions, _retrain(backbone, heads, tasks, names, gated, decisions, train_data, val_data,
                                          config, reference, seed + k, progress)))
    if len(tried) > 1 and val_data is not None:
        scores = [r.score if r.score is not None else -math.inf for _, r in tried]
        index = max(range(len(tried)), key=scores.__getitem__)
    else:
        index = 0
    decisions, chosen = tried[index]
    sampling = Decision(
        where="derive",
        what=f"{config.derive}: {len(tried)} architecture(s) retrained, kept #{index}",
        accepted=True,
        reason=(f"{config.num_samples} sample(s) drawn, {len(tried)} distinct; best validation score "
                f"{chosen.score:+.2f}%" if config.derive == "sample" and chosen.score is not None
                else "argmax of the best policy (execute iff α >= 0.5)" if config.derive == "argmax"
                else f"{len(tried)} distinct sample(s); no validation data, the first was kept"),
        data={"architectures_tried": len(tried), "scores": [r.score for _, r in tried]},
    )
    history = {
        "warmup": {"steps": warmup, "losses": warm_losses},
        "reference_metrics": reference,
        "search": {"records": search.records, "best_epoch": search.best_epoch,
                   "best_score": search.best_score if reference is not None else None,
                   "best_logits": best.tolist(), "steps_per_epoch": {WEIGHTS_GROUP: n_w, POLICY_GROUP: n_a},
                   "losses": searched.history.losses, "groups": searched.history.groups},
        "architectures_tried": len(tried),
        "candidates": [{"decisions": d.tolist(), "score": r.score, "pipeline": r.pipeline} for d, r in tried],
    }
    return _result("adashare", backbone, names, gated, decisions, chosen, (*kept, selection, sampling), best, history)

