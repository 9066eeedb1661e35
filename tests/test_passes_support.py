"""Shared helpers for the tests of mtgraph.passes (this module holds no tests).

The backbone is a tiny residual conv net on 32 px images, traced into four
blocks:

====  ========  ============  ============  =================================
 #    name      in            out           skip
====  ========  ============  ============  =================================
 0    stem      [3, 32, 32]   [8, 32, 32]   no (shape changes, no shortcut)
 1    layers.0  [8, 32, 32]   [8, 32, 32]   identity
 2    layers.1  [8, 32, 32]   [16, 16, 16]  projection (1x1 conv + BN)
 3    layers.2  [16, 16, 16]  [16, 16, 16]  identity
====  ========  ============  ============  =================================
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import mtgraph
from mtgraph import Backbone, MTGraph, ParamStore
from mtgraph.ir import parse_graph

TASKS = ("S", "D", "E")


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run each test with one intra-op thread, then restore the setting.

    The tensors here are tiny; with several threads on a busy 2-core machine
    a 16 px convolution waits ~60 ms for its threads instead of taking 0.1 ms.
    Test modules import this fixture so that it applies to them.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Residual(nn.Module):
    """A basic residual block; a projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if cin != cout or stride != 1:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.down is None else self.down(x)
        return torch.relu(y + shortcut)


class TinyNet(nn.Module):
    """Stem + three residual blocks (widths 8, 16, 16)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.ReLU())
        self.layers = nn.Sequential(Residual(width, width, 1), Residual(width, 2 * width, 2), Residual(2 * width, 2 * width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


def _randomise_batchnorm(module: nn.Module, generator: torch.Generator) -> None:
    # Non-trivial running statistics, so that eval-mode outputs depend on them.
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=generator))
            m.running_var.copy_(1.0 + 0.1 * torch.rand(m.running_var.shape, generator=generator))


@functools.cache
def tiny_backbone(width: int = 8) -> Backbone:
    """The traced TinyNet (cached: tracing is deterministic)."""
    torch.manual_seed(0)
    net = TinyNet(width)
    with torch.no_grad():
        _randomise_batchnorm(net, torch.Generator().manual_seed(1))
    return mtgraph.trace(net, torch.randn(2, 3, 32, 32))


def make_heads(tasks: tuple[str, ...] = TASKS, channels: int = 16) -> dict[str, nn.Module]:
    """One deterministic 1x1-conv head per task."""
    heads = {}
    for k, task in enumerate(tasks):
        torch.manual_seed(100 + k)
        heads[task] = nn.Conv2d(channels, 1 + k, 1)
    return heads


def make_store(graph: MTGraph, backbone: Backbone | None = None, tasks: tuple[str, ...] | None = None) -> ParamStore:
    """A ParamStore for ``graph`` over the tiny backbone, with deterministic heads."""
    backbone = backbone or tiny_backbone()
    heads = make_heads(tasks or graph.tasks, channels=backbone.output_shape[0])
    return ParamStore.create(graph, backbone, heads)


def perturb(params: ParamStore, seed: int = 0) -> None:
    """Give every module of the store different weights (in place), so copies are distinguishable."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in params.items():
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=generator))


def image(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A deterministic 32 px batch."""
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def outputs(graph: MTGraph, params: ParamStore, x: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Compile and run in eval mode."""
    module = mtgraph.compile(graph, params).eval()
    with torch.no_grad():
        return module(image() if x is None else x)


def graph(text: str) -> MTGraph:
    """Parse IR text written in a test (leading indentation allowed)."""
    return parse_graph("\n".join(line.strip() for line in text.strip().splitlines()) + "\n")


def text(g: MTGraph) -> str:
    """The printed IR, lines stripped of trailing spaces, for literal comparison."""
    return "\n".join(line.rstrip() for line in str(g).splitlines())


def dedent(expected: str) -> str:
    """A literal expected IR text written indented in a test."""
    return "\n".join(line.strip() for line in expected.strip().splitlines())
