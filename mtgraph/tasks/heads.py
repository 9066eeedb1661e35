"""Small task heads and their factories.

A head factory is called as ``factory(in_channels, out_size)`` once the
backbone's output is known and returns an ``nn.Module`` mapping a feature map
``[N, in_channels, h, w]`` to the task's raw output. Dense heads end with a
bilinear resize to ``out_size``, so they fit any backbone stride. Heads use
only plain layers, so torch.fx can trace them and ONNX can export them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from mtgraph.errors import ConfigError

__all__ = ["HeadFactory", "DenseHead", "ClassificationHead", "dense_head", "classification_head"]

#: ``(in_channels, out_size) -> nn.Module``.
HeadFactory = Callable[[int, tuple[int, int]], nn.Module]


class DenseHead(nn.Module):
    """3x3 conv, ReLU, 1x1 conv to ``out_channels``, then bilinear resize to ``out_size``.

    Args:
        in_channels: channels of the backbone's feature map.
        out_size: ``(height, width)`` of the output map (the input image's size).
        out_channels: output channels per pixel (classes, 1 for depth, 3 for normals).
        hidden: channels of the 3x3 conv.

    Raises:
        ConfigError: a channel count < 1 or an ``out_size`` that is not two sizes >= 1.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import DenseHead
        >>> head = DenseHead(8, (32, 32), out_channels=5, hidden=16)
        >>> head(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 5, 32, 32])
    """

    def __init__(self, in_channels: int, out_size: tuple[int, int], out_channels: int, hidden: int = 64) -> None:
        super().__init__()
        _check_sizes(in_channels, out_channels, hidden)
        if len(out_size) != 2 or min(out_size) < 1:
            raise ConfigError(f"dense head out_size must be (height, width) >= 1, got {out_size}")
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1),
        )
        self.resize = nn.Upsample(size=self.out_size, mode="bilinear", align_corners=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map ``[N, C, h, w]`` features to ``[N, out_channels, *out_size]``."""
        return self.resize(self.body(features))


class ClassificationHead(nn.Module):
    """Global average pooling and a linear layer to ``num_classes`` logits.

    Args:
        in_channels: channels of the backbone's feature map.
        num_classes: number of logits.

    Raises:
        ConfigError: a channel or class count < 1.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import ClassificationHead
        >>> ClassificationHead(8, num_classes=3)(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        _check_sizes(in_channels, num_classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(in_channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map ``[N, C, h, w]`` features to ``[N, num_classes]`` logits."""
        return self.linear(self.flatten(self.pool(features)))


def _check_sizes(in_channels: int, out_channels: int, hidden: int) -> None:
    if min(in_channels, out_channels, hidden) < 1:
        raise ConfigError(f"head channels must be >= 1, got in={in_channels}, out={out_channels}, hidden={hidden}")


def _make_dense(in_channels: int, out_size: tuple[int, int], *, out_channels: int, hidden: int) -> nn.Module:
    return DenseHead(in_channels, out_size, out_channels, hidden)


def _make_classification(in_channels: int, out_size: tuple[int, int], *, num_classes: int) -> nn.Module:
    del out_size  # an image-level head has no spatial output
    return ClassificationHead(in_channels, num_classes)


def dense_head(out_channels: int, hidden: int = 64) -> HeadFactory:
    """Return a factory of :class:`DenseHead` with ``out_channels`` outputs per pixel.

    Args:
        out_channels: output channels per pixel.
        hidden: channels of the head's 3x3 conv.

    Returns:
        A :data:`HeadFactory`: ``factory(in_channels, out_size)`` builds the head.

    Raises:
        ConfigError: ``out_channels`` or ``hidden`` < 1.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import dense_head
        >>> head = dense_head(3, hidden=8)(16, (24, 24))
        >>> head(torch.randn(1, 16, 3, 3)).shape
        torch.Size([1, 3, 24, 24])
    """
    _check_sizes(1, out_channels, hidden)
    return functools.partial(_make_dense, out_channels=out_channels, hidden=hidden)


def classification_head(num_classes: int) -> HeadFactory:
    """Return a factory of :class:`ClassificationHead` with ``num_classes`` logits.

    Args:
        num_classes: number of logits.

    Returns:
        A :data:`HeadFactory`; the ``out_size`` it is called with is ignored.

    Raises:
        ConfigError: ``num_classes`` < 1.

    Examples:
        >>> import torch
        >>> from mtgraph.tasks import classification_head
        >>> head = classification_head(4)(16, (24, 24))
        >>> head(torch.randn(2, 16, 3, 3)).shape
        torch.Size([2, 4])
    """
    _check_sizes(1, num_classes, 1)
    return functools.partial(_make_classification, num_classes=num_classes)
