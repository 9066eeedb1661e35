"""Evaluate a multi-task network: every task's metrics over a whole dataset, as a table.

Metrics come from each task's meter, fed batch by batch, so the numbers do
not depend on the batch size. The network runs in eval mode without
gradients; its train flags are restored afterwards.

A task whose predictions are the same over the whole dataset (a segmentation
head that predicts one class for every pixel, a regression head that outputs
one value) gets a :class:`ConstantPredictionWarning`: its metrics describe a
constant predictor, not a learned one.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtgraph.analysis.macs import evaluation_mode
from mtgraph.compile import compile
from mtgraph.errors import ConfigError, DataError
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore

if TYPE_CHECKING:
    from mtgraph.tasks import Task

__all__ = ["MetricsTable", "ConstantPredictionWarning", "evaluate", "evaluate_module", "check_tasks", "task_targets"]


class ConstantPredictionWarning(UserWarning):
    """A task predicted the same thing for every input of the evaluation data (see the module docstring).

    Examples:
        >>> from mtgraph.train.evaluate import ConstantPredictionWarning
        >>> issubclass(ConstantPredictionWarning, UserWarning)
        True
    """


class _Spread:
    """What one task predicted over a dataset: the classes (label outputs) or the value range (other outputs)."""

    def __init__(self) -> None:
        self.classes: set[int] = set()
        self.low, self.high = float("inf"), float("-inf")
        self.labels = False
        self.samples = 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        output = output.detach()
        self.samples += int(output.shape[0]) if output.dim() else 1
        # Logits over classes, one more dimension than an integer label target: the prediction is the argmax.
        if output.dim() == target.dim() + 1 and not target.is_floating_point() and output.shape[1] > 1:
            self.labels = True
            self.classes.update(int(c) for c in torch.unique(output.argmax(dim=1)).tolist())
        elif output.numel():
            finite = output[torch.isfinite(output)]
            if finite.numel():
                self.low, self.high = min(self.low, float(finite.min())), max(self.high, float(finite.max()))

    def constant(self) -> str | None:
        """How the predictions are constant, in words (None: they vary)."""
        if self.samples < 2:
            return None  # one input cannot tell
        if self.labels:
            return f"one class ({next(iter(self.classes))}) everywhere" if len(self.classes) == 1 else None
        if self.low <= self.high and self.high - self.low <= 1e-6 * max(1.0, abs(self.high), abs(self.low)):
            return f"one value ({self.low:.4g}) everywhere"
        return None


class MetricsTable(dict[str, dict[str, float]]):
    """``{task: {metric: value}}`` whose ``str`` is an aligned table with each metric's direction.

    Args:
        metrics: ``{task: {metric: value}}``.
        directions: ``{task: {metric: higher is better}}`` (shown in the table when given).

    Examples:
        >>> from mtgraph.train import MetricsTable
        >>> table = MetricsTable({"depth": {"rmse": 0.5}}, {"depth": {"rmse": False}})
        >>> table["depth"]["rmse"]
        0.5
        >>> print(table)
        task   metric                  value
        -----  ----------------------  ------
        depth  rmse (lower is better)  0.5000
    """

    def __init__(self, metrics: Mapping[str, Mapping[str, float]], directions: Mapping[str, Mapping[str, bool]] | None = None):
        super().__init__({task: dict(values) for task, values in metrics.items()})
        self.directions = {task: dict(d) for task, d in (directions or {}).items()}

    def __str__(self) -> str:
        rows = [("task", "metric", "value")]
        for task, values in self.items():
            for k, (metric, value) in enumerate(values.items()):
                up = self.directions.get(task, {}).get(metric)
                arrow = "" if up is None else (" (higher is better)" if up else " (lower is better)")
                rows.append((task if k == 0 else "", metric + arrow, f"{value:.4f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}".rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def check_tasks(tasks: Mapping[str, Task], graph_tasks: tuple[str, ...]) -> None:
    """Check that ``tasks`` has exactly the graph's tasks, each under its own name."""
    if not isinstance(tasks, Mapping):
        raise ConfigError(f"tasks must be a mapping task name -> Task, got {type(tasks).__name__}")
    missing = [t for t in graph_tasks if t not in tasks]
    extra = [t for t in tasks if t not in graph_tasks]
    if missing or extra:
        raise ConfigError(
            f"tasks must match the graph's tasks {list(graph_tasks)}: "
            + ", ".join(part for part in (f"missing {missing}" if missing else "", f"unknown {extra}" if extra else "") if part)
        )
    for name, task in tasks.items():
        if getattr(task, "name", name) != name:
            raise ConfigError(f"the task under key {name!r} is named {task.name!r}; key tasks by their name")


def task_targets(tasks: Mapping[str, Task], targets: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """Each task's target tensor from a batch's targets mapping, on ``device``."""
    if not isinstance(targets, Mapping):
        raise DataError(f"a batch must be (images, {{target_name: tensor}}), got targets of type {type(targets).__name__}")
    out = {}
    for name, task in tasks.items():
        key = getattr(task, "target", name)
        if key not in targets:
            raise DataError(f"task {name!r} learns target {key!r}, but the batch has targets {sorted(targets)}")
        out[name] = targets[key].to(device, non_blocking=True)
    return out


def _loader(data: DataLoader | Dataset, batch_size: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset):
        # An own generator: iterating must not draw from the global RNG (a training run's stream).
        return DataLoader(data, batch_size=batch_size, shuffle=False, generator=torch.Generator().manual_seed(0))
    raise ConfigError(f"data must be a torch Dataset or DataLoader, got {type(data).__name__}")


def evaluate_module(
    module: nn.Module,
    tasks: Mapping[str, Task],
    data: DataLoader | Dataset,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    network: str = "",
) -> MetricsTable:
    """Metrics of a compiled multi-task ``module`` (``forward(x) -> {task: tensor}``) over ``data``.

    ``network`` names the network in a :class:`ConstantPredictionWarning` (``"the STN"``).
    """
    if device is None:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
    device = torch.device(device)
    meters = {name: task.new_meter() for name, task in tasks.items()}
    spreads = {name: _Spread() for name in tasks}
    batches = 0
    with evaluation_mode(module):
        for batch in _loader(data, batch_size):
            images, targets = batch
            outputs = module(images.to(device, non_blocking=True))
            for name, target in task_targets(tasks, targets, device).items():
                meters[name].update(outputs[name], target)
                spreads[name].update(outputs[name], target)
            batches += 1
    if not batches:
        raise DataError("evaluation data is empty")
    for name, spread in spreads.items():
        found = spread.constant()
        if found is not None:
            warnings.warn(ConstantPredictionWarning(
                f"task {name!r}{f' of {network}' if network else ''} predicts {found} over all {spread.samples} evaluation inputs: its metrics are those of "
                "a constant predictor (the head has not learned yet; train longer, or check its loss weight and labels)"
            ), stacklevel=2)
    return MetricsTable(
        {name: meter.compute() for name, meter in meters.items()},
        {name: dict(task.higher_is_better) for name, task in tasks.items()},
    )


def evaluate(
    graph: MTGraph,
    params: ParamStore,
    tasks: Mapping[str, Task],
    data: DataLoader | Dataset,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> MetricsTable:
    """Every task's metrics of ``graph`` with ``params`` over ``data``: ``{task: {metric: value}}``.

    ``data`` is a Dataset (read in order, ``batch_size`` at a time) or a
    DataLoader yielding ``(images, {target_name: tensor})``. ``str()`` of the
    result is a table. Parameters are moved to ``device`` if one is given.

    Args:
        graph: the network.
        params: its weights.
        tasks: task name -> :class:`mtgraph.tasks.Task`, exactly the graph's tasks.
        data: Dataset or DataLoader of ``(images, {target_name: tensor})``.
        batch_size: batch size when ``data`` is a Dataset.
        device: where to evaluate (default: where the parameters are).

    Returns:
        A :class:`MetricsTable`.

    Raises:
        ConfigError: ``tasks`` does not match the graph's tasks, or ``data`` is
            neither a Dataset nor a DataLoader.
        DataError: empty data or a batch without a task's target.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth
        >>> from mtgraph.train import evaluate
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()),
        ...                          torch.zeros(2, 3, 32, 32))
        >>> tasks = {"depth": depth(hidden=4)}
        >>> graph = mtgraph.one_net(backbone.num_blocks, ["depth"])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"depth": tasks["depth"].make_head(4, (32, 32))})
        >>> metrics = evaluate(graph, params, tasks, SceneDataset(4, 32, seed=0), batch_size=2)
        >>> sorted(metrics["depth"])
        ['abs_err', 'abs_rel', 'rmse']
        >>> evaluate(graph, params, {}, SceneDataset(4, 32, seed=0))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: tasks must match the graph's tasks ['depth']: missing ['depth']
    """
    check_tasks(tasks, graph.tasks)
    module = compile(graph, params)
    if device is not None:
        module.to(device)
    from mtgraph.train.loop import model_label  # the loop imports this module

    label = model_label(graph, params.backbone.num_blocks)
    return evaluate_module(module, tasks, data, batch_size=batch_size, device=device,
                           network="the " + label if label in ("STN", "One-Net") else f"a {label} network")
