"""compile: the compiled network equals hand-written equivalents, shares the store, and runs under torch.compile."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from backbones import ALL, make_heads, resnet_basic
from torch import nn

import mtgraph
from mtgraph import CompileError, HeadError, ParamStore, VerifyError
from mtgraph.ir import from_groups, one_net, parse_graph, stn
from mtgraph.ir.nodes import head_weights

NAMES = list(ALL)


def _eval_run(module: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return module(x)


def _perturb(store: ParamStore, seed: int = 0) -> None:
    """Give every key's parameters its own distinct values, so that a wrong wiring shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key in sorted(store.keys()):
            for p in store[key].parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _compiled(graph, backbone, heads, **kwargs) -> tuple[ParamStore, torch.fx.GraphModule]:
    store = ParamStore.create(graph, backbone, heads, **kwargs)
    return store, mtgraph.compile(graph, store).eval()


# --------------------------------------------------------------------------- #
# STN, One-Net and trees equal their hand-written equivalents
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", NAMES)
def test_stn_equals_each_tasks_own_backbone_and_head(name: str, traced, tasks) -> None:
    model, x, backbone = traced(name)
    heads = make_heads(backbone.output_shape, tasks)
    graph = stn(backbone.num_blocks, tasks)
    store, net = _compiled(graph, backbone, heads)
    out = _eval_run(net, x)
    features = _eval_run(model, x)
    assert list(out) == list(tasks)
    for task in tasks:
        assert torch.equal(out[task], _eval_run(heads[task], features)), task
    # With distinct weights per task, each task still runs exactly its own copy.
    _perturb(store)
    out = _eval_run(net, x)
    for task in tasks:
        value = x
        for b in range(backbone.num_blocks):
            value = _eval_run(store[f"b{b}.{task}"], value)
        assert torch.equal(out[task], _eval_run(store[head_weights(task)], value)), task


@pytest.mark.parametrize("name", NAMES)
def test_one_net_equals_backbone_and_heads(name: str, traced, tasks) -> None:
    model, x, backbone = traced(name)
    heads = make_heads(backbone.output_shape, tasks)
    _, net = _compiled(one_net(backbone.num_blocks, tasks), backbone, heads)
    out = _eval_run(net, x)
    features = _eval_run(model, x)
    for task in tasks:
        assert torch.equal(out[task], _eval_run(heads[task], features)), task


class HandTree(nn.Module):
    """The tree S,E,D share blocks [0, a); S,E share [a, b); then each task alone — written by hand.

    It runs the shared trunk once, then the branches, with deep copies of the
    store's block modules.
    """

    def __init__(self, store: ParamStore, a: int, b: int, n: int) -> None:
        super().__init__()

        def take(keys: list[str]) -> nn.Sequential:
            return nn.Sequential(*[copy.deepcopy(store[k]) for k in keys])

        self.trunk = take([f"b{i}.shared" for i in range(a)])
        self.se = take([f"b{i}.S+E" for i in range(a, b)])
        self.s = take([f"b{i}.S" for i in range(b, n)])
        self.e = take([f"b{i}.E" for i in range(b, n)])
        self.d = take([f"b{i}.D" for i in range(a, n)])
        self.heads = nn.ModuleDict({t: copy.deepcopy(store[head_weights(t)]) for t in ("S", "E", "D")})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        trunk = self.trunk(x)
        se = self.se(trunk)
        return {"S": self.heads["S"](self.s(se)), "E": self.heads["E"](self.e(se)), "D": self.heads["D"](self.d(trunk))}


@pytest.mark.parametrize("name", NAMES)
def test_from_groups_tree_equals_hand_written_branches(name: str, traced) -> None:
    _, x, backbone = traced(name)
    n = backbone.num_blocks
    a, b = 1, n - 1
    groups = [[["S", "E", "D"]]] * a + [[["S", "E"], ["D"]]] * (b - a) + [[["S"], ["E"], ["D"]]] * (n - b)
    graph = from_groups(n, ["S", "E", "D"], groups)
    heads = make_heads(backbone.output_shape, ["S", "E", "D"])
    store, net = _compiled(graph, backbone, heads)
    _perturb(store, seed=1)
    hand = HandTree(store, a, b, n).eval()
    out, expected = _eval_run(net, x), _eval_run(hand, x)
    for task in ("S", "E", "D"):
        assert torch.equal(out[task], expected[task]), task
    assert not torch.equal(out["S"][:, :1], out["E"][:, :1])  # the branches really differ


def test_shared_blocks_are_computed_once(traced, tasks) -> None:
    _, x, backbone = traced("resnet_basic")
    graph = from_groups(5, tasks, [[list(tasks)]] * 3 + [[["S", "E"], ["D"]]] * 2)
    store, net = _compiled(graph, backbone, make_heads(backbone.output_shape, tasks))
    calls: dict[str, int] = {}
    handles = [
        store[key].register_forward_hook(lambda *_, key=key: calls.__setitem__(key, calls.get(key, 0) + 1))
        for key in store.keys()
    ]
    try:
        _eval_run(net, x)
    finally:
        for h in handles:
            h.remove()
    assert calls == {key: 1 for key in store.keys()}
    assert sum(node.op == "call_module" for node in net.graph.nodes) == len(store.keys()) == 10


# --------------------------------------------------------------------------- #
# Skip, Gate and in-place blocks
# --------------------------------------------------------------------------- #

SKIP_GATE = """\
%0 = input
%1 = block 0 w=b0.shared (%0)
%2 = block 1 w=b1.shared (%1)
%3 = block 2 w=b2.shared (%2)
%4 = block 3 w=b3.S (%3)
%5 = skip 3 w=b3.E (%3)
%6 = gate D w=gate.D (%4, %5)
%7 = block 4 w=b4.S (%4)
%8 = skip 4 (%5)
%9 = block 4 w=b4.D (%6)
S = head (%7)
E = head (%8)
D = head (%9)
"""


def test_skip_and_gate_compute_shortcut_and_mixture(traced, tasks) -> None:
    model, x, backbone = traced("resnet_basic")
    graph = parse_graph(SKIP_GATE)
    gate = mtgraph.MixGate(2, init_probs=[0.25, 0.75])
    store, net = _compiled(graph, backbone, make_heads(backbone.output_shape, tasks), gates={"gate.D": gate})
    out = _eval_run(net, x)
    with torch.no_grad():
        h = model.layer1(model.relu(model.bn1(model.conv1(x))))
        main, short = model.layer2[0](h), model.layer2[0].downsample(h)  # block 3 run, block 3 skipped
        mixed = main * gate.probabilities()[0] + short * gate.probabilities()[1]
        assert torch.equal(out["S"], store["head.S"](model.layer2[1](main)))
        assert torch.equal(out["E"], store["head.E"](short))  # block 3 -> projection, block 4 -> identity
        assert torch.allclose(out["D"], store["head.D"](model.layer2[1](mixed)), atol=1e-6)
    # The skip's projection uses b3.E's own parameters.
    shortcut = net.get_submodule("b3_E__shortcut")
    assert {id(p) for p in shortcut.parameters()} < {id(p) for p in store["b3.E"].parameters()}


def test_skip_of_a_block_without_shortcut_is_refused(traced) -> None:
    _, _, backbone = traced("resnet_basic")
    graph = parse_graph("%0 = input\n%1 = skip 0 (%0)\n%2 = block 1 w=b1.S (%1)\n%3 = block 2 w=b2.S (%2)\n"
                        "%4 = block 3 w=b3.S (%3)\n%5 = block 4 w=b4.S (%4)\nS = head (%5)\n")
    store = ParamStore.create(graph, backbone, make_heads(backbone.output_shape, ["S"]))
    with pytest.raises(CompileError, match=r"node %1 skips block 0 \(conv1..relu\), which cannot be skipped: shapes differ"):
        mtgraph.compile(graph, store)
    projection = parse_graph(SKIP_GATE.replace("%5 = skip 3 w=b3.E (%3)", "%5 = skip 3 (%3)"))
    heads = make_heads(backbone.output_shape, ["S", "E", "D"])
    store = ParamStore.create(projection, backbone, heads, gates={"gate.D": mtgraph.MixGate(2)})
    with pytest.raises(CompileError, match=r"node %5 skips block 3 \(layer2.0\) whose shortcut has weights"):
        mtgraph.compile(projection, store)


def test_block_writing_into_its_input_does_not_corrupt_its_siblings() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Hardswish(inplace=True), nn.Conv2d(4, 4, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    backbone = mtgraph.trace(model, x)
    assert backbone.num_blocks == 3
    graph = from_groups(3, ["S", "E"], [[["S", "E"]], [["S"], ["E"]], [["S"], ["E"]]])
    _, net = _compiled(graph, backbone, {"S": nn.Identity(), "E": nn.Flatten()})
    out = _eval_run(net, x)
    expected = _eval_run(model, x)
    assert torch.equal(out["S"], expected) and torch.equal(out["E"], expected.flatten(1))


# --------------------------------------------------------------------------- #
# Modes, training, torch.compile
# --------------------------------------------------------------------------- #


def test_train_and_eval_flags_pass_through(traced, tasks) -> None:
    _, x, backbone = traced("resnet_basic")
    store, net = _compiled(one_net(5, tasks), backbone, make_heads(backbone.output_shape, tasks))
    net.train()
    assert all(m.training for _, module in store.items() for m in module.modules())
    net.eval()
    assert not any(m.training for _, module in store.items() for m in module.modules())


def test_training_the_compiled_module_trains_the_store(traced, tasks) -> None:
    _, x, backbone = traced("resnet_basic")
    store, net = _compiled(one_net(5, tasks), backbone, make_heads(backbone.output_shape, tasks))
    assert {id(p) for p in net.parameters()} == {id(p) for _, m in store.items() for p in m.parameters()}
    bn = store["b0.shared"].get_submodule("bn1")
    weight, running_mean = store["b0.shared"].get_submodule("conv1").weight.detach().clone(), bn.running_mean.clone()
    net.train()
    loss = sum(v.square().mean() for v in net(x).values())
    loss.backward()
    with torch.no_grad():
        for p in net.parameters():
            p -= 0.1 * p.grad
    assert bn.num_batches_tracked.item() == 1 and not torch.equal(bn.running_mean, running_mean)
    assert not torch.equal(store["b0.shared"].get_submodule("conv1").weight, weight)


@pytest.mark.slow  # a cold inductor compile takes 20 s to minutes on a busy 2-core machine
@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile is not available")
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="torch.compile needs a C compiler")
def test_compiled_network_runs_under_torch_compile(tasks) -> None:
    model, x = resnet_basic()
    backbone = mtgraph.trace(model, x)
    _, net = _compiled(from_groups(5, tasks, [[list(tasks)]] * 3 + [[["S", "E"], ["D"]]] * 2),
                       backbone, make_heads(backbone.output_shape, tasks))
    fast = torch.compile(net)
    got, expected = _eval_run(fast, x), _eval_run(net, x)
    assert list(got) == list(tasks)
    for task in tasks:
        assert torch.allclose(got[task], expected[task], rtol=1e-4, atol=1e-5), task


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #


def test_head_that_does_not_fit_names_the_task_and_both_shapes(traced, tasks) -> None:
    _, _, backbone = traced("resnet_basic")  # outputs [N, 16, 8, 8]
    heads = make_heads(backbone.output_shape, tasks)
    heads["E"] = nn.Conv2d(12, 3, 1)
    with pytest.raises(HeadError, match=r"head of task 'E' does not fit the backbone: the backbone outputs \[N, 16, 8, 8\] but the head expects 12 input channels"):
        ParamStore.create(one_net(5, tasks), backbone, heads)
    heads["E"] = nn.Sequential(nn.Flatten(), nn.Linear(100, 2))
    with pytest.raises(HeadError, match=r"task 'E'.*\[N, 16, 8, 8\].*100 input features"):
        ParamStore.create(one_net(5, tasks), backbone, heads)


def test_missing_or_non_module_head_is_rejected(traced, tasks) -> None:
    _, _, backbone = traced("resnet_basic")
    heads = make_heads(backbone.output_shape, ["S", "E"])
    with pytest.raises(HeadError, match=r"no head given for tasks \['D'\]"):
        ParamStore.create(one_net(5, tasks), backbone, heads)
    with pytest.raises(HeadError, match=r"head of task 'D' must be an nn.Module, got function"):
        ParamStore.create(one_net(5, tasks), backbone, {**heads, "D": lambda t: t})  # type: ignore[dict-item]


def test_head_writing_into_the_shared_output_is_rejected(traced, tasks) -> None:
    _, _, backbone = traced("resnet_basic")
    heads = make_heads(backbone.output_shape, tasks)
    heads["D"] = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(16, 1, 1))
    with pytest.raises(HeadError, match=r"head of task 'D' modifies its input in place"):
        ParamStore.create(one_net(5, tasks), backbone, heads)
    ParamStore.create(one_net(5, ["D"]), backbone, {"D": heads["D"]})  # alone it harms no one


def test_compile_rejects_broken_graphs_and_stores(traced, tasks) -> None:
    _, _, backbone = traced("resnet_basic")
    graph = one_net(5, tasks)
    store = ParamStore.create(graph, backbone, make_heads(backbone.output_shape, tasks))
    with pytest.raises(CompileError, match="params must be a ParamStore"):
        mtgraph.compile(graph, dict(store.items()))  # type: ignore[arg-type]
    with pytest.raises(VerifyError, match=r"cannot compile: node %3 \(%3 = block 2 w=b2.shared \(%2\)\): weight key 'b2.shared' is not in the ParamStore"):
        mtgraph.compile(graph, store.updated(drop=["b2.shared"]))
    with pytest.raises(VerifyError, match=r"cannot compile: .*the backbone has 5 blocks"):
        mtgraph.compile(one_net(6, tasks), store)
