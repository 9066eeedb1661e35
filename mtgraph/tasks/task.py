"""The :class:`Task` value and factories for the standard tasks.

A task bundles what a training loop and an evaluator need to know about one
output of a multi-task network: the name of its output (and of the ONNX
output), which dataset target it learns, how to build its head, its loss and
its metrics with their directions. Tasks are frozen values; build them with
the factories below rather than by hand.

Default metrics per task (``primary`` is the one papers/000 reports and the
one :func:`mtgraph.tasks.delta_mtl` is usually given):

================ ============== ============================================
factory          primary        all metrics (up = higher is better)
================ ============== ============================================
segmentation     miou (up)      miou, pixel_acc (up)
depth            rmse (down)    rmse, abs_rel, abs_err (down)
edges            bce (down)     bce (down), ods_f (up)
normals          cos_sim (up)   cos_sim, within_* (up), angle_mean (down)
autoencoder      mse (down)     mse, mae (down)
regression       mse (down)     mse, mae (down)
classification   accuracy (up)  accuracy (up)
================ ============== ============================================
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from mtgraph.errors import ConfigError
from mtgraph.tasks import losses
from mtgraph.tasks.heads import HeadFactory, classification_head, dense_head
from mtgraph.tasks.metrics import (
    AccuracyMeter,
    DepthMeter,
    EdgeMeter,
    Meter,
    MSEMeter,
    NormalsMeter,
    SegmentationMeter,
)

__all__ = [
    "Task",
    "segmentation",
    "depth",
    "edges",
    "normals",
    "autoencoder",
    "regression",
    "classification",
    "dense_tasks",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# eq=False: tasks hold callables, so equality (and hashing) is by identity.
@dataclass(frozen=True, eq=False)
class Task:
    """One task of a multi-task network.

    Attributes:
        name: output name (dict key of the network's outputs, ONNX output name).
        target: key of the dataset target this task learns.
        make_head: ``(in_channels, out_size) -> nn.Module`` head factory.
        loss: ``(raw output, target) -> scalar`` training loss.
        new_meter: builds an empty :class:`~mtgraph.tasks.metrics.Meter`.
        higher_is_better: direction of every metric the meter reports.
        primary: the metric that summarises the task (papers/000's choice).

    Raises:
        ConfigError: ``name`` is not an identifier, or ``primary`` is not one of
            the ``higher_is_better`` metrics.

    Examples:
        >>> from mtgraph.tasks import depth
        >>> task = depth()
        >>> task.name, task.target, task.primary, task.higher_is_better["rmse"]
        ('depth', 'depth', 'rmse', False)
        >>> head = task.make_head(16, (32, 32))  # in_channels, out_size
        >>> type(head).__name__
        'DenseHead'
    """

    name: str
    target: str
    make_head: HeadFactory
    loss: LossFn
    new_meter: Callable[[], Meter]
    higher_is_better: Mapping[str, bool]
    primary: str

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"task name must be an identifier (it names an output), got {self.name!r}")
        if self.primary not in self.higher_is_better:
            raise ConfigError(
                f"task {self.name!r}: primary metric {self.primary!r} is not one of {sorted(self.higher_is_better)}"
            )
        # A read-only view keeps the frozen value really immutable.
        object.__setattr__(self, "higher_is_better", types.MappingProxyType(dict(self.higher_is_better)))

    def __reduce__(self) -> tuple[type[Task], tuple[object, ...]]:
        # The read-only mapping view cannot be pickled; rebuild from a plain dict so tasks
        # cross process boundaries (process pools, Ray, torchrun workers).
        return (
            Task,
            (self.name, self.target, self.make_head, self.loss, self.new_meter, dict(self.higher_is_better), self.primary),
        )

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Return every metric on one batch (use :attr:`new_meter` to accumulate batches).

        Examples:
            >>> import torch
            >>> from mtgraph.tasks import regression
            >>> regression().metrics(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
            {'mse': 1.0, 'mae': 1.0}
        """
        meter = self.new_meter()
        meter.update(output, target)
        return meter.compute()


def _name(name: str | None, default: str) -> str:
    return default if name is None else name


def segmentation(
    num_classes: int,
    ignore_index: int = -1,
    *,
    class_weights: Sequence[float] | None = None,
    name: str = "seg",
    target: str = "seg",
    hidden: int = 64,
) -> Task:
    """Semantic segmentation into ``num_classes`` labels (background included, if any).

    Args:
        num_classes: number of labels the head predicts, >= 2.
        ignore_index: label of unlabelled pixels (no loss, no metric).
        class_weights: optional loss weight per label (``num_classes`` values
            > 0), e.g. to keep a dominant background from being the only
            label a small network learns; None (the default) is the plain
            cross-entropy. Metrics are never weighted.
        name: the task's output name.
        target: the dataset target it learns.
        hidden: channels of the head's 3x3 conv.

    Returns:
        The task: cross-entropy loss, mIoU (primary) and pixel accuracy.

    Raises:
        ConfigError: ``num_classes < 2``, or ``class_weights`` without one
            positive weight per label.

    Examples:
        >>> from mtgraph.tasks import segmentation
        >>> task = segmentation(5)
        >>> task.name, task.primary, sorted(task.higher_is_better)
        ('seg', 'miou', ['miou', 'pixel_acc'])
        >>> segmentation(1)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: segmentation needs num_classes >= 2, got 1
        >>> segmentation(3, class_weights=[0.2, 1.0])
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: segmentation class_weights needs 3 values > 0 (one per label), got [0.2, 1.0]
    """
    if num_classes < 2:
        raise ConfigError(f"segmentation needs num_classes >= 2, got {num_classes}")
    weights = None
    if class_weights is not None:
        weights = tuple(float(w) for w in class_weights)
        if len(weights) != num_classes or not all(w > 0 and math.isfinite(w) for w in weights):
            raise ConfigError(
                f"segmentation class_weights needs {num_classes} values > 0 (one per label), got {list(class_weights)}"
            )
    return Task(
        name=name,
        target=target,
        make_head=dense_head(num_classes, hidden),
        loss=functools.partial(losses.segmentation_loss, ignore_index=ignore_index, class_weights=weights),
        new_meter=functools.partial(SegmentationMeter, num_classes, ignore_index),
        higher_is_better={"miou": True, "pixel_acc": True},
        primary="miou",
    )


def depth(*, name: str = "depth", target: str = "depth", hidden: int = 64) -> Task:
    """Monocular depth: L1 loss on pixels with a measurement (target > 0).

    Args:
        name: the task's output name.
        target: the dataset target it learns.
        hidden: channels of the head's 3x3 conv.

    Returns:
        The task: RMSE (primary), absolute relative and absolute errors, all lower-is-better.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import depth
        >>> task = depth()
        >>> task.loss(torch.full((1, 1, 2, 2), 3.0), torch.full((1, 1, 2, 2), 2.0)).item()
        1.0
        >>> task.primary, task.higher_is_better[task.primary]
        ('rmse', False)
    """
    return Task(
        name=name,
        target=target,
        make_head=dense_head(1, hidden),
        loss=losses.depth_loss,
        new_meter=DepthMeter,
        higher_is_better={"rmse": False, "abs_rel": False, "abs_err": False},
        primary="rmse",
    )


def edges(
    pos_weight: float = 19.0,
    *,
    num_thresholds: int = 99,
    tolerance: int = 0,
    name: str = "edges",
    target: str = "edges",
    hidden: int = 64,
) -> Task:
    """Semantic edge detection: BCE with edge pixels weighted by ``pos_weight``.

    The default 19 balances edges against non-edges as 0.95 : 0.05, the usual
    weighting for edge maps covering about 5% of the pixels.

    Args:
        pos_weight: weight of edge pixels in the loss, > 0.
        num_thresholds: thresholds the ``ods_f`` metric tries.
        tolerance: matching distance in pixels of ``ods_f``.
        name: the task's output name.
        target: the dataset target it learns.
        hidden: channels of the head's 3x3 conv.

    Returns:
        The task: BCE (primary, lower is better) and the ODS F-measure.

    Raises:
        ConfigError: ``pos_weight <= 0``.

    Examples:
        >>> from mtgraph.tasks import edges
        >>> dict(edges().higher_is_better)
        {'bce': False, 'ods_f': True}
        >>> edges(pos_weight=0)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: edges pos_weight must be > 0, got 0
    """
    if pos_weight <= 0:
        raise ConfigError(f"edges pos_weight must be > 0, got {pos_weight}")
    return Task(
        name=name,
        target=target,
        make_head=dense_head(1, hidden),
        loss=functools.partial(losses.edge_loss, pos_weight=pos_weight),
        new_meter=functools.partial(EdgeMeter, num_thresholds, tolerance),
        higher_is_better={"bce": False, "ods_f": True},
        primary="bce",
    )


def normals(*, name: str = "normals", target: str = "normals", hidden: int = 64) -> Task:
    """Surface normals: ``1 - cos`` loss of normalised predictions.

    Args:
        name: the task's output name.
        target: the dataset target it learns.
        hidden: channels of the head's 3x3 conv.

    Returns:
        The task: 3 output channels, cosine similarity as its primary metric.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import normals
        >>> task = normals()
        >>> task.make_head(8, (16, 16))(torch.randn(1, 8, 4, 4)).shape
        torch.Size([1, 3, 16, 16])
        >>> task.primary
        'cos_sim'
    """
    return Task(
        name=name,
        target=target,
        make_head=dense_head(3, hidden),
        loss=losses.normals_loss,
        new_meter=NormalsMeter,
        higher_is_better={
            "cos_sim": True,
            "angle_mean": False,
            "within_11_25": True,
            "within_22_5": True,
            "within_30": True,
        },
        primary="cos_sim",
    )


def autoencoder(*, channels: int = 3, name: str = "autoencoder", target: str = "image", hidden: int = 64) -> Task:
    """Reconstruct the input image (target ``image``) with an MSE loss.

    Args:
        channels: channels of the image.
        name: the task's output name.
        target: the dataset target it learns (the datasets' copy of the input).
        hidden: channels of the head's 3x3 conv.

    Returns:
        A :func:`regression` task named ``autoencoder``.

    Examples:
        >>> from mtgraph.tasks import autoencoder
        >>> task = autoencoder()
        >>> task.name, task.target, task.primary
        ('autoencoder', 'image', 'mse')
    """
    return regression(channels, name=name, target=target, hidden=hidden)


def regression(channels: int = 1, *, name: str = "unrelated", target: str | None = None, hidden: int = 64) -> Task:
    """Dense regression of a ``channels``-channel map with an MSE loss.

    The default name is the generated scenes' deliberately unrelated task.

    Args:
        channels: channels of the regressed map.
        name: the task's output name.
        target: the dataset target it learns (default: ``name``).
        hidden: channels of the head's 3x3 conv.

    Returns:
        The task: MSE loss, ``mse`` (primary) and ``mae`` metrics.

    Examples:
        >>> from mtgraph.tasks import regression
        >>> task = regression(2, name="flow")
        >>> task.name, task.target, dict(task.higher_is_better)
        ('flow', 'flow', {'mse': False, 'mae': False})
    """
    return Task(
        name=name,
        target=_name(target, name),
        make_head=dense_head(channels, hidden),
        loss=losses.mse_loss,
        new_meter=MSEMeter,
        higher_is_better={"mse": False, "mae": False},
        primary="mse",
    )


def classification(num_classes: int, target: str = "dominant", *, name: str | None = None) -> Task:
    """Image-level classification of ``target`` (e.g. the scenes' ``dominant`` or ``count``).

    Args:
        num_classes: number of classes, >= 2.
        target: the dataset target it learns.
        name: the task's output name (default: ``target``).

    Returns:
        The task: a pooled linear head, cross-entropy loss and accuracy.

    Raises:
        ConfigError: ``num_classes < 2``.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import classification
        >>> task = classification(5)
        >>> task.name, task.primary
        ('dominant', 'accuracy')
        >>> task.make_head(16, (32, 32))(torch.randn(2, 16, 4, 4)).shape
        torch.Size([2, 5])
    """
    if num_classes < 2:
        raise ConfigError(f"classification needs num_classes >= 2, got {num_classes}")
    return Task(
        name=_name(name, target),
        target=target,
        make_head=classification_head(num_classes),
        loss=losses.classification_loss,
        new_meter=AccuracyMeter,
        higher_is_better={"accuracy": True},
        primary="accuracy",
    )


_DENSE = ("seg", "depth", "edges", "normals", "autoencoder")


def dense_tasks(seg_classes: int, names: Sequence[str] = _DENSE, *, ignore_index: int = -1) -> dict[str, Task]:
    """The five dense tasks of papers/000 (S, D, E, N, A), or the subset ``names``.

    ``seg_classes`` counts every label the segmentation predicts; for the
    generated scenes that is ``SceneConfig.seg_classes`` (objects + background).

    Args:
        seg_classes: labels the segmentation task predicts.
        names: which of ``seg``, ``depth``, ``edges``, ``normals``, ``autoencoder`` to build.
        ignore_index: label of unlabelled pixels for segmentation.

    Returns:
        ``{name: Task}`` in the order of ``names``.

    Raises:
        ConfigError: an unknown task name.

    Examples:
        >>> from mtgraph.tasks import dense_tasks
        >>> list(dense_tasks(5))
        ['seg', 'depth', 'edges', 'normals', 'autoencoder']
        >>> {name: task.primary for name, task in dense_tasks(5, ["seg", "depth"]).items()}
        {'seg': 'miou', 'depth': 'rmse'}
    """
    unknown = [n for n in names if n not in _DENSE]
    if unknown:
        raise ConfigError(f"unknown dense task(s) {unknown}; known: {', '.join(_DENSE)}")
    factories = {
        "seg": lambda: segmentation(seg_classes, ignore_index),
        "depth": depth,
        "edges": edges,
        "normals": normals,
        "autoencoder": autoencoder,
    }
    return {n: factories[n]() for n in names}
