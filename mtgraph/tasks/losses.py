"""Training losses of the standard tasks; each takes ``(raw head output, target)``.

Every loss returns a scalar that is differentiable even when a batch has no
valid pixel (then it is ``0 * output.sum()``, so the graph stays connected
and the optimiser step is a no-op for that task).
"""

from __future__ import annotations

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


def segmentation_loss(output: torch.Tensor, target: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """Cross-entropy of ``[N, C, H, W]`` logits against ``[N, H, W]`` labels, ignoring ``ignore_index``."""
    if output.dim() != target.dim() + 1 or output.shape[2:] != target.shape[1:]:
        raise ConfigError(
            f"segmentation loss: output shape {list(output.shape)} does not fit "
            f"target shape {list(target.shape)}; expected [N, C, *target.shape[1:]]"
        )
    if not (target != ignore_index).any():
        return _no_valid_pixel(output)
    return F.cross_entropy(output, target.long(), ignore_index=ignore_index)


def depth_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over pixels with a depth measurement (target > 0)."""
    _check_same_shape("depth loss", output, target)
    valid = target > 0
    if not valid.any():
        return _no_valid_pixel(output)
    return (output - target).abs()[valid].mean()


def edge_loss(output: torch.Tensor, target: torch.Tensor, pos_weight: float = 19.0) -> torch.Tensor:
    """Binary cross-entropy on logits with edge pixels weighted by ``pos_weight``."""
    _check_same_shape("edge loss", output, target)
    weight = torch.tensor(pos_weight, dtype=output.dtype, device=output.device)
    return F.binary_cross_entropy_with_logits(output, target.to(output.dtype), pos_weight=weight)


def normals_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between normalised predictions and unit targets, on valid pixels.

    Pixels whose target has norm < 0.5 (no ground truth) are skipped.
    """
    _check_same_shape("normals loss", output, target)
    valid = target.norm(dim=1) >= 0.5
    if not valid.any():
        return _no_valid_pixel(output)
    cos = (F.normalize(output, dim=1) * target).sum(dim=1)
    return (1.0 - cos[valid]).mean()


def mse_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (autoencoder and dense regression)."""
    _check_same_shape("mse loss", output, target)
    return F.mse_loss(output, target.to(output.dtype))


def classification_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``[N, C]`` logits against ``[N]`` class ids."""
    if output.dim() != 2 or output.shape[0] != target.numel():
        raise ConfigError(
            f"classification loss: output shape {list(output.shape)} does not fit "
            f"{target.numel()} labels; expected [N, num_classes]"
        )
    return F.cross_entropy(output, target.reshape(-1).long())
