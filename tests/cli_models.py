"""Model factories the CLI tests name as ``cli_models:factory`` (tests/ is on sys.path)."""

from __future__ import annotations

from torch import nn


def small_convnet() -> nn.Module:
    """A four-layer conv net (two residual-free stages)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
    )


def raising_factory() -> nn.Module:
    """A factory that fails, as a user's broken factory would."""
    raise RuntimeError("weights file not found")


def not_a_module() -> object:
    """A factory that returns something that is not a module."""
    return 42
