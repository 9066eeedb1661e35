"""Evaluating an AdaShare network with hard decisions: BatchNorm statistics per call site, then metrics.

A block called from several sites with different inputs must not be
evaluated with one mixed set of running statistics (DESIGN.md "Weights vs
call sites"): every hard evaluation here (the best-policy score of the
search, the retraining's early stop, the final metrics) compiles the network
with per-site statistics re-estimated on training batches (:mod:`.sites`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.fx as fx
from torch.utils.data import DataLoader, Dataset

from mtgraph.compile import compile as compile_graph
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore
from mtgraph.strategies.adashare.sites import recalibrate
from mtgraph.train.evaluate import evaluate_module

__all__ = ["adashare_module", "evaluate_hard", "relative_score"]


def calibration_images(data: Dataset, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Images of ``data`` in a fixed shuffled order (an own generator: the global RNG is not touched)."""
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    for images, _ in loader:
        yield images


def store_device(params: ParamStore) -> torch.device:
    """Where the store's parameters live (CPU for a store without parameters)."""
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
    device = store_device(params)
    used = recalibrate(module, (x.to(device) for x in calibration_images(calibration, batch_size, seed)), max_batches=batches)
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
        metrics = evaluate_module(module, tasks, data, batch_size=64, device=store_device(params))
    return {t: dict(v) for t, v in metrics.items()}


def relative_score(metrics: Mapping[str, Mapping[str, float]], reference: Mapping[str, Mapping[str, float]],
                   tasks: Mapping[str, Any]) -> float:
    """Mean relative change (percent) of each task's primary metric over ``reference``, signed so higher is better.

    The best-policy score of the search and the retraining's early stop (the
    released code's "normalised metric ratios", as a relative change).

    Args:
        metrics: ``{task: {metric: value}}`` to score.
        reference: the same for the reference network (the warmed-up One-Net).
        tasks: task name -> :class:`mtgraph.tasks.Task` (primary metric, direction).

    Returns:
        The mean over tasks, in percent.

    Examples:
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.adashare import relative_score
        >>> tasks = {"seg": segmentation(3), "depth": depth()}
        >>> reference = {"seg": {"miou": 0.5}, "depth": {"rmse": 0.2}}
        >>> round(relative_score({"seg": {"miou": 0.55}, "depth": {"rmse": 0.2}}, reference, tasks), 6)  # +10 % and 0 %
        5.0
    """
    terms = []
    for name, task in tasks.items():
        metric = task.primary
        sign = 1.0 if task.higher_is_better[metric] else -1.0
        ref = reference[name][metric]
        terms.append(sign * (metrics[name][metric] - ref) / max(abs(ref), 1e-12))
    return 100.0 * sum(terms) / len(terms)
