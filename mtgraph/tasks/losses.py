"""Training losses of the standard tasks; each takes ``(raw head output, target)``.

Every loss returns a scalar that is differentiable even when a batch has no
valid pixel (then it is ``0 * output.sum()``, so the graph stays connected
and the optimiser step is a no-op for that task).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mtgraph.errors import ConfigError

__all__ = [
    "segmentation_loss",
    "depth_loss",
    "edge_loss",
    "normals_loss",
    "mse_loss",
    "classification_loss",
]


def _check_same_shape(loss: str, output: torch.Tensor, target: torch.Tensor) -> None:
    if output.shape != target.shape:
        raise ConfigError(f"{loss}: output shape {list(output.shape)} does not match target shape {list(target.shape)}")


def _no_valid_pixel(output: torch.Tensor) -> torch.Tensor:
    return output.sum() * 0.0


def segmentation_loss(
    output: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = -1,
    class_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``[N, C, H, W]`` logits against ``[N, H, W]`` labels, ignoring ``ignore_index``.

    Args:
        output: ``[N, C, H, W]`` logits.
        target: ``[N, H, W]`` class ids, ``ignore_index`` for unlabelled pixels.
        ignore_index: label of pixels that count nowhere.
        class_weights: optional weight of each class's pixels (``C`` values);
            the loss is then the weighted mean ``Σ w_y·CE / Σ w_y`` over
            labelled pixels (torch's weighted cross-entropy).

    Returns:
        The mean cross-entropy over labelled pixels (a differentiable 0 if there is none).

    Raises:
        ConfigError: ``output`` is not ``[N, C, *target.shape[1:]]``, or
            ``class_weights`` does not have ``C`` values.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import segmentation_loss
        >>> logits = torch.zeros(1, 4, 2, 2)  # uniform over 4 classes
        >>> round(segmentation_loss(logits, torch.tensor([[[0, 1], [2, -1]]])).item(), 4)  # log(4)
        1.3863
        >>> segmentation_loss(logits, torch.full((1, 2, 2), -1)).item()  # no labelled pixel
        0.0
        >>> round(segmentation_loss(logits, torch.tensor([[[0, 1], [2, -1]]]), class_weights=[0.1, 1, 1, 1]).item(), 4)
        1.3863
    """
    if output.dim() != target.dim() + 1 or output.shape[2:] != target.shape[1:]:
        raise ConfigError(
            f"segmentation loss: output shape {list(output.shape)} does not fit "
            f"target shape {list(target.shape)}; expected [N, C, *target.shape[1:]]"
        )
    weight = None
    if class_weights is not None:
        if len(class_weights) != output.shape[1]:
            raise ConfigError(
                f"segmentation loss: {len(class_weights)} class weights for {output.shape[1]} classes"
            )
        weight = torch.as_tensor(class_weights, dtype=output.dtype, device=output.device)
    if not (target != ignore_index).any():
        return _no_valid_pixel(output)
    return F.cross_entropy(output, target.long(), weight=weight, ignore_index=ignore_index)


def depth_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over pixels with a depth measurement (target > 0).

    Args:
        output: predicted depth, ``[N, 1, H, W]``.
        target: true depth of the same shape, 0 where there is no measurement.

    Returns:
        The mean absolute error over valid pixels (a differentiable 0 if there is none).

    Raises:
        ConfigError: the shapes differ.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import depth_loss
        >>> target = torch.tensor([[[[2.0, 0.0]]]])  # the second pixel has no measurement
        >>> depth_loss(torch.tensor([[[[2.5, 9.0]]]]), target).item()
        0.5
    """
    _check_same_shape("depth loss", output, target)
    valid = target > 0
    if not valid.any():
        return _no_valid_pixel(output)
    return (output - target).abs()[valid].mean()


def edge_loss(output: torch.Tensor, target: torch.Tensor, pos_weight: float = 19.0) -> torch.Tensor:
    """Binary cross-entropy on logits with edge pixels weighted by ``pos_weight``.

    Args:
        output: edge logits, ``[N, 1, H, W]``.
        target: the same shape, 1 on edges and 0 elsewhere.
        pos_weight: weight of the edge (positive) pixels' term.

    Returns:
        The mean weighted BCE over all pixels.

    Raises:
        ConfigError: the shapes differ.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import edge_loss
        >>> logits, target = torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]])
        >>> round(edge_loss(logits, target, pos_weight=1.0).item(), 4)  # log(2)
        0.6931
        >>> round(edge_loss(logits, target).item(), 4)  # (19 + 1) / 2 * log(2)
        6.9315
    """
    _check_same_shape("edge loss", output, target)
    weight = torch.tensor(pos_weight, dtype=output.dtype, device=output.device)
    return F.binary_cross_entropy_with_logits(output, target.to(output.dtype), pos_weight=weight)


def normals_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between normalised predictions and unit targets, on valid pixels.

    Pixels whose target has norm < 0.5 (no ground truth) are skipped.

    Args:
        output: predicted normals, ``[N, 3, H, W]`` (any length; normalised here).
        target: unit normals of the same shape, all zeros where unknown.

    Returns:
        The mean ``1 - cos`` over valid pixels (a differentiable 0 if there is none).

    Raises:
        ConfigError: the shapes differ.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import normals_loss
        >>> up = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1)
        >>> normals_loss(5 * up, up).item()  # same direction: no loss
        0.0
        >>> normals_loss(-up, up).item()  # opposite direction
        2.0
    """
    _check_same_shape("normals loss", output, target)
    valid = target.norm(dim=1) >= 0.5
    if not valid.any():
        return _no_valid_pixel(output)
    cos = (F.normalize(output, dim=1) * target).sum(dim=1)
    return (1.0 - cos[valid]).mean()


def mse_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (autoencoder and dense regression).

    Args:
        output: the prediction.
        target: the target, same shape (cast to ``output``'s dtype).

    Returns:
        The mean squared error.

    Raises:
        ConfigError: the shapes differ.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import mse_loss
        >>> mse_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])).item()
        5.0
    """
    _check_same_shape("mse loss", output, target)
    return F.mse_loss(output, target.to(output.dtype))


def classification_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``[N, C]`` logits against ``[N]`` class ids.

    Args:
        output: ``[N, C]`` logits.
        target: ``N`` class ids (any shape with ``N`` elements).

    Returns:
        The mean cross-entropy.

    Raises:
        ConfigError: ``output`` is not ``[N, C]`` for the ``N`` labels.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import classification_loss
        >>> round(classification_loss(torch.zeros(2, 3), torch.tensor([0, 2])).item(), 4)  # log(3)
        1.0986
        >>> classification_loss(torch.zeros(2, 3), torch.tensor([0, 1, 2]))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: classification loss: output shape [2, 3] does not fit 3 labels; ...
    """
    if output.dim() != 2 or output.shape[0] != target.numel():
        raise ConfigError(
            f"classification loss: output shape {list(output.shape)} does not fit "
            f"{target.numel()} labels; expected [N, num_classes]"
        )
    return F.cross_entropy(output, target.reshape(-1).long())
