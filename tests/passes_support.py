"""Shared helpers for the tests of mtgraph.passes (this module holds no tests; the backbone is ``backbones.tiny_resnet``).

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

import torch
from backbones import tiny_resnet
from torch import nn

import mtgraph
from mtgraph import Backbone, MTGraph, ParamStore
from mtgraph.ir import parse_graph

TASKS = ("S", "D", "E")


@functools.cache
def tiny_backbone(width: int = 8) -> Backbone:
    """The traced ``backbones.tiny_resnet`` (cached: tracing is deterministic)."""
    model, x = tiny_resnet(width)
    return mtgraph.trace(model, x)


def pointwise_heads(tasks: tuple[str, ...] = TASKS, channels: int = 16) -> dict[str, nn.Module]:
    """One deterministic 1x1-conv head per task (``backbones.make_heads`` builds deeper ones)."""
    heads = {}
    with torch.random.fork_rng(devices=[]):
        for k, task in enumerate(tasks):
            torch.manual_seed(100 + k)
            heads[task] = nn.Conv2d(channels, 1 + k, 1)
    return heads


def make_store(graph: MTGraph, backbone: Backbone | None = None, tasks: tuple[str, ...] | None = None) -> ParamStore:
    """A ParamStore for ``graph`` over the tiny backbone, with deterministic heads."""
    backbone = backbone or tiny_backbone()
    heads = pointwise_heads(tasks or graph.tasks, channels=backbone.output_shape[0])
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
