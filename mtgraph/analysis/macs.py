"""Counting multiply-accumulates and parameters, the way every mtgraph report does.

MACs are counted by running the module under
:class:`torch.utils.flop_counter.FlopCounterMode` and halving its FLOPs. That
counter covers convolution, linear/addmm, matmul/bmm/baddbmm and scaled
dot-product attention, and counts nothing for elementwise ops: the same
convention as the papers' GMac tables, and by construction equal to
``FlopCounterMode`` total / 2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "unique_parameters", "count_parameters", "evaluation_mode"]


def count_macs(module: nn.Module | Any, *inputs: Any) -> int:
    """Multiply-accumulates of one call ``module(*inputs)`` (no gradient, state restored)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*inputs)
    return counter.get_total_flops() // 2


def unique_parameters(modules: Iterable[nn.Module]) -> dict[int, nn.Parameter]:
    """Parameters of ``modules`` deduplicated by tensor identity (shared weights count once)."""
    found: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            found.setdefault(id(p), p)
    return found


def count_parameters(modules: Iterable[nn.Module]) -> int:
    """Number of scalar parameters in ``modules``, each tensor counted once."""
    return sum(p.numel() for p in unique_parameters(modules).values())


@contextlib.contextmanager
def evaluation_mode(*modules: nn.Module) -> Iterator[None]:
    """Run in eval mode without gradients, then restore every module's train flag.

    Measuring a user's model must not change it: in train mode a forward
    would update BatchNorm running statistics.
    """
    flags = {m: m.training for module in modules for m in module.modules()}
    for module in modules:
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags.items():
            m.training = flag
