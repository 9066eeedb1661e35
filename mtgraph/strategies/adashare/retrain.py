"""AdaShare's second stage (papers/002 §3.3): train the network of a hard policy from scratch.

The network is built by replaying the policy's pass pipeline (``skip`` per
skipped gate, then ``cse`` and ``dce``) on the One-Net with fresh weights
from the problem (:func:`~mtgraph.strategies.replay`), so the result's
pipeline string is, by construction, what built it. It is trained with Adam
(betas (0.5, 0.999), weight decay 1e-4, as the released code), optionally
early-stopped on validation data, then every weight key called from several
sites gets a site module with its own BatchNorm statistics, re-estimated on
training batches (:mod:`.sites`): compile, save and ONNX export use them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mtgraph.compile import compile as compile_graph
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore
from mtgraph.problem import Problem
from mtgraph.strategies.adashare.config import AdaShareConfig
from mtgraph.strategies.adashare.derive import policy_pipeline
from mtgraph.strategies.adashare.evaluation import calibration_images, relative_score, store_device
from mtgraph.strategies.adashare.search import Evaluator, evaluator
from mtgraph.strategies.adashare.sites import recalibrate
from mtgraph.strategies.adashare.soft_graph import gated_blocks
from mtgraph.strategies.protocol import replay
from mtgraph.train import Hook, Rewrite, TrainState, fit
from mtgraph.train.evaluate import evaluate_module

__all__ = ["Retrained", "retrain_decisions"]


class EarlyStop(Hook):
    """Early stopping: evaluate (per-site BatchNorm statistics) every few epochs, restore the best weights at the end.

    With ``keep_best=False`` only the final weights are evaluated.

    Args:
        evaluate: scores a hard network (None: nothing is evaluated).
        reference: the metrics scores are relative to (None: the first evaluation's).
        tasks: task name -> task (primary metrics).
        every: evaluate every this many epochs.
        keep_best: restore the best evaluation's weights at the end.

    Examples:
        >>> from mtgraph.strategies.adashare.retrain import EarlyStop
        >>> EarlyStop(None, None, {}, every=1, keep_best=True).name
        'adashare_retrain'
    """

    def __init__(self, evaluate: Evaluator | None, reference: Mapping[str, Mapping[str, float]] | None,
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
        assert self.evaluate is not None  # only called with an evaluator
        metrics = self.evaluate(state.graph, state.params)
        if self.reference is None:
            self.reference = metrics  # the first evaluation is the yardstick of the later ones
        score = relative_score(metrics, self.reference, self.tasks)
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


@dataclass
class Retrained:
    """A retrained policy network and what its training measured.

    Attributes:
        decisions: the policy (bool ``[tasks, gated blocks]``, True = execute).
        graph: the network (built from ``one_net`` by ``pipeline``).
        params: its trained weights, with per-site BatchNorm statistics.
        pipeline: the pass pipeline that built ``graph``.
        calibration_batches: batches the per-site statistics were estimated on.
        metrics: validation metrics (None without validation data).
        score: validation score relative to the search's reference (None without one).
        history: losses, evaluations, which weights were kept.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.strategies.adashare import AdaShareConfig, Retrained, retrain_decisions
        >>> problem = mtgraph.toy_problem(("seg", "depth"), blocks=3)
        >>> config = AdaShareConfig(retrain_steps=1, batch_size=2, calibration_batches=1)
        >>> retrained = retrain_decisions(problem, torch.tensor([[False, True], [True, True]]), config)
        >>> isinstance(retrained, Retrained), retrained.decisions.tolist(), retrained.calibration_batches
        (True, [[False, True], [True, True]], 1)
    """

    decisions: torch.Tensor
    graph: MTGraph
    params: ParamStore
    pipeline: str
    calibration_batches: int
    metrics: dict[str, dict[str, float]] | None
    score: float | None
    history: dict[str, Any] = field(default_factory=dict)


def _optimizer(config: AdaShareConfig) -> Any:
    return functools.partial(torch.optim.Adam, lr=config.retrain_lr, betas=(0.5, 0.999), weight_decay=1e-4)


def _scheduler(config: AdaShareConfig) -> Any:
    if config.retrain_lr_step is None:
        return None
    return functools.partial(torch.optim.lr_scheduler.StepLR, step_size=config.retrain_lr_step, gamma=0.5)


def retrain_decisions(
    problem: Problem,
    decisions: torch.Tensor,
    config: AdaShareConfig,
    *,
    reference: Mapping[str, Mapping[str, float]] | None = None,
    seed: int | None = None,
    phase: str = "adashare-retrain",
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Retrained:
    """Build the network of ``decisions`` with fresh weights, train it, and give it per-site statistics.

    Args:
        problem: the problem (backbone, heads, tasks, data).
        decisions: bool ``[tasks, gated blocks]``, True = execute.
        config: the retrain and calibration options.
        reference: validation metrics the score is relative to (the warmed-up One-Net's).
        seed: seeds the training (None: the problem's).
        phase: the fit call's phase name (unique within a checkpointing session).
        device: where to train (None: ``fit``'s choice).
        progress: show a progress bar.

    Returns:
        The :class:`Retrained` network.

    Raises:
        ConfigError: malformed ``decisions``.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.strategies.adashare import AdaShareConfig, retrain_decisions
        >>> problem = mtgraph.toy_problem(("seg", "depth"), blocks=3)
        >>> decisions = torch.tensor([[True, True], [True, False]])  # depth skips block 2
        >>> retrained = retrain_decisions(problem, decisions, AdaShareConfig(retrain_steps=1, batch_size=2,
        ...                                                                 calibration_batches=1))
        >>> retrained.pipeline, sorted(retrained.metrics)
        ('skip{task=depth,block=2},cse,dce', ['depth', 'seg'])
    """
    seed = problem.seed if seed is None else seed
    gated, _ = gated_blocks(problem.backbone)
    pipeline = policy_pipeline(problem.task_names, gated, decisions)
    graph, params = replay(problem, "one_net", pipeline)
    evaluate = evaluator(problem, config, seed)
    early = EarlyStop(evaluate, reference, problem.tasks, config.retrain_eval_every, config.retrain_select == "best")
    fitted = None
    if config.retrain_steps > 0:
        fitted = fit(graph, params, problem.tasks, problem.train_dataset, steps=config.retrain_steps, epochs=None,
                     batch_size=config.batch_size, optimizer=_optimizer(config), scheduler=_scheduler(config),
                     loss_weights=config.loss_weights(problem.task_names), hooks=[early], seed=seed, phase=phase,
                     device=device, progress=progress)
        graph, params = fitted.graph, fitted.params
    # Deployed statistics: every key called from several sites gets a site
    # module in the result's store, so compile, save and export use them.
    params = params.with_site_statistics(graph)
    module = compile_graph(graph, params)
    used = recalibrate(module, (x.to(store_device(params)) for x in calibration_images(problem.train_dataset, config.batch_size, seed)),
                       max_batches=config.calibration_batches)
    metrics = score = None
    if problem.val_data is not None:
        measured = evaluate_module(module, problem.tasks, problem.val_data, device=store_device(params))
        metrics = {t: dict(v) for t, v in measured.items()}
        score = relative_score(metrics, reference, problem.tasks) if reference is not None else None
    history = {"losses": fitted.history.losses if fitted else {}, "evaluations": early.records,
               "selected": config.retrain_select}
    return Retrained(decisions.detach().cpu(), graph, params, pipeline, used, metrics, score, history)
