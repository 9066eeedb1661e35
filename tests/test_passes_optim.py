"""remap_optimizer: optimizer state carried across fuse, split, gate and composed pipelines."""

from __future__ import annotations

import pytest
import torch
from passes_support import TASKS, image, make_store, perturb

import mtgraph
from mtgraph.ir import one_net, stn
from mtgraph.params import ParamStore
from mtgraph.passes import FusePass, GatePass, SplitPass, remap_optimizer, run_passes


def _train(graph: mtgraph.MTGraph, params: ParamStore, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """A few steps on a task-weighted toy loss (tasks get different gradients, hence different moments)."""
    model = mtgraph.compile(graph, params).train()
    for step in range(steps):
        optimizer.zero_grad()
        out = model(image(seed=step))
        loss = sum((k + 1) * out[t].pow(2).mean() for k, t in enumerate(graph.tasks))
        loss.backward()
        optimizer.step()


def _state_by_name(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in module.named_parameters()}


def _optimized(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def test_fuse_then_remap_averages_adam_moments_and_training_continues() -> None:
    g = stn(4, ("S", "E"))
    params = make_store(g)
    perturb(params)
    optimizer = torch.optim.Adam(mtgraph.compile(g, params).parameters(), lr=1e-2)
    _train(g, params, optimizer, steps=3)
    s_state, e_state = _state_by_name(optimizer, params["b0.S"]), _state_by_name(optimizer, params["b0.E"])
    assert not torch.allclose(s_state["stem.0.weight"]["exp_avg"], e_state["stem.0.weight"]["exp_avg"])

    result = FusePass(("S", "E"), 0)(g, params)
    same = remap_optimizer(optimizer, result.lineage, params, result.params)
    assert same is optimizer

    fused = result.params["b0.shared"]
    for name, p in fused.named_parameters():
        state = optimizer.state[p]
        for moment in ("exp_avg", "exp_avg_sq"):
            expected = (s_state[name][moment] + e_state[name][moment]) / 2
            assert torch.allclose(state[moment], expected, rtol=0, atol=1e-9), (name, moment)
        assert float(state["step"]) == 3.0
    # The old task nodes left the optimizer; every parameter of the new store is in it exactly once.
    optimized = _optimized(optimizer)
    assert not any(id(p) in optimized for p in params["b0.S"].parameters())
    new_parameters = {id(p) for _, m in result.params.items() for p in m.parameters()}
    assert optimized == new_parameters
    assert set(map(id, optimizer.state)) <= optimized

    before = fused.get_submodule("stem.0").weight.detach().clone()
    untouched = result.params["b1.S"].get_submodule("layers.0.conv1").weight.detach().clone()
    _train(result.graph, result.params, optimizer, steps=1)
    assert not torch.equal(fused.get_submodule("stem.0").weight, before)
    assert not torch.equal(result.params["b1.S"].get_submodule("layers.0.conv1").weight, untouched)
    assert all(float(optimizer.state[p]["step"]) == 4.0 for p in fused.parameters())


def test_split_then_remap_copies_momentum_into_the_same_group_and_keeps_schedulers() -> None:
    g = one_net(4, TASKS)
    params = make_store(g)
    blocks = [p for k, m in params.items() if not k.startswith("head.") for p in m.parameters()]
    heads = [p for k, m in params.items() if k.startswith("head.") for p in m.parameters()]
    optimizer = torch.optim.SGD([{"params": blocks, "lr": 0.1}, {"params": heads, "lr": 0.01}], momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    _train(g, params, optimizer, steps=2)
    source = _state_by_name(optimizer, params["b2.shared"])

    result = SplitPass(2, (("S", "E"), ("D",)))(g, params)
    remap_optimizer(optimizer, result.lineage, params, result.params)
    block_group = {id(p) for p in optimizer.param_groups[0]["params"]}
    for key in ("b2.S+E", "b2.D", "b3.S+E", "b3.D"):
        assert all(id(p) in block_group for p in result.params[key].parameters()), key
    buffers = []
    for key in ("b2.S+E", "b2.D"):
        for name, p in result.params[key].named_parameters():
            buffer = optimizer.state[p]["momentum_buffer"]
            assert torch.equal(buffer, source[name]["momentum_buffer"])
            buffers.append(buffer)
    assert buffers[0] is not buffers[len(buffers) // 2]  # each copy owns its state
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == {id(p) for p in heads}
    assert [group["lr"] for group in optimizer.param_groups] == [0.1, 0.01]
    scheduler.step()  # the scheduler still drives the same optimizer
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.05, 0.005])
    _train(result.graph, result.params, optimizer, steps=1)


def test_fresh_weights_have_no_state_and_join_the_fresh_group() -> None:
    g = one_net(4, ("S", "D"))
    params = make_store(g)
    all_params = [p for _, m in params.items() for p in m.parameters()]
    optimizer = torch.optim.Adam([{"params": all_params}, {"params": [], "lr": 0.5}], lr=1e-3)
    _train(g, params, optimizer, steps=1)
    result = GatePass("D", 2, 3)(g, params)
    remap_optimizer(optimizer, result.lineage, params, result.params, fresh_group=1)
    fresh = [p for key in ("gate.D.b2-3", "b2.D", "b3.D") for p in result.params[key].parameters()]
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == {id(p) for p in fresh}
    assert all(p not in optimizer.state for p in fresh)
    assert all(p in optimizer.state for p in result.params["b2.shared"].parameters())  # kept, unchanged
    _train(result.graph, result.params, optimizer, steps=1)
    assert all(float(optimizer.state[p]["step"]) == 1.0 for p in fresh)

    # fresh_group=None leaves new weights out of the optimizer (the caller adds them itself).
    optimizer = torch.optim.Adam(all_params, lr=1e-3)
    remap_optimizer(optimizer, result.lineage, params, result.params, fresh_group=None)
    assert not any(id(p) in _optimized(optimizer) for p in fresh)


def test_composed_lineage_split_then_fuse_restores_the_state() -> None:
    g = one_net(4, TASKS)
    params = make_store(g)
    optimizer = torch.optim.Adam([p for _, m in params.items() for p in m.parameters()], lr=1e-2)
    _train(g, params, optimizer, steps=2)
    original = {k: _state_by_name(optimizer, params[k]) for k in ("b2.shared", "b3.shared")}
    result = run_passes(g, params, "split{block=2,groups=S+E/D},fuse{tasks=S+D+E,block=2}")
    assert str(result.lineage["b2.shared"]) == "b2.shared <- copy(b2.shared)"
    remap_optimizer(optimizer, result.lineage, params, result.params)
    for key, source in (("b2.shared", "b2.shared"), ("b3.S+E", "b3.shared"), ("b3.D", "b3.shared")):
        for name, p in result.params[key].named_parameters():
            for moment, value in original[source][name].items():
                assert torch.equal(optimizer.state[p][moment], value), (key, name, moment)


def test_parameters_outside_the_store_are_left_alone() -> None:
    g = stn(4, ("S", "E"))
    params = make_store(g)
    extra = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([extra, *[p for _, m in params.items() for p in m.parameters()]], lr=0.1, momentum=0.9)
    optimizer.state[extra]["momentum_buffer"] = torch.full((3,), 7.0)
    result = FusePass(("S", "E"), 0)(g, params)
    remap_optimizer(optimizer, result.lineage, params, result.params)
    assert optimizer.param_groups[0]["params"][0] is extra
    assert torch.equal(optimizer.state[extra]["momentum_buffer"], torch.full((3,), 7.0))


def test_remap_rejects_a_non_optimizer() -> None:
    g = stn(4, ("S", "E"))
    params = make_store(g)
    result = FusePass(("S", "E"), 0)(g, params)
    with pytest.raises(mtgraph.PassError, match="expects a torch.optim.Optimizer, got list"):
        remap_optimizer([], result.lineage, params, result.params)  # type: ignore[arg-type]
    with pytest.raises(mtgraph.PassError, match="fresh_group=3 is not a parameter group index"):
        remap_optimizer(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1), result.lineage, params, result.params, fresh_group=3)


def test_composed_fusions_weight_the_moments_by_lineage() -> None:
    g = stn(4, TASKS)
    params = make_store(g)
    perturb(params)
    optimizer = torch.optim.Adam([p for _, m in params.items() for p in m.parameters()], lr=1e-2)
    _train(g, params, optimizer, steps=2)
    sources = {k: _state_by_name(optimizer, params[k]) for k in ("b0.S", "b0.D", "b0.E")}
    result = run_passes(g, params, "fuse{tasks=S+D,block=0},fuse{tasks=S+D+E,block=0}")
    assert str(result.lineage["b0.shared"]) == "b0.shared <- average(0.25*b0.S, 0.25*b0.D, 0.5*b0.E)"
    remap_optimizer(optimizer, result.lineage, params, result.params)
    for name, p in result.params["b0.shared"].named_parameters():
        moments = [sources[k][name]["exp_avg"] for k in ("b0.S", "b0.D", "b0.E")]
        _assert_lineage_mean(optimizer.state[p]["exp_avg"], moments)
    # The weights themselves were averaged the same way (each fuse averages its two inputs).
    w = [params[k].get_submodule("stem.0").weight.detach() for k in ("b0.S", "b0.D", "b0.E")]
    _assert_lineage_mean(result.params["b0.shared"].get_submodule("stem.0").weight.detach(), w)


def _assert_lineage_mean(got: torch.Tensor, sources: list[torch.Tensor]) -> None:
    """``got`` equals 0.25·S + 0.25·D + 0.5·E up to float32 rounding, element by element.

    ``got`` was made in two steps (fuse S+D, then fuse that with E), each a few float32 operations on values
    no larger than |S| + |D| + |E|; the reference is computed in one go. Each operation rounds by at most
    eps/2 of its operands, so the two differ by at most a few eps times |S| + |D| + |E|: 4 eps is that
    bound. (An absolute tolerance fails where a mean of large values cancels to almost 0, as it did on
    another machine's kernels; a relative one fails at such zeros too.)
    """
    s, d, e = sources
    expected = 0.25 * s + 0.25 * d + 0.5 * e
    bound = 4 * torch.finfo(torch.float32).eps * (s.abs() + d.abs() + e.abs())
    excess = (got - expected).abs() - bound
    assert float(excess.max()) <= 0, f"off by more than 4 eps·(|S|+|D|+|E|) at {int((excess > 0).sum())} elements"
