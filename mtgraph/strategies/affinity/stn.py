"""Step 1 of papers/001: the single-task networks (:func:`train_stn`), and the training length of a phase."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from mtgraph.errors import DataError
from mtgraph.ir.builders import stn
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore
from mtgraph.problem import Problem
from mtgraph.strategies.affinity.config import AffinityConfig
from mtgraph.train import FitResult, adam, fit

__all__ = ["TrainedSTN", "train_stn", "train_phase", "training_steps", "device_of"]

#: The checkpoint phase names of the strategy's two fit calls.
STN_PHASE = "affinity-stn"
TREE_PHASE = "affinity-tree"


class TrainedSTN(NamedTuple):
    """Single-task networks: the STN graph, its trained weights and the training history (None if not trained).

    Examples:
        With ``stn_epochs=0`` :func:`train_stn` returns the untrained networks:

        >>> import mtgraph
        >>> from mtgraph.strategies.affinity import AffinityConfig, train_stn
        >>> problem = mtgraph.toy_problem(blocks=3)
        >>> trained = train_stn(problem, AffinityConfig(stn_epochs=0))
        >>> trained.graph == mtgraph.stn(3, ("seg", "depth")), trained.history
        (True, None)
    """

    graph: MTGraph
    params: ParamStore
    history: dict[str, Any] | None


def training_steps(data: Dataset | DataLoader, epochs: float, batch_size: int) -> int:
    """Optimizer steps of ``epochs`` passes over ``data`` (at least one when ``epochs > 0``).

    Raises:
        DataError: a DataLoader that yields no batch.

    Examples:
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.strategies.affinity import training_steps
        >>> training_steps(SceneDataset(10, size=32), 1.5, 4), training_steps(SceneDataset(10, size=32), 0, 4)
        (4, 0)
    """
    if epochs <= 0:
        return 0
    per_epoch = len(data) if isinstance(data, DataLoader) else math.ceil(len(data) / batch_size)  # type: ignore[arg-type]
    if per_epoch < 1:
        raise DataError("the training data yields no batch")
    return max(1, round(epochs * per_epoch))


def device_of(problem: Problem, config: AffinityConfig) -> torch.device | None:
    """Where the strategy trains: the config's device, else the problem's (None: ``fit``'s choice).

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.affinity import AffinityConfig, device_of
        >>> device_of(mtgraph.toy_problem(), AffinityConfig(device="cpu"))
        device(type='cpu')
    """
    return torch.device(config.device) if config.device is not None else problem.device


def train_phase(
    problem: Problem,
    config: AffinityConfig,
    graph: MTGraph,
    params: ParamStore,
    *,
    epochs: float,
    phase: str,
    progress: bool = False,
    loss_weights: dict[str, float] | None = None,
) -> FitResult | None:
    """One fit call of the strategy: ``epochs`` epochs of Adam (``config.lr``, ``config.batch_size``), None if 0 steps.

    Args:
        problem: tasks, training data, seed and device.
        config: learning rate, batch size and device.
        graph: the network to train.
        params: its weights (trained in place).
        epochs: how long (rounded to steps, at least one when > 0).
        phase: the fit call's checkpoint phase name (unique within a run).
        progress: show a progress bar.
        loss_weights: per-task loss weights (None: ``fit``'s default, the mean).

    Returns:
        ``fit``'s result, or None when ``epochs`` gives no step.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.affinity import AffinityConfig, train_phase
        >>> problem = mtgraph.toy_problem()
        >>> graph = mtgraph.one_net(2, problem.task_names)
        >>> params = mtgraph.ParamStore.create(graph, problem.backbone, problem.heads)
        >>> train_phase(problem, AffinityConfig(), graph, params, epochs=0, phase="nothing") is None
        True
    """
    steps = training_steps(problem.train_data, epochs, config.batch_size)
    if steps == 0:
        return None
    return fit(
        graph,
        params,
        problem.tasks,
        problem.train_data,
        steps=steps,
        batch_size=config.batch_size,
        optimizer=adam(config.lr),
        loss_weights=loss_weights,
        seed=problem.seed,
        phase=phase,
        progress=progress,
        device=device_of(problem, config),
    )


def train_stn(problem: Problem, config: AffinityConfig | None = None, *, progress: bool = False) -> TrainedSTN:
    """Train the single-task networks ``stn(num_blocks, tasks)`` for ``config.stn_epochs`` epochs.

    Every task's loss has weight 1 and the networks share no parameter, so
    each one gets exactly the gradient it would get trained alone (Adam,
    ``config.lr``, ``config.batch_size``, the same batches for all, seeded
    by the problem). The fit phase is named ``"affinity-stn"``.

    Args:
        problem: backbone, heads, tasks, training data, seed and device.
        config: uses ``stn_epochs``, ``lr``, ``batch_size`` and ``device`` (None: the defaults).
        progress: show a progress bar.

    Returns:
        The :class:`TrainedSTN` (``history`` None when ``stn_epochs`` is 0).

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.affinity import AffinityConfig, train_stn
        >>> problem = mtgraph.toy_problem(blocks=3)
        >>> trained = train_stn(problem, AffinityConfig(stn_epochs=1, batch_size=4))
        >>> trained.params["b0.seg"] is not trained.params["b0.depth"], len(trained.history["total"])  # one step
        (True, 1)
    """
    config = AffinityConfig() if config is None else config
    graph = stn(problem.backbone.num_blocks, problem.task_names)
    params = ParamStore.create(graph, problem.backbone, problem.heads)
    # Weight 1 per task (not the mean): each network gets the gradient it would get trained alone.
    fitted = train_phase(problem, config, graph, params, epochs=config.stn_epochs, phase=STN_PHASE, progress=progress,
                         loss_weights={t: 1.0 for t in problem.task_names})
    if fitted is None:
        return TrainedSTN(graph, params, None)
    return TrainedSTN(fitted.graph, fitted.params, fitted.history.to_state())
