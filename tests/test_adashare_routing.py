"""Computing shared path prefixes once gives the unshared relaxed network's outputs (soft and hard modes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtgraph
from mtgraph.ir import Block
from mtgraph.modules import MixGate
from mtgraph.strategies.adashare import (
    AdaShareConfig,
    SharedCall,
    gate_key,
    gated_blocks,
    make_gates,
    search_policy,
    share_repeated_calls,
    soft_graph,
)
from mtgraph.zoo import resnet_tiny

TASKS = ("seg", "normals", "depth")


@pytest.fixture(scope="module")
def backbone() -> mtgraph.Backbone:
    torch.manual_seed(0)
    return mtgraph.trace(resnet_tiny(4), torch.randn(2, 3, 32, 32))


def _heads(backbone: mtgraph.Backbone) -> dict[str, nn.Module]:
    torch.manual_seed(1)
    return {t: nn.Conv2d(backbone.output_shape[0], k, 1) for t, k in zip(TASKS, (5, 3, 1))}


def _run(net: nn.Module, x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # the gates' Gumbel noise
    return net(x)


def test_the_curriculums_forced_prefix_is_computed_once_with_the_same_outputs(backbone) -> None:  # type: ignore[no-untyped-def]
    gated, _ = gated_blocks(backbone)
    gates = make_gates(TASKS, gated)
    shared = soft_graph(backbone, TASKS, learnable=(6, 7, 8))
    unshared = soft_graph(backbone, TASKS, learnable=(6, 7, 8), shared_prefix=False)
    # Blocks 0..5 are forced to execute: once for all tasks, against once per task.
    assert sum(isinstance(n, Block) and n.block <= 5 for n in shared.nodes) == 6
    assert sum(isinstance(n, Block) and n.block <= 5 for n in unshared.nodes) == 6 * len(TASKS)
    params = mtgraph.ParamStore.create(shared, backbone, _heads(backbone), gates=gates)
    x = torch.randn(4, 3, 32, 32)
    a = mtgraph.compile(shared, params).train()
    b = mtgraph.compile(unshared, params).train()
    out_a, out_b = _run(a, x, 5), _run(b, x, 5)
    # The same operations on the same values (train-mode BatchNorm on identical inputs, the gates called in the
    # same order, so the same Gumbel draws): bit for bit.
    for t in TASKS:
        assert torch.equal(out_a[t], out_b[t]), t


def _decided(gates: dict[str, MixGate], gated: tuple[int, ...]) -> None:
    """seg and normals agree on every block (skip block 4), depth skips block 2 too: prefixes shared up to block 1."""
    with torch.no_grad():
        for t in TASKS:
            for b in gated:
                execute = not (b == 4 or (t == "depth" and b == 2))
                gates[gate_key(t, b)].logits.copy_(torch.tensor([12.0, -12.0] if execute else [-12.0, 12.0]))


def _routed_nets(backbone: mtgraph.Backbone, dtype: torch.dtype) -> tuple[nn.Module, nn.Module, nn.Module, dict]:
    """(unshared straight-through net, routed net, routed net with shared calls) over one store, and the gates."""
    gated, _ = gated_blocks(backbone)
    gates = make_gates(TASKS, gated, straight_through=True)
    _decided(gates, gated)
    graph = soft_graph(backbone, TASKS)
    params = mtgraph.ParamStore.create(graph, backbone, _heads(backbone), gates=gates)
    for _, module in params.items():
        module.to(dtype)
    straight = mtgraph.compile(graph, params).train()
    routed = mtgraph.compile(graph, params).train()
    shared = mtgraph.compile(graph, params).train()
    share_repeated_calls(shared)
    return straight, routed, shared, gates


def _route(gates: dict, on: bool) -> None:
    for gate in gates.values():
        gate.route = on


def test_routed_paths_computed_once_equal_the_routed_paths_computed_per_task(backbone) -> None:  # type: ignore[no-untyped-def]
    _, routed, shared, gates = _routed_nets(backbone, torch.float32)
    calls: list[str] = []
    for name, module in shared.named_modules():
        if isinstance(module, SharedCall):
            module.inner.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    x = torch.randn(4, 3, 32, 32)
    _route(gates, True)
    try:
        out_routed = _run(routed, x, 7)
        calls.clear()  # both networks call the store's modules: count the shared network's calls only
        out_shared = _run(shared, x, 7)
    finally:
        _route(gates, False)
    for t in TASKS:
        assert torch.equal(out_routed[t], out_shared[t]), t  # the same operations on the same inputs
    # Every task executes block 1, so all reach block 2 with one tensor: one call (the graph's nodes are one per
    # task). Depth skips block 2, so from block 3 on seg+normals share one path and depth has its own: 2 calls,
    # against one per task (3) unshared. The stem and block 1 have one node for all tasks in the graph already.
    block_calls = [c for c in calls if c.startswith("b") and "shortcut" not in c]
    assert {b: block_calls.count(f"b{b}_shared") for b in range(9)} == {0: 1, 1: 1, 2: 1, **{b: 2 for b in range(3, 9)}}


def test_routed_shared_paths_equal_the_unshared_straight_through_network_with_its_gradients(backbone) -> None:  # type: ignore[no-untyped-def]
    # In float64, so that the comparison is tight: the straight-through weights are one_hot - soft + soft,
    # which differs from exactly 0 or 1 by at most one rounding of a number <= 1 (2^-53 relative); through 8
    # blocks (train-mode BatchNorm renormalises each) the outputs then differ by far less than 1e-10.
    straight, _, shared, gates = _routed_nets(backbone, torch.float64)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    weights = {t: torch.randn_like(o) for t, o in _run(straight, x, 0).items()}

    def loss_and_grads(net: nn.Module, route: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        net.zero_grad(set_to_none=True)
        _route(gates, route)
        try:
            out = _run(net, x, 11)
        finally:
            _route(gates, False)
        sum((weights[t] * out[t]).sum() for t in TASKS).backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None and "policy" not in n}
        return {t: o.detach() for t, o in out.items()}, grads

    out_st, grad_st = loss_and_grads(straight, False)
    out_sh, grad_sh = loss_and_grads(shared, True)
    for t in TASKS:
        torch.testing.assert_close(out_sh[t], out_st[t], rtol=0, atol=1e-10)
    # Every weight gets the same gradient: the tasks' contributions summed at the shared output instead of at the
    # parameters (reassociating a float64 sum; 1e-9 of the gradient's scale bounds that by far).
    names = {n.replace(".inner", "") for n in grad_sh}
    assert names <= set(grad_st)
    for name in set(grad_st) - names:  # block 4, skipped by every task: straight-through multiplies it by exactly 0
        assert name.startswith("b4_") and not grad_st[name].any(), name
    for name, g in grad_sh.items():
        ref = grad_st[name.replace(".inner", "")]
        torch.testing.assert_close(g, ref, rtol=0, atol=1e-9 * float(ref.abs().max()) + 1e-300)


def test_the_hard_mode_searches_with_shared_paths_and_learns_the_policy(backbone) -> None:  # type: ignore[no-untyped-def]
    from mtgraph.data import SceneDataset
    from mtgraph.problem import Problem
    from mtgraph.tasks import depth, normals, segmentation

    torch.manual_seed(0)
    tasks = {"seg": segmentation(5, hidden=4), "normals": normals(hidden=4), "depth": depth(hidden=4)}
    heads = {n: t.make_head(backbone.output_shape[0], (32, 32)) for n, t in tasks.items()}
    problem = Problem(backbone, heads, tasks, SceneDataset(16, 32, seed=1))
    config = AdaShareConfig(epochs=8, weight_steps=2, policy_steps=1, batch_size=8, warmup_steps=1,
                            straight_through=True, policy_lr=0.05, decided_margin=0.0)
    outcome = search_policy(problem, config)
    # Every block was unlocked in turn (the sharing hook re-wrapped every recompiled network) and the
    # straight-through policy turns moved every learnable logit.
    assert [r["learnable"] for r in outcome.records][-1] == list(range(1, 9))
    assert all(a != 0.5 for row in outcome.records[-1]["alpha"] for a in row)
    assert outcome.history["search"]["groups"] == ["weights", "weights", "policy"] * 8
