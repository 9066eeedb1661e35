"""Numerical behaviour of the passes on the tiny traced backbone: what the compiled network computes."""

from __future__ import annotations

import copy

import torch
from passes_support import (
    TASKS,
    image,
    make_store,
    outputs,
    perturb,
    pointwise_heads,
    text,
    tiny_backbone,
)

import mtgraph
from mtgraph.analysis.macs import count_macs
from mtgraph.ir import Gate, from_groups, one_net, stn
from mtgraph.passes import FusePass, GatePass, HardenPass, SkipPass, run_passes


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tasks: tuple[str, ...]) -> dict[str, bool]:
    return {t: torch.equal(a[t], b[t]) for t in tasks}


def test_split_then_compile_is_bit_identical() -> None:
    g = one_net(4, TASKS)
    params = make_store(g)
    perturb(params)
    before = outputs(g, params)
    r = run_passes(g, params, "split{block=2,groups=S+E/D},split{block=0,groups=S/D+E}")
    assert len(r.graph.nodes) > len(g.nodes)
    assert _equal(outputs(r.graph, r.params), before, TASKS) == {t: True for t in TASKS}
    # The copies are independent tensors: training one subset's copy leaves the other's alone.
    a, b = r.params["b3.D"], r.params["b3.S"]
    with torch.no_grad():
        next(a.parameters()).add_(1.0)
    assert not torch.equal(next(a.parameters()), next(b.parameters()))


def test_fuse_of_identical_weights_is_output_identical() -> None:
    g = stn(4, TASKS)
    params = make_store(g)
    perturb(params)  # every key its own weights, so that an average and a copy differ
    for b, tasks in ((0, TASKS), (1, TASKS), (2, ("S", "E"))):
        for t in tasks[1:]:  # the fused tasks' blocks get one (perturbed) set of weights, in separate modules
            params[f"b{b}.{t}"].load_state_dict(params[f"b{b}.{tasks[0]}"].state_dict())
    before = outputs(g, params)
    r = run_passes(g, params, "fuse{tasks=S+D+E,block=0,init=average},fuse{tasks=S+D+E,block=1,init=average},"
                              "fuse{tasks=S+E,block=2,init=average}")
    assert text(r.graph) == text(from_groups(4, TASKS, [[TASKS], [TASKS], [["S", "E"], ["D"]], [["S"], ["D"], ["E"]]]))
    assert _equal(outputs(r.graph, r.params), before, TASKS) == {t: True for t in TASKS}


def test_fuse_average_is_the_mean_not_a_copy_of_a_source() -> None:
    g = stn(4, TASKS)
    params = make_store(g)
    perturb(params)  # the three tasks' blocks now differ: an average differs from each of them
    r = run_passes(g, params, "fuse{tasks=S+D+E,block=0,init=average},fuse{tasks=S+E,block=1,init=copy,source_task=E}")
    fused = r.params["b0.shared"].state_dict()
    sources = [params[f"b0.{t}"].state_dict() for t in TASKS]
    for name, value in fused.items():
        if not value.is_floating_point():
            continue
        mean = sum(s[name] for s in sources) / 3
        # float32: both sides round a mean of three values of magnitude < 2; 1e-6 bounds their difference.
        assert torch.allclose(value, mean, rtol=0, atol=1e-6), name
        if name.endswith("weight"):  # parameters were perturbed; a copy of any source would equal it exactly
            assert not any(torch.equal(value, s[name]) for s in sources), name
    assert all(torch.equal(v, params["b1.E"].state_dict()[k]) for k, v in r.params["b1.S+E"].state_dict().items())
    # The compiled network differs from the unfused one for every task: block 0 really changed.
    after, before = outputs(r.graph, r.params), outputs(g, params)
    assert not any(torch.equal(after[t], before[t]) for t in TASKS)


def test_fuse_average_equals_manual_averaging() -> None:
    g = stn(4, TASKS)
    params = make_store(g)
    perturb(params)
    with torch.no_grad():
        params["b0.S"].get_submodule("stem.0").weight.mul_(2.0)  # make the two sources clearly different
    r = FusePass(("S", "E"), 0)(g, params)
    fused = r.params["b0.S+E"]
    s_state, e_state = params["b0.S"].state_dict(), params["b0.E"].state_dict()
    manual = {k: (s_state[k] + e_state[k]) / 2 for k in s_state}
    for k, v in fused.state_dict().items():
        assert torch.allclose(v, manual[k], rtol=0, atol=1e-7), k
    # The compiled network equals one whose fused block was averaged by hand.
    by_hand = copy.deepcopy(params["b0.S"])
    by_hand.load_state_dict(manual)
    manual_store = r.params.updated(add={"b0.S+E": by_hand})
    got, want = outputs(r.graph, r.params), outputs(r.graph, manual_store)
    for t in TASKS:
        assert torch.allclose(got[t], want[t], rtol=0, atol=1e-6)
    # Averaging made a new module; the sources are untouched.
    assert fused is not params["b0.S"] and torch.equal(params["b0.S"].state_dict()["stem.0.weight"], s_state["stem.0.weight"])


def test_fuse_batchnorm_statistics_are_averaged() -> None:
    g = stn(4, ("S", "E"))
    params = make_store(g)
    with torch.no_grad():
        params["b1.S"].get_submodule("layers.0.bn1").running_mean.fill_(1.0)
        params["b1.E"].get_submodule("layers.0.bn1").running_mean.fill_(3.0)
        params["b1.S"].get_submodule("layers.0.bn1").num_batches_tracked.fill_(4)
        params["b1.E"].get_submodule("layers.0.bn1").num_batches_tracked.fill_(7)
    r = run_passes(g, params, "fuse{tasks=S+E,block=0},fuse{tasks=S+E,block=1}")
    bn = r.params["b1.shared"].get_submodule("layers.0.bn1")
    assert torch.equal(bn.running_mean, torch.full_like(bn.running_mean, 2.0))
    assert int(bn.num_batches_tracked) == 7  # integer buffers take the maximum


def test_fuse_copy_keeps_the_source_task_exact() -> None:
    g = stn(4, TASKS)
    params = make_store(g)
    perturb(params)
    before = outputs(g, params)
    r = FusePass(("S", "D", "E"), 0, init="copy", source_task="D")(g, params)
    assert str(r.lineage).startswith("b0.shared <- copy(b0.D)")
    after = outputs(r.graph, r.params)
    assert _equal(after, before, TASKS) == {"S": False, "D": True, "E": False}


def test_skip_changes_exactly_the_task_and_its_cost() -> None:
    backbone = tiny_backbone()
    g = one_net(4, TASKS)
    params = make_store(g)
    perturb(params)
    before, cost_before = outputs(g, params), mtgraph.cost(g, params)

    # Identity skip of the last block: only D changes, D saves exactly block 3's MACs, nothing else moves.
    last = SkipPass("D", 3)(g, params)
    after, cost_after = outputs(last.graph, last.params), mtgraph.cost(last.graph, last.params)
    assert _equal(after, before, TASKS) == {"S": True, "D": False, "E": True}
    x = image()
    with torch.no_grad():
        feature = x
        for k in range(3):
            feature = params[f"b{k}.shared"].eval()(feature)
        assert torch.allclose(after["D"], params["head.D"](feature), rtol=0, atol=1e-6)
    assert cost_after.tasks["D"].macs == cost_before.tasks["D"].macs - backbone.blocks[3].macs
    assert cost_after.tasks["S"].macs == cost_before.tasks["S"].macs
    assert cost_after.total_macs == cost_before.total_macs
    assert cost_after.total_params == cost_before.total_params

    # Identity skip of block 1: D diverges, so blocks 2 and 3 now also run on D's own input.
    early = SkipPass("D", 1)(g, params)
    cost_early = mtgraph.cost(early.graph, early.params)
    assert _equal(outputs(early.graph, early.params), before, TASKS) == {"S": True, "D": False, "E": True}
    assert cost_early.tasks["D"].macs == cost_before.tasks["D"].macs - backbone.blocks[1].macs
    assert cost_early.total_macs == cost_before.total_macs + backbone.blocks[2].macs + backbone.blocks[3].macs
    assert cost_early.total_params == cost_before.total_params  # same keys: weights are shared

    # Projection skip of block 2: D keeps paying for the 1x1 projection only.
    proj = SkipPass("D", 2)(g, params)
    cost_proj = mtgraph.cost(proj.graph, proj.params)
    shortcut = backbone.blocks[2].shortcut_of(params["b2.shared"])
    level2 = torch.zeros(1, *backbone.blocks[2].in_shape)
    projection_macs = count_macs(shortcut, level2)
    assert 0 < projection_macs < backbone.blocks[2].macs
    assert cost_proj.tasks["D"].macs == cost_before.tasks["D"].macs - backbone.blocks[2].macs + projection_macs


def test_gate_then_harden_outputs() -> None:
    g = one_net(4, TASKS)
    params = make_store(g)
    perturb(params)
    before = outputs(g, params)
    # A private path copied from the public one: any convex mix equals the public output.
    copied = GatePass("E", 2, 3, alpha=0.3, private="copy")(g, params)
    mixed = outputs(copied.graph, copied.params)
    assert _equal(mixed, before, ("S", "D")) == {"S": True, "D": True}
    assert torch.allclose(mixed["E"], before["E"], rtol=0, atol=1e-5)
    # A fresh private path with alpha = 1 contributes (almost) nothing.
    fresh = GatePass("E", 1, 3, alpha=1.0)(g, params)
    assert torch.allclose(outputs(fresh.graph, fresh.params)["E"], before["E"], rtol=0, atol=1e-5)
    # Hardening a public-leaning gate returns exactly the original network.
    hard = HardenPass()(fresh.graph, fresh.params)
    assert hard.graph == g and hard.params.keys() == params.keys()
    assert _equal(outputs(hard.graph, hard.params), before, TASKS) == {t: True for t in TASKS}


def test_gate_mixes_public_and_private_with_alpha() -> None:
    g = one_net(4, ("S", "D"))
    params = make_store(g)
    perturb(params)
    r = GatePass("D", 3, 3, alpha=0.25)(g, params)
    assert [n for n in r.graph.nodes if isinstance(n, Gate)] == [Gate("D", (4, 5), "gate.D.b3")]
    store = r.params
    with torch.no_grad():
        feature = image()
        for k in range(3):
            feature = store[f"b{k}.shared"].eval()(feature)
        public = store["b3.shared"].eval()(feature)
        private = store["b3.D"].eval()(feature)
        gate = store["gate.D.b3"]
        assert torch.allclose(gate.probabilities(), torch.tensor([0.25, 0.75]))
        mixed = gate(public, private)
        assert torch.allclose(mixed, 0.25 * public + 0.75 * private, rtol=0, atol=1e-6)
        got = outputs(r.graph, store)
        assert torch.allclose(got["D"], store["head.D"](mixed), rtol=0, atol=1e-6)
        assert torch.allclose(got["S"], store["head.S"](public), rtol=0, atol=1e-6)


def test_skip_gate_hardened_to_skip_equals_the_skip_pass() -> None:
    g = one_net(4, TASKS)
    params = make_store(g)
    perturb(params)
    gated = GatePass("D", 2, 2, private="skip")(g, params)
    with torch.no_grad():
        gated.params["gate.D.b2"].logits.copy_(torch.tensor([-1.0, 1.0]))
    hard = HardenPass()(gated.graph, gated.params)
    direct = SkipPass("D", 2)(g, params)
    assert text(hard.graph) == text(direct.graph)
    assert _equal(outputs(hard.graph, hard.params), outputs(direct.graph, direct.params), TASKS) == {t: True for t in TASKS}


def test_fuse_keeps_downstream_gates_working() -> None:
    g = from_groups(4, TASKS, [[TASKS], [["S", "E"], ["D"]], [["S", "E"], ["D"]], [["S"], ["E"], ["D"]]])
    params = make_store(g)
    gated = GatePass("S", 3, 3, alpha=0.6)(g, params)
    fused = FusePass(("S", "D", "E"), 1)(gated.graph, gated.params)
    gates = [n for n in fused.graph.nodes if isinstance(n, Gate)]
    assert len(gates) == 1 and gates[0].weights == "gate.S.b3"
    assert set(outputs(fused.graph, fused.params)) == set(TASKS)


def test_rewritten_architecture_saves_and_reloads_bit_identically(tmp_path) -> None:  # type: ignore[no-untyped-def]
    g = one_net(4, TASKS)
    params = make_store(g)
    perturb(params)
    r = run_passes(g, params, "split{block=2,groups=S+E/D},skip{task=E,block=3},gate{task=D,start=2,end=3,alpha=0.7}")
    before = outputs(r.graph, r.params)
    mtgraph.save(r.graph, r.params, tmp_path)
    graph_, params_ = mtgraph.load(tmp_path, tiny_backbone(), pointwise_heads())
    assert graph_ == r.graph
    assert _equal(outputs(graph_, params_), before, TASKS) == {t: True for t in TASKS}
