"""Carry optimizer state across a rewrite: :func:`remap_optimizer`.

A pass replaces modules: fused weights are new tensors, split copies are new
tensors, dropped keys are gone. An optimizer holding the old tensors would
keep training modules the graph no longer uses. ``remap_optimizer`` edits the
optimizer *in place* (so learning-rate schedulers attached to it keep
working) using the pass's :class:`~mtgraph.passes.Lineage`:

* parameters are matched by ``(weight key, parameter name in the module)``;
* a key carried over unchanged keeps its parameters and their state;
* an ``average`` key gets the weighted mean of its sources' per-parameter
  state, entry by entry (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``,
  ``step`` ...): MTSL averages the Adam moments of fused task nodes
  (papers/000 appendix C). Only sources that have state are averaged (their
  weights renormalised); integer entries are rounded means of ints or the
  maximum of integer tensors;
* a ``copy`` key gets a deep copy of its source's state;
* a ``fresh`` key gets no state (the optimizer initialises it on the first
  step) and joins parameter group ``fresh_group`` (None: not added; add it
  yourself with ``optimizer.add_param_group``, e.g. gates with their own lr);
* a new parameter joins the group of its first source the optimizer trains
  (so learning rates and weight decay are preserved); if no source was being
  trained, neither is the new parameter;
* parameters of dropped keys leave the optimizer with their state;
  parameters the optimizer holds that are in no store (gate logits in a
  second store, anything else) are left untouched.

The function works for any ``torch.optim.Optimizer``: it only uses the
public ``param_groups`` and ``state`` structures.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mtgraph.errors import PassError
from mtgraph.params import ParamStore
from mtgraph.passes.lineage import Lineage

__all__ = ["remap_optimizer", "merge_state"]

Slot = tuple[str, str]  # (weight key, parameter name inside the key's module)


def _named(params: ParamStore) -> dict[Slot, nn.Parameter]:
    found: dict[Slot, nn.Parameter] = {}
    for key, module in params.items():
        for name, p in module.named_parameters():
            found[(key, name)] = p
    return found


def _mean(values: Sequence[Any], weights: Sequence[float]) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        if any(not isinstance(v, torch.Tensor) or v.shape != first.shape for v in values):
            raise ValueError("tensors of different shapes")
        if first.is_floating_point() or first.is_complex():
            # v0 + sum w_i (v_i - v0): equal states average to exactly themselves.
            out = first.detach().clone()
            for w, v in zip(weights[1:], values[1:]):
                out += w * (v.to(first.device, first.dtype) - first)
            return out
        return torch.stack([v.to(first.device) for v in values]).max(dim=0).values
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        return copy.deepcopy(first)
    mean = sum(w * float(v) for w, v in zip(weights, values))
    return round(mean) if isinstance(first, int) else mean


def merge_state(states: Sequence[dict[str, Any]], weights: Sequence[float]) -> dict[str, Any]:
    """The weighted mean of several per-parameter optimizer states (entries all of them have).

    ``weights`` are renormalised to sum to 1. Entries whose values cannot be
    averaged (tensors of different shapes) make the result empty: the
    parameter then starts with fresh state rather than a wrong one.
    """
    total = float(sum(weights))
    weights = [w / total for w in weights]
    if len(states) == 1:
        return {k: (v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)) for k, v in states[0].items()}
    names = [k for k in states[0] if all(k in s for s in states[1:])]
    try:
        return {k: _mean([s[k] for s in states], weights) for k in names}
    except ValueError:
        return {}


def remap_optimizer(
    optimizer: torch.optim.Optimizer,
    lineage: Lineage,
    old_params: ParamStore,
    new_params: ParamStore,
    *,
    fresh_group: int | None = 0,
) -> torch.optim.Optimizer:
    """Point ``optimizer`` at ``new_params`` after a rewrite, carrying state as ``lineage`` says; returns it.

    ``old_params`` is the store the optimizer was built on (the pass's
    input), ``new_params`` the pass's output, ``lineage`` the pass's (or
    :func:`~mtgraph.passes.run_passes`' composed) lineage. See the module
    docstring for the rules.

    Args:
        optimizer: any torch optimizer built on ``old_params``' parameters (edited in place).
        lineage: the rewrite's lineage.
        old_params: the store before the rewrite.
        new_params: the store after it.
        fresh_group: the parameter group that ``fresh`` keys join (None: they join none).

    Returns:
        ``optimizer`` itself.

    Raises:
        PassError: ``optimizer`` is not a torch optimizer, ``lineage`` not a
            Lineage, or ``fresh_group`` not a parameter group index.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)),
        ...                          torch.randn(1, 3, 8, 8))
        >>> graph = mtgraph.stn(2, ("S", "D"))
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "D": nn.Conv2d(4, 1, 1)})
        >>> model = mtgraph.compile(graph, params)  # trains the store's modules
        >>> optimizer = torch.optim.Adam(model.parameters())
        >>> sum(y.sum() for y in model(torch.randn(2, 3, 8, 8)).values()).backward()
        >>> optimizer.step()
        >>> from mtgraph.passes import FusePass, remap_optimizer
        >>> result = FusePass(("S", "D"), block=0)(graph, params)
        >>> remap_optimizer(optimizer, result.lineage, params, result.params) is optimizer
        True
        >>> fused_weight = result.params["b0.shared"].get_parameter("0.weight")
        >>> sorted(optimizer.state[fused_weight])  # the mean of b0.S's and b0.D's Adam moments
        ['exp_avg', 'exp_avg_sq', 'step']
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise PassError(f"remap_optimizer expects a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not isinstance(lineage, Lineage):
        raise PassError(f"remap_optimizer expects a Lineage, got {type(lineage).__name__}")
    if fresh_group is not None and not 0 <= fresh_group < len(optimizer.param_groups):
        raise PassError(f"fresh_group={fresh_group} is not a parameter group index (the optimizer has {len(optimizer.param_groups)})")
    old = _named(old_params)
    new = _named(new_params)
    slot_of: dict[int, Slot] = {}
    for slot, p in old.items():
        slot_of.setdefault(id(p), slot)
    group_of: dict[Slot, int] = {}
    for g, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            if id(p) in slot_of:
                group_of.setdefault(slot_of[id(p)], g)
    entries = {e.new_key: e for e in lineage.entries}
    dropped = set(lineage.dropped)

    def sources(slot: Slot) -> tuple[list[tuple[Slot, float]], bool]:
        """Old slots the new slot comes from, with weights, and whether it is the very same weights."""
        key, name = slot
        if key in entries:
            e = entries[key]
            return [((s, name), w) for s, w in zip(e.sources, e.weights) if (s, name) in old], False
        if key in old_params and key not in dropped and (key, name) in old:
            return [((key, name), 1.0)], True
        return [], False

    new_lists: list[list[nn.Parameter]] = [[] for _ in optimizer.param_groups]
    new_state: dict[nn.Parameter, dict[str, Any]] = {}
    placed: set[int] = set()
    old_state = optimizer.state
    # Parameters the optimizer holds that no store knows keep their place and state.
    for g, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            if id(p) not in slot_of and id(p) not in placed:
                new_lists[g].append(p)
                placed.add(id(p))
                if p in old_state:
                    new_state[p] = old_state[p]
    for slot, p in new.items():
        if id(p) in placed:
            continue  # a tensor tied across keys is registered once
        origin, same = sources(slot)
        trained = [(s, w) for s, w in origin if s in group_of]
        if trained:
            target = group_of[trained[0][0]]
        elif not origin and not same and fresh_group is not None and slot[0] in entries:
            target = fresh_group
        else:
            continue
        new_lists[target].append(p)
        placed.add(id(p))
        with_state = [(old[s], w) for s, w in trained if old[s] in old_state and old_state[old[s]]]
        if same and with_state:
            new_state[p] = old_state[with_state[0][0]]
        elif with_state:
            state = merge_state([old_state[q] for q, _ in with_state], [w for _, w in with_state])
            if state:
                new_state[p] = state
    for param_group, members in zip(optimizer.param_groups, new_lists):
        param_group["params"] = members
    old_state.clear()
    for p, state in new_state.items():
        old_state[p] = state
    return optimizer
