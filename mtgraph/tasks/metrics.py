"""Metric accumulators (meters): feed batches with ``update``, read ``compute`` once.

A meter keeps the sufficient statistics of its metrics over a whole dataset,
so the result does not depend on how the data is cut into batches: mIoU comes
from one confusion matrix, RMSE from one sum of squares over all valid pixels,
the edge F-measure from per-threshold counts over the dataset (the "optimal
dataset scale" convention), and so on. Every meter takes the *raw head output*
(logits, unnormalised normals) and the target exactly as the datasets return
them, batched. Ratios are fractions (mIoU 0.35, not 35); angles are in degrees.
``compute`` on a meter that saw no valid element returns NaN for its metrics.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F

from mtgraph.errors import ConfigError

__all__ = [
    "Meter",
    "SegmentationMeter",
    "DepthMeter",
    "EdgeMeter",
    "NormalsMeter",
    "MSEMeter",
    "AccuracyMeter",
]


class Meter(Protocol):
    """Accumulates one task's metrics over batches.

    Every task's ``new_meter()`` returns one; the metrics it reports are the
    task's ``higher_is_better`` keys.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import depth
        >>> meter = depth().new_meter()
        >>> meter.update(torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0))
        >>> meter.compute()["rmse"]
        1.0
        >>> meter.reset()
        >>> meter.compute()["rmse"]  # no batch since the reset
        nan
    """

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: the head's raw ``output`` and the batched ``target``."""

    def compute(self) -> dict[str, float]:
        """Return every metric over all batches seen since the last reset."""

    def reset(self) -> None:
        """Forget every batch seen."""


def _check_shape(meter: str, output: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(output.shape) != tuple(expected):
        raise ConfigError(
            f"{meter}: output shape {list(output.shape)} does not fit the target; expected {list(expected)}"
        )


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


class SegmentationMeter:
    """mIoU and pixel accuracy from a dataset-wide confusion matrix.

    ``output`` is ``[N, C, H, W]`` logits (or ``[N, H, W]`` predicted labels),
    ``target`` is ``[N, H, W]`` labels with ``ignore_index`` for unlabelled
    pixels, which count nowhere. A class absent from both predictions and
    targets over the whole dataset has no IoU and is left out of the mean.

    Args:
        num_classes: number of labels ``0..num_classes-1``.
        ignore_index: label of unlabelled pixels.

    Raises:
        ConfigError: (from ``update``) an output shape that does not fit the
            target, or a target label outside ``0..num_classes-1``.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import SegmentationMeter
        >>> meter = SegmentationMeter(num_classes=2)
        >>> meter.update(torch.tensor([[[0, 1], [1, 1]]]), torch.tensor([[[0, 1], [0, -1]]]))  # predicted labels
        >>> {k: round(v, 3) for k, v in meter.compute().items()}
        {'miou': 0.5, 'pixel_acc': 0.667}
    """

    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen."""
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch to the confusion matrix (rows: target, columns: prediction)."""
        target = target.detach().cpu()
        output = output.detach().cpu()
        if output.dim() == target.dim() + 1:
            _check_shape("segmentation", output, (target.shape[0], self.num_classes, *target.shape[1:]))
            output = output.argmax(dim=1)
        _check_shape("segmentation", output, tuple(target.shape))
        valid = target != self.ignore_index
        truth, pred = target[valid].long(), output[valid].long()
        if truth.numel() and (truth.min() < 0 or truth.max() >= self.num_classes):
            raise ConfigError(
                f"segmentation: target labels must be in 0..{self.num_classes - 1} "
                f"or {self.ignore_index}, found {int(truth.min())}..{int(truth.max())}"
            )
        pred = pred.clamp(0, self.num_classes - 1)
        counts = torch.bincount(truth * self.num_classes + pred, minlength=self.num_classes**2)
        self.confusion += counts.reshape(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, float]:
        """Return ``miou`` and ``pixel_acc``."""
        confusion = self.confusion.double()
        hits = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - hits
        present = union > 0
        miou = (hits[present] / union[present]).mean().item() if present.any() else math.nan
        return {
            "miou": miou,
            "pixel_acc": _ratio(hits.sum().item(), confusion.sum().item()),
        }

    def class_iou(self) -> list[float]:
        """Return the IoU of every label ``0..num_classes-1`` (NaN for a label absent from predictions and targets).

        Reported beside :meth:`compute`, not in it, so that Δ_MTL keeps
        averaging the same two segmentation metrics.

        Examples:
            >>> import torch
            >>> from mtgraph.tasks import SegmentationMeter
            >>> meter = SegmentationMeter(num_classes=3)
            >>> meter.update(torch.tensor([[[0, 1], [1, 1]]]), torch.tensor([[[0, 1], [0, 1]]]))
            >>> [round(v, 3) for v in meter.class_iou()]  # label 2 never occurs
            [0.5, 0.667, nan]
        """
        confusion = self.confusion.double()
        hits = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - hits
        return [hits[k].item() / union[k].item() if union[k] > 0 else math.nan for k in range(self.num_classes)]


class DepthMeter:
    """RMSE, absolute relative error and mean absolute error over valid pixels.

    A pixel is valid where the target depth is > 0 (0 marks a missing
    measurement). Errors are pooled over all valid pixels of the dataset.

    Raises:
        ConfigError: (from ``update``) output and target shapes differ.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import DepthMeter
        >>> meter = DepthMeter()
        >>> meter.update(torch.tensor([[[[1.0, 3.0, 5.0]]]]), torch.tensor([[[[2.0, 2.0, 0.0]]]]))
        >>> meter.compute()  # the third pixel has no measurement
        {'rmse': 1.0, 'abs_rel': 0.5, 'abs_err': 1.0}
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen."""
        self.squared = 0.0
        self.absolute = 0.0
        self.relative = 0.0
        self.count = 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: ``output`` and ``target`` are ``[N, 1, H, W]``."""
        _check_shape("depth", output, tuple(target.shape))
        output, target = output.detach().double(), target.detach().double()
        valid = target > 0
        error = (output - target)[valid]
        self.squared += error.square().sum().item()
        self.absolute += error.abs().sum().item()
        self.relative += (error.abs() / target[valid]).sum().item()
        self.count += int(valid.sum().item())

    def compute(self) -> dict[str, float]:
        """Return ``rmse``, ``abs_rel`` and ``abs_err``."""
        mse = _ratio(self.squared, self.count)
        return {
            "rmse": math.sqrt(mse) if not math.isnan(mse) else math.nan,
            "abs_rel": _ratio(self.relative, self.count),
            "abs_err": _ratio(self.absolute, self.count),
        }


class EdgeMeter:
    """Binary cross-entropy and an ODS-style F-measure for edge maps.

    ``output`` is ``[N, 1, H, W]`` logits, ``target`` the same shape in {0, 1}.
    ``bce`` is the unweighted mean BCE over all pixels (papers/000's edge
    metric). ``ods_f`` is the best F-measure over ``num_thresholds`` fixed
    thresholds ``1/(T+1) .. T/(T+1)`` on the sigmoid, with precision and recall
    pooled over the whole dataset. With ``tolerance = t > 0`` a predicted edge
    pixel is correct if a true edge lies within ``t`` pixels (Chebyshev
    distance) and a true edge is found if a predicted one lies within ``t``;
    unlike the BSDS benchmark no one-to-one matching is done.

    Args:
        num_thresholds: number of probability thresholds tried for ``ods_f``.
        tolerance: matching distance in pixels (0: exact pixels).

    Raises:
        ConfigError: ``num_thresholds < 1`` or ``tolerance < 0``; (from
            ``update``) shapes that differ or are not ``[N, 1, H, W]``.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import EdgeMeter
        >>> meter = EdgeMeter()
        >>> target = torch.tensor([[[[1.0, 0.0, 0.0, 1.0]]]])
        >>> meter.update(10 * (2 * target - 1), target)  # confident and right everywhere
        >>> metrics = meter.compute()
        >>> metrics["ods_f"], metrics["bce"] < 1e-4
        (1.0, True)
    """

    def __init__(self, num_thresholds: int = 99, tolerance: int = 0) -> None:
        if num_thresholds < 1 or tolerance < 0:
            raise ConfigError(
                f"edge meter needs num_thresholds >= 1 and tolerance >= 0, got {num_thresholds}, {tolerance}"
            )
        self.num_thresholds = num_thresholds
        self.tolerance = tolerance
        self.thresholds = torch.arange(1, num_thresholds + 1, dtype=torch.float64) / (num_thresholds + 1)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen."""
        self.bce_sum = 0.0
        self.pixels = 0
        # Per threshold: predicted edges near a true edge, predicted edges far
        # from any, and true edges with a prediction nearby.
        self.hits = torch.zeros(self.num_thresholds, dtype=torch.float64)
        self.false_alarms = torch.zeros(self.num_thresholds, dtype=torch.float64)
        self.found = torch.zeros(self.num_thresholds, dtype=torch.float64)
        self.true_edges = 0

    def _at_least(self, values: torch.Tensor) -> torch.Tensor:
        """For each threshold, how many of ``values`` are >= it."""
        bins = torch.bucketize(values.double(), self.thresholds, right=True)
        counts = torch.bincount(bins, minlength=self.num_thresholds + 1).double()
        # bins == k means values lie in [t_k, t_{k+1}): count from bin k+1 up.
        return counts.flip(0).cumsum(0).flip(0)[1:]

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of edge logits and binary targets."""
        _check_shape("edges", output, tuple(target.shape))
        if output.dim() != 4:
            raise ConfigError(f"edges: expected [N, 1, H, W] tensors, got {list(output.shape)}")
        output, target = output.detach().float(), target.detach().float()
        self.bce_sum += F.binary_cross_entropy_with_logits(output, target, reduction="sum").item()
        self.pixels += target.numel()
        prob = torch.sigmoid(output)
        truth = target > 0.5
        if self.tolerance:
            size = 2 * self.tolerance + 1
            near_truth = F.max_pool2d(truth.float(), size, stride=1, padding=self.tolerance) > 0
            near_prob = F.max_pool2d(prob, size, stride=1, padding=self.tolerance)
        else:
            near_truth, near_prob = truth, prob
        self.hits += self._at_least(prob[near_truth])
        self.false_alarms += self._at_least(prob[~near_truth])
        self.found += self._at_least(near_prob[truth])
        self.true_edges += int(truth.sum().item())

    def compute(self) -> dict[str, float]:
        """Return ``bce`` and ``ods_f`` (0 if nothing was ever predicted or true)."""
        predicted = self.hits + self.false_alarms
        precision = torch.where(predicted > 0, self.hits / predicted.clamp(min=1), 0.0)
        recall = self.found / self.true_edges if self.true_edges else torch.zeros_like(self.found)
        total = precision + recall
        f = torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-12), 0.0)
        return {
            "bce": _ratio(self.bce_sum, self.pixels),
            "ods_f": f.max().item() if self.pixels else math.nan,
        }


class NormalsMeter:
    """Angle error and cosine similarity of predicted surface normals.

    ``output`` is ``[N, 3, H, W]`` (normalised here), ``target`` the same shape
    with unit normals; pixels whose target has norm < 0.5 (e.g. all zeros)
    have no ground truth and are skipped. Reports the mean angle in degrees,
    the mean cosine similarity (papers/000's normals metric) and the fraction
    of pixels within 11.25, 22.5 and 30 degrees.

    Raises:
        ConfigError: (from ``update``) output and target shapes differ.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import NormalsMeter
        >>> meter = NormalsMeter()
        >>> target = torch.tensor([[[[0.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]]])  # 2 pixels: z and y axes
        >>> meter.update(torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]], [[2.0, 1.0]]]]), target)
        >>> {k: round(v, 2) for k, v in meter.compute().items()}
        {'angle_mean': 45.0, 'cos_sim': 0.5, 'within_11_25': 0.5, 'within_22_5': 0.5, 'within_30': 0.5}
    """

    _WITHIN = (11.25, 22.5, 30.0)

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen."""
        self.angle_sum = 0.0
        self.cos_sum = 0.0
        self.within = [0] * len(self._WITHIN)
        self.count = 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of predicted and true normals."""
        _check_shape("normals", output, tuple(target.shape))
        output, target = output.detach().double(), target.detach().double()
        valid = target.norm(dim=1) >= 0.5
        cos = (F.normalize(output, dim=1) * F.normalize(target, dim=1)).sum(dim=1)[valid].clamp(-1, 1)
        angle = torch.rad2deg(torch.arccos(cos))
        self.angle_sum += angle.sum().item()
        self.cos_sum += cos.sum().item()
        for k, limit in enumerate(self._WITHIN):
            self.within[k] += int((angle <= limit).sum().item())
        self.count += int(valid.sum().item())

    def compute(self) -> dict[str, float]:
        """Return ``angle_mean``, ``cos_sim`` and ``within_11_25``, ``within_22_5``, ``within_30``."""
        out = {
            "angle_mean": _ratio(self.angle_sum, self.count),
            "cos_sim": _ratio(self.cos_sum, self.count),
        }
        for limit, hits in zip(self._WITHIN, self.within, strict=True):
            out[f"within_{limit:g}".replace(".", "_")] = _ratio(hits, self.count)
        return out


class MSEMeter:
    """Mean squared and mean absolute error over all elements (autoencoder, regression).

    Raises:
        ConfigError: (from ``update``) output and target shapes differ.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import MSEMeter
        >>> meter = MSEMeter()
        >>> meter.update(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))
        >>> meter.update(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]))  # pooled over both batches
        >>> meter.compute()
        {'mse': 2.5, 'mae': 1.0}
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen."""
        self.squared = 0.0
        self.absolute = 0.0
        self.count = 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch; ``output`` and ``target`` have the same shape."""
        _check_shape("mse", output, tuple(target.shape))
        error = output.detach().double() - target.detach().double()
        self.squared += error.square().sum().item()
        self.absolute += error.abs().sum().item()
        self.count += error.numel()

    def compute(self) -> dict[str, float]:
        """Return ``mse`` and ``mae``."""
        return {"mse": _ratio(self.squared, self.count), "mae": _ratio(self.absolute, self.count)}


class AccuracyMeter:
    """Top-1 accuracy of ``[N, C]`` logits against ``[N]`` class ids.

    Raises:
        ConfigError: (from ``update``) ``output`` is not ``[N, C]`` for the ``N`` labels.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import AccuracyMeter
        >>> meter = AccuracyMeter()
        >>> meter.update(torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]]), torch.tensor([0, 1, 1, 1]))
        >>> meter.compute()
        {'accuracy': 0.75}
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen."""
        self.correct = 0
        self.count = 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of logits and labels."""
        if output.dim() != 2 or output.shape[0] != target.numel():
            raise ConfigError(
                f"classification: output shape {list(output.shape)} does not fit "
                f"{target.numel()} labels; expected [N, num_classes]"
            )
        self.correct += int((output.detach().argmax(dim=1) == target.detach().reshape(-1)).sum().item())
        self.count += target.numel()

    def compute(self) -> dict[str, float]:
        """Return ``accuracy``."""
        return {"accuracy": _ratio(self.correct, self.count)}
