"""Averaging modules: the weights of a fused block (MTSL: "averaging all parameters to initialize the group node")."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from mtgraph.errors import PassError

__all__ = ["average_modules", "structure_mismatch"]


def average_modules(modules: Sequence[nn.Module], weights: Sequence[float], keys: Sequence[str]) -> nn.Module:
    """A new module whose floating-point parameters and buffers are the weighted mean of ``modules``'.

    The mean is computed as ``m0 + sum_i w_i (m_i - m0)``, so averaging
    identical modules returns bit-identical weights. Integer buffers (such as
    BatchNorm's ``num_batches_tracked``) take the maximum. The modules must
    have the same structure (copies of one backbone block); ``keys`` names
    them in the error otherwise.
    """
    if abs(sum(weights) - 1.0) > 1e-9:
        raise PassError(f"average weights must sum to 1, got {list(weights)}")
    mismatch = structure_mismatch(modules, keys)
    if mismatch is not None:
        raise PassError(mismatch)
    states = [m.state_dict() for m in modules]
    result = copy.deepcopy(modules[0])
    with torch.no_grad():
        for name, target in result.state_dict(keep_vars=True).items():
            tensors = [s[name] for s in states]
            if target.is_floating_point() or target.is_complex():
                base = tensors[0]
                value = base.clone()
                for w, t in zip(weights[1:], tensors[1:]):
                    value += w * (t - base)
                target.copy_(value)
            else:
                target.copy_(torch.stack(tensors).max(dim=0).values)
    return result


def structure_mismatch(modules: Sequence[nn.Module], keys: Sequence[str]) -> str | None:
    """Why ``modules`` cannot be averaged (their state names or shapes differ), or None when they can.

    Examples:
        >>> from torch import nn
        >>> from mtgraph.passes.averaging import structure_mismatch
        >>> structure_mismatch([nn.Linear(2, 2), nn.Linear(2, 2)], ["a", "b"]) is None
        True
        >>> print(structure_mismatch([nn.Linear(2, 2), nn.Linear(2, 3)], ["a", "b"]))
        cannot average weights 'a' and 'b': their modules differ in structure (parameters ['bias', 'weight'] vs ['bias', 'weight'])
    """
    states = [m.state_dict() for m in modules]
    reference = states[0]
    for key, state in zip(keys[1:], states[1:]):
        if list(state) != list(reference) or any(state[n].shape != reference[n].shape for n in reference):
            return (
                f"cannot average weights {keys[0]!r} and {key!r}: their modules differ in structure "
                f"(parameters {sorted(reference)} vs {sorted(state)})"
            )
    return None
