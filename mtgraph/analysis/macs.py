"""Counting multiply-accumulates and parameters, the way every mtgraph report does.

MACs are counted by running the module under
:class:`torch.utils.flop_counter.FlopCounterMode` and halving its FLOPs. That
counter covers convolution, linear/addmm, matmul/bmm/baddbmm and scaled
dot-product attention, and counts nothing for elementwise ops: the same
convention as the papers' GMac tables, and by construction equal to
``FlopCounterMode`` total / 2.

FlopCounterMode has no formula for the CPU kernel of
``F.scaled_dot_product_attention`` (``aten._scaled_dot_product_flash_attention_for_cpu``,
used by ``nn.MultiheadAttention`` and torchvision's ViT), so on CPU it would
count attention as zero; :func:`mac_counter` adds the formula PyTorch uses for
the other attention kernels (two batched matmuls). Counts therefore equal
``mac_counter()`` total / 2, and plain ``FlopCounterMode`` total / 2 for every
network without attention kernels.

PyTorch's fused "fast path" of ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer`` (taken in eval mode without gradients) runs
one fused kernel that the counter does not see, so counting switches it off:
attention is counted as the projections, matmuls and attention it computes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "count_macs", "run_counted", "mac_counter", "no_fused_attention", "unique_parameters", "count_parameters",
    "evaluation_mode",
]


def _attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                     **kwargs: Any) -> int:
    """FLOPs of softmax(q k^T) v as two batched matmuls: the formula PyTorch uses for its other attention kernels."""
    batch = math.prod(query_shape[:-2])
    queries, depth = query_shape[-2], query_shape[-1]
    keys, value_depth = key_shape[-2], value_shape[-1]
    return 2 * batch * queries * keys * depth + 2 * batch * queries * keys * value_depth


def _missing_formulas() -> dict[Any, Any]:
    aten = torch.ops.aten
    names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")
    return {getattr(aten, name): _attention_flops for name in names if hasattr(aten, name)}


def mac_counter() -> FlopCounterMode:
    """The FlopCounterMode mtgraph counts with: PyTorch's, plus the CPU attention kernel it lacks."""
    return FlopCounterMode(display=False, custom_mapping=_missing_formulas())


@contextlib.contextmanager
def no_fused_attention() -> Iterator[None]:
    """Switch off the fused multi-head-attention fast path, whose single kernel FlopCounterMode cannot count.

    Examples:
        >>> import torch
        >>> from mtgraph.analysis.macs import no_fused_attention
        >>> with no_fused_attention():
        ...     torch.backends.mha.get_fastpath_enabled()
        False
    """
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    previous = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(previous)


def count_macs(module: nn.Module | Any, *inputs: Any) -> int:
    """Multiply-accumulates of one call ``module(*inputs)`` (no gradient, state restored)."""
    return run_counted(module, *inputs)[0]


def run_counted(module: nn.Module | Any, *inputs: Any) -> tuple[int, Any]:
    """Call ``module(*inputs)`` without gradient under the MAC counter; return ``(MACs, output)``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from mtgraph.analysis.macs import run_counted
        >>> macs, out = run_counted(nn.Linear(8, 4), torch.zeros(1, 8))
        >>> macs, tuple(out.shape)
        (32, (1, 4))
    """
    counter = mac_counter()
    with torch.no_grad(), no_fused_attention(), counter:
        output = module(*inputs)
    return counter.get_total_flops() // 2, output


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
