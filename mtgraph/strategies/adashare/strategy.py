"""The AdaShare strategy end to end: search, derive, retrain, and the evidence of the result.

1. **Search** (:mod:`.search`): hard-sharing warm-up, then the alternating
   weight/policy search with curriculum and annealed temperature.
2. **Derive**: the best logits are hardened (argmax, or several samples).
3. **Retrain** (:mod:`.retrain`) from scratch: the policy's network is the
   One-Net rewritten by ``skip`` passes plus ``cse``/``dce``; trained, then
   given per-site BatchNorm statistics.

:func:`run_adashare` is what :class:`~mtgraph.strategies.adashare.entry.AdaShareStrategy`
runs; :func:`learn_adashare` and :func:`retrain_policy` are the entry points of
the previous release, kept for one release as thin wrappers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mtgraph.errors import ConfigError
from mtgraph.frontend.backbone import Backbone
from mtgraph.problem import Problem
from mtgraph.strategies.adashare.config import AdaShareConfig
from mtgraph.strategies.adashare.derive import policy_decisions, policy_figures
from mtgraph.strategies.adashare.evidence import hamming_matrix
from mtgraph.strategies.adashare.policy import derive_policy
from mtgraph.strategies.adashare.retrain import Retrained, retrain_decisions
from mtgraph.strategies.adashare.search import search_policy
from mtgraph.strategies.adashare.sites import shared_bn_sites
from mtgraph.strategies.adashare.soft_graph import gated_blocks
from mtgraph.strategies.result import Curve, Decision, StrategyResult

__all__ = ["run_adashare", "run_fixed_policy", "learn_adashare", "retrain_policy"]


def _device(problem: Problem, config: AdaShareConfig) -> torch.device | str | None:
    return config.device if config.device is not None else problem.device


def _check_config(config: Any) -> AdaShareConfig:
    if not isinstance(config, AdaShareConfig):
        raise ConfigError(f"config must be an AdaShareConfig, got {type(config).__name__}")
    return config


def _site_decision(chosen: Retrained) -> Decision:
    shared = shared_bn_sites(chosen.graph, chosen.params)
    return Decision(
        where="BatchNorm statistics",
        what="per-call-site running statistics",
        accepted=shared > 0,
        reason=(f"{shared} call site(s) reuse a block's weights with different inputs; their BatchNorm statistics were "
                f"re-estimated per site on {chosen.calibration_batches} training batches; they are site modules of the "
                "result's ParamStore, so compile, save and ONNX export use them")
        if shared else "every weight key has one call site: the store's own statistics are exact",
        data={"shared_sites": shared, "calibration_batches": chosen.calibration_batches},
    )


def _search_curves(records: Sequence[Mapping[str, Any]], tasks: Sequence[str], gated: Sequence[int]) -> dict[str, Curve]:
    """α of every gate, the gradient balance and the validation score over the search's epochs."""
    epochs = tuple(float(r["epoch"]) for r in records)
    alpha = {f"{t} b{b}": tuple(r["alpha"][k][j] for r in records) for k, t in enumerate(tasks) for j, b in enumerate(gated)}
    curves = {"policy_over_epochs": Curve("P(execute) of every gate over the search", "epoch", "α", epochs, alpha)}
    balance = {label: tuple((r.get("gradients") or {}).get(label, math.nan) for r in records)
               for label in ("task", "sparsity", "sharing")}
    curves["gradient_balance"] = Curve("mean |gradient| on the learnable execute logits", "epoch",
                                       "mean |∂/∂ logit|", epochs, balance)
    score = tuple(math.nan if r["score"] is None else r["score"] for r in records)
    if any(not math.isnan(s) for s in score):
        curves["search_score"] = Curve("validation score of the argmax policy (vs the warmed-up One-Net)", "epoch",
                                       "score (%)", epochs, {"score": score})
    return curves


def _result(strategy: str, problem: Problem, gated: tuple[int, ...], chosen: Retrained, decisions: Sequence[Decision],
            logits: torch.Tensor | None, history: dict[str, Any]) -> StrategyResult:
    names = problem.task_names
    log = (*decisions, *policy_decisions(problem.backbone, names, gated, chosen.decisions, logits), _site_decision(chosen))
    figures: dict[str, Any] = {"policy_hamming": hamming_matrix(chosen.decisions, names)}
    if logits is not None:
        figures.update(policy_figures(logits, names, gated, problem.backbone))
        figures.update(_search_curves(history["search"]["records"], names, gated))
    history = {**history, "retrain": chosen.history, "calibration_batches": chosen.calibration_batches,
               "metrics": chosen.metrics, "score": chosen.score, "decisions": chosen.decisions.tolist(),
               "gated": list(gated)}
    return StrategyResult(strategy=strategy, graph=chosen.graph, params=chosen.params, decisions=tuple(log),
                          pipeline=chosen.pipeline, figures=figures, history=history, start="one_net")


def run_adashare(problem: Problem, config: AdaShareConfig, *, progress: bool = False) -> StrategyResult:
    """Learn which blocks each task executes (AdaShare, papers/002) and return the retrained network.

    Fit calls (phase names): ``"adashare-warmup"``, ``"adashare-search"``,
    then ``"adashare-retrain"`` (``"adashare-retrain-k"`` for the k-th of
    several sampled policies).

    Args:
        problem: the problem; its skippable blocks (identity or projection
            shortcut) get a policy per task, the others are always executed
            (reported as decisions). Its validation data selects the best
            policy and the retraining's best weights; without it the last
            policy and the last weights are used.
        config: the :class:`~mtgraph.strategies.adashare.AdaShareConfig`.
        progress: show progress bars.

    Returns:
        A :class:`~mtgraph.strategies.result.StrategyResult` (strategy
        ``"adashare"``, start ``"one_net"``): the retrained network, whose
        ``pipeline`` rebuilds its graph from the One-Net; decisions per
        (task, block) with α, the search's selection, gradient balance and
        undecided gates, the per-site statistics; figures (``policy_matrix``,
        ``task_correlation``, ``policy_hamming`` heatmaps; ``policy_over_epochs``,
        ``gradient_balance``, ``search_score`` curves); history (the search
        records, the candidates, the retraining, the final validation metrics).

    Raises:
        ConfigError: no skippable block, a bad config, or too few epochs for
            the curriculum to unlock every block.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.adashare import AdaShareConfig, run_adashare
        >>> problem = mtgraph.toy_problem(("seg", "depth"), blocks=3, samples=8)
        >>> config = AdaShareConfig(epochs=2, weight_steps=1, policy_steps=1, batch_size=4, warmup_steps=1,
        ...                         retrain_steps=1, calibration_batches=1, decided_margin=0.0)
        >>> result = run_adashare(problem, config)
        >>> result.strategy, result.start, result.pipeline.endswith("cse,dce")
        ('adashare', 'one_net', True)
    """
    config = _check_config(config)
    device = _device(problem, config)
    gated, kept = gated_blocks(problem.backbone)
    outcome = search_policy(problem, config, device=device, progress=progress)
    if config.derive == "argmax":
        candidates = [derive_policy(outcome.logits, mode="argmax")]
    else:
        generator = torch.Generator().manual_seed(problem.seed)
        draws = [derive_policy(outcome.logits, mode="sample", generator=generator) for _ in range(config.num_samples)]
        candidates = list({tuple(map(tuple, d.tolist())): d for d in draws}.values())
    tried = [
        retrain_decisions(problem, decisions, config, reference=outcome.reference, seed=problem.seed + k,
                          phase="adashare-retrain" if len(candidates) == 1 else f"adashare-retrain-{k}",
                          device=device, progress=progress)
        for k, decisions in enumerate(candidates)
    ]
    if len(tried) > 1 and problem.val_data is not None:
        scores = [r.score if r.score is not None else -math.inf for r in tried]
        index = max(range(len(tried)), key=scores.__getitem__)
    else:
        index = 0
    chosen = tried[index]
    sampling = Decision(
        where="derive",
        what=f"{config.derive}: {len(tried)} architecture(s) retrained, kept #{index}",
        accepted=True,
        reason=(f"{config.num_samples} sample(s) drawn, {len(tried)} distinct; best validation score "
                f"{chosen.score:+.2f}%" if config.derive == "sample" and chosen.score is not None
                else "argmax of the best policy (execute iff α >= 0.5)" if config.derive == "argmax"
                else f"{len(tried)} distinct sample(s); no validation data, the first was kept"),
        data={"architectures_tried": len(tried), "scores": [r.score for r in tried]},
    )
    history = {
        **outcome.history,
        "reference_metrics": outcome.reference,
        "architectures_tried": len(tried),
        "candidates": [{"decisions": r.decisions.tolist(), "score": r.score, "pipeline": r.pipeline} for r in tried],
    }
    return _result("adashare", problem, gated, chosen, (*kept, *outcome.decisions, sampling), outcome.logits, history)


def run_fixed_policy(problem: Problem, decisions: torch.Tensor, config: AdaShareConfig, *,
                     progress: bool = False) -> StrategyResult:
    """Train the network of a given select-or-skip policy from scratch (AdaShare's second stage alone).

    ``decisions`` is a bool ``[tasks, gated blocks]`` matrix (True = execute)
    over the backbone's skippable blocks in order, e.g. a random policy of an
    ablation. Uses ``config``'s retrain and calibration options; one fit call,
    ``"adashare-retrain"``.

    Args:
        problem: the problem.
        decisions: bool ``[tasks, gated blocks]``, True = execute.
        config: the retrain and calibration options.
        progress: show a progress bar.

    Returns:
        A :class:`~mtgraph.strategies.result.StrategyResult` with strategy ``"adashare-fixed"``.

    Raises:
        ConfigError: a bad config or malformed ``decisions``.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.strategies.adashare import AdaShareConfig, run_fixed_policy
        >>> problem = mtgraph.toy_problem(("seg", "depth"), blocks=3)
        >>> decisions = torch.tensor([[True, True], [True, False]])  # depth skips block 2
        >>> result = run_fixed_policy(problem, decisions, AdaShareConfig(retrain_steps=1, batch_size=2,
        ...                                                             calibration_batches=1))
        >>> result.strategy, result.pipeline
        ('adashare-fixed', 'skip{task=depth,block=2},cse,dce')
    """
    config = _check_config(config)
    gated, kept = gated_blocks(problem.backbone)
    chosen = retrain_decisions(problem, decisions, config, device=_device(problem, config), progress=progress)
    return _result("adashare-fixed", problem, gated, chosen, kept, None, {"architectures_tried": 1})


# --------------------------------------------------------------------------- the previous release's entry points


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
    """AdaShare on separate arguments. **Kept for one release**: use ``registry()["adashare"].learn(problem, config)``.

    Builds the :class:`~mtgraph.Problem` (which validates the inputs) and runs
    :func:`run_adashare` on it.

    Args:
        backbone: the traced backbone.
        heads: task name -> head module (copied, never trained in place).
        tasks: task name -> :class:`mtgraph.tasks.Task`.
        train_data: map-style dataset of ``(image, {target: tensor})``.
        config: the :class:`~mtgraph.strategies.adashare.AdaShareConfig`.
        val_data: validation data (optional).
        seed: seeds the data split, every training phase and the sampling.
        progress: show progress bars.

    Returns:
        See :func:`run_adashare`.

    Raises:
        ConfigError: bad inputs (see :class:`~mtgraph.Problem`) or config.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.adashare import AdaShareConfig, learn_adashare
        >>> p = mtgraph.toy_problem(("seg", "depth"), blocks=3, samples=8)
        >>> config = AdaShareConfig(epochs=2, weight_steps=1, policy_steps=1, batch_size=4, warmup_steps=1,
        ...                         retrain_steps=1, calibration_batches=1, decided_margin=0.0)
        >>> learn_adashare(p.backbone, p.heads, p.tasks, p.train_data, config=config).strategy
        'adashare'
    """
    _check_config(config)
    problem = Problem(backbone, heads, tasks, train_data, val_data=val_data, seed=seed)
    return run_adashare(problem, config, progress=progress)


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
    """A given policy's network trained from scratch. **Kept for one release**: use :func:`run_fixed_policy`.

    Args:
        backbone: the traced backbone.
        heads: task name -> head module (copied).
        tasks: task name -> :class:`mtgraph.tasks.Task`.
        train_data: map-style dataset of ``(image, {target: tensor})``.
        decisions: bool ``[tasks, gated blocks]`` matrix, True = execute.
        config: the retrain and calibration options.
        val_data: early stopping and final metrics (optional).
        seed: seeds the retraining.
        progress: show progress bars.

    Returns:
        See :func:`run_fixed_policy`.

    Raises:
        ConfigError: bad inputs or malformed ``decisions``.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.strategies.adashare import AdaShareConfig, retrain_policy
        >>> p = mtgraph.toy_problem(("seg", "depth"), blocks=3)
        >>> config = AdaShareConfig(retrain_steps=1, batch_size=2, calibration_batches=1)
        >>> retrain_policy(p.backbone, p.heads, p.tasks, p.train_data, torch.ones(2, 2, dtype=torch.bool),
        ...                config=config).pipeline
        'cse,dce'
    """
    _check_config(config)
    problem = Problem(backbone, heads, tasks, train_data, val_data=val_data, seed=seed)
    return run_fixed_policy(problem, decisions, config, progress=progress)
