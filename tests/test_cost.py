"""cost: GMac and parameters, counted once per node, equal to FlopCounterMode and to hand-checked numbers."""

from __future__ import annotations

import json

import pytest
import torch
from backbones import ALL, make_heads
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import mtgraph
from mtgraph import ParamStore
from mtgraph.analysis.macs import count_macs, count_parameters, mac_counter
from mtgraph.ir import from_groups, one_net, parse_graph, stn

NAMES = list(ALL)
#: Backbones whose attention runs F.scaled_dot_product_attention (CPU kernel unknown to FlopCounterMode).
SDPA = {"vit_mha", "tv_vit"}


def _counted(module: nn.Module, x: torch.Tensor, counter: FlopCounterMode) -> int:
    """MACs of ``module(x)`` in eval mode, measured the plain way: one counter around the whole call."""
    module.eval()
    with counter:
        module(x)
    return counter.get_total_flops() // 2


def _attention_macs(name: str, backbone: mtgraph.Backbone) -> int:
    """softmax(q k^T) v MACs per image: two (tokens x tokens x dim) matmuls per encoder layer."""
    if name not in SDPA:
        return 0
    tokens, dim = backbone.blocks[1].in_shape
    layers = sum(b.name.startswith(("blocks.", "encoder.layers.")) for b in backbone.blocks)
    return layers * 2 * tokens * tokens * dim


@pytest.mark.parametrize("name", NAMES)
def test_one_net_cost_equals_flop_counter_and_backbone_plus_heads(name: str, traced, tasks) -> None:
    model, x, backbone = traced(name)
    heads = make_heads(backbone.output_shape, tasks)
    graph = one_net(backbone.num_blocks, tasks)
    store = ParamStore.create(graph, backbone, heads)
    report = mtgraph.cost(graph, store)
    net = mtgraph.compile(graph, store)
    one = x[:1]
    # The whole compiled network under one counter, at batch 1.
    assert report.total_macs == _counted(net, one, mac_counter())
    # Plain FlopCounterMode agrees, except for the CPU attention kernel it has no formula for.
    assert report.total_macs == _counted(net, one, FlopCounterMode(display=False)) + _attention_macs(name, backbone)
    # Backbone + heads, measured on the user's own modules.
    features = model(one)
    heads_macs = sum(_counted(h, features, mac_counter()) for h in heads.values())
    assert report.total_macs == _counted(model, one, mac_counter()) + heads_macs == backbone.macs + heads_macs
    assert report.shared_macs == backbone.macs and report.specific_macs == heads_macs
    # Parameters: the backbone's (tied tensors once) plus the heads'.
    heads_params = count_parameters(heads.values())
    assert report.total_params == count_parameters([model]) + heads_params == backbone.params + heads_params
    for task in tasks:
        own_head = _counted(heads[task], features, mac_counter())
        assert report.tasks[task].macs == backbone.macs + own_head
        assert report.tasks[task].specific_macs == own_head
        assert report.tasks[task].params == backbone.params + count_parameters([heads[task]])


@pytest.mark.parametrize("name", NAMES)
def test_stn_cost_is_the_sum_over_tasks(name: str, traced, tasks) -> None:
    model, x, backbone = traced(name)
    heads = make_heads(backbone.output_shape, tasks)
    graph = stn(backbone.num_blocks, tasks)
    store = ParamStore.create(graph, backbone, heads)
    report = mtgraph.cost(graph, store)
    assert report.total_macs == _counted(mtgraph.compile(graph, store), x[:1], mac_counter())
    assert report.total_macs == sum(report.tasks[t].macs for t in tasks)
    assert report.total_macs == len(tasks) * backbone.macs + sum(count_macs(h, model(x[:1])) for h in heads.values())
    assert report.total_params == sum(report.tasks[t].params for t in tasks)
    assert report.total_params == len(tasks) * count_parameters([model]) + count_parameters(heads.values())
    assert report.shared_macs == 0 and report.shared_params == 0


def test_attention_is_counted_whichever_way_it_is_written(traced) -> None:
    # Same architecture, attention by matmul/softmax or by nn.MultiheadAttention: same MACs per block.
    _, _, matmul = traced("vit_matmul")
    _, _, mha = traced("vit_mha")
    assert [b.macs for b in matmul.blocks] == [b.macs for b in mha.blocks]
    tokens, dim = 17, 32  # 4 x 4 patches + class token
    projections = tokens * (dim * 3 * dim + dim * dim)
    mlp = tokens * 2 * (dim * 2 * dim)
    assert mha.blocks[1].macs == projections + 2 * tokens * tokens * dim + mlp


# --------------------------------------------------------------------------- #
# A hand-checked tree
# --------------------------------------------------------------------------- #


def _linear_tree() -> tuple[mtgraph.MTGraph, ParamStore]:
    torch.manual_seed(0)
    backbone = mtgraph.trace(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)), torch.randn(2, 8))
    heads = {"S": nn.Linear(4, 2), "E": nn.Linear(4, 3), "D": nn.Linear(4, 1)}
    graph = from_groups(3, ["S", "E", "D"], [[["S", "E", "D"]], [["S", "E"], ["D"]], [["S"], ["E"], ["D"]]])
    return graph, ParamStore.create(graph, backbone, heads)


def test_hand_checked_tree() -> None:
    graph, store = _linear_tree()
    report = mtgraph.cost(graph, store)
    # Blocks: 8x8, 8x8, 8x4 linears (64, 64, 32 MACs; 72, 72, 36 params); heads 4x2, 4x3, 4x1.
    # b0 shared by S,E,D; b1 by S,E and D alone; b2 per task.
    assert [n.macs for n in report.nodes] == [0, 64, 64, 64, 32, 32, 32, 8, 12, 4]
    assert [n.params for n in report.nodes] == [0, 72, 72, 72, 36, 36, 36, 10, 15, 5]
    assert [n.tasks for n in report.nodes[:4]] == [("S", "E", "D"), ("S", "E", "D"), ("S", "E"), ("D",)]
    assert report.nodes[4].shape == (4,) and report.nodes[7].shape == (2,)
    assert report.total_macs == 64 + 2 * 64 + 3 * 32 + (8 + 12 + 4) == 312
    assert report.total_params == 72 + 2 * 72 + 3 * 36 + (10 + 15 + 5) == 354
    assert (report.shared_macs, report.specific_macs) == (128, 184)
    assert (report.shared_params, report.specific_params) == (144, 210)
    expected = {  # (macs, params, shared macs, own macs)
        "S": (64 + 64 + 32 + 8, 72 + 72 + 36 + 10, 128, 40),
        "E": (64 + 64 + 32 + 12, 72 + 72 + 36 + 15, 128, 44),
        "D": (64 + 64 + 32 + 4, 72 + 72 + 36 + 5, 64, 100),
    }
    for task, (macs, params, shared, own) in expected.items():
        tc = report.tasks[task]
        assert (tc.macs, tc.params, tc.shared_macs, tc.specific_macs) == (macs, params, shared, own), task


def test_report_text_and_dict() -> None:
    graph, store = _linear_tree()
    report = mtgraph.cost(graph, store)
    text = str(report)
    lines = text.splitlines()
    assert "input [" in lines[0]  # the input size the MACs are for
    assert lines[1].split() == ["task", "Mac", "params", "shared", "Mac", "task-specific", "Mac"]
    assert [line.split()[0] for line in lines[2:]] == ["S", "E", "D", "total"]
    # 312 MACs in the unit that fits them: the numbers themselves, not 0.0000 GMac
    assert lines[-1].split() == ["total", "312", str(report.total_params), "128", "184"]
    assert lines[4].split()[-1] == "100" and "0.0000" not in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["total_macs"] == 312 and data["gmac"] == pytest.approx(312e-9)
    assert set(data["tasks"]) == {"S", "E", "D"} and data["tasks"]["D"]["specific_macs"] == 100
    assert data["nodes"][2]["text"] == "%2 = block 1 w=b1.S+E (%1)" and data["nodes"][2]["tasks"] == ["S", "E"]


# --------------------------------------------------------------------------- #
# Skip and Gate nodes
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


def test_skip_and_gate_nodes_cost(traced, tasks) -> None:
    _, x, backbone = traced("resnet_basic")
    graph = parse_graph(SKIP_GATE)
    heads = make_heads(backbone.output_shape, tasks)
    store = ParamStore.create(graph, backbone, heads, gates={"gate.D": mtgraph.MixGate(2)})
    report = mtgraph.cost(graph, store)
    nodes = report.nodes
    # Projection skip of layer2.0: a 1x1 conv 8 -> 16 on an 8x8 output, plus its BatchNorm.
    assert (nodes[5].macs, nodes[5].params, nodes[5].tasks) == (8 * 16 * 8 * 8, 8 * 16 + 2 * 16, ("E", "D"))
    assert (nodes[8].macs, nodes[8].params) == (0, 0)  # identity skip
    assert (nodes[6].macs, nodes[6].params, nodes[6].tasks) == (0, 2, ("D",))  # a gate: two logits, no MACs
    assert nodes[4].macs == backbone.blocks[3].macs and nodes[4].tasks == ("S", "D")
    assert report.total_macs == _counted(mtgraph.compile(graph, store), x[:1], mac_counter())
    assert report.total_macs == sum(n.macs for n in nodes)
    # b3.E is only used as a skip: only its projection's parameters are in the network.
    assert report.total_params == (
        sum(backbone.blocks[b].params for b in (0, 1, 2, 3, 4, 4)) + 160 + 2 + count_parameters(heads.values())
    )
    assert report.tasks["E"].macs == sum(backbone.blocks[b].macs for b in (0, 1, 2)) + 8192 + nodes[11].macs
    assert report.tasks["D"].macs == sum(n.macs for n in nodes[:7]) + nodes[9].macs + nodes[12].macs


def test_cost_changes_nothing(traced, tasks) -> None:
    _, _, backbone = traced("resnet_basic")
    graph = one_net(5, tasks)
    store = ParamStore.create(graph, backbone, make_heads(backbone.output_shape, tasks))
    for _, module in store.items():
        module.train()
    before = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in store.items()}
    mtgraph.cost(graph, store)
    for key, module in store.items():
        assert all(m.training for m in module.modules())
        for n, t in module.state_dict().items():
            assert torch.equal(t, before[key][n]), (key, n)


# --------------------------------------------------------------------------- #
# Cross-check with fvcore
# --------------------------------------------------------------------------- #


def test_fvcore_agrees_on_convolutions_and_linears(traced) -> None:
    fvcore = pytest.importorskip("fvcore.nn")
    for name in ("resnet_basic", "tv_resnet18") if "tv_resnet18" in ALL else ("resnet_basic",):
        model, x, backbone = traced(name)
        analysis = fvcore.FlopCountAnalysis(model.eval(), x[:1])
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        by_op = dict(analysis.by_operator())
        # fvcore counts one "flop" per multiply-accumulate of conv/linear/matmul: the same as our MACs.
        assert by_op.get("conv", 0) + by_op.get("linear", 0) + by_op.get("matmul", 0) == backbone.macs
        # It also counts BatchNorm (and pooling) elements, which the GMac convention leaves out:
        extra = {op: n for op, n in by_op.items() if op not in ("conv", "linear", "matmul")}
        assert analysis.total() - backbone.macs == sum(extra.values())
        assert "batch_norm" in extra


# --------------------------------------------------------------------------- #
# The interpreter against the compiled module: trees, AdaShare skips, gates
# --------------------------------------------------------------------------- #


def _architectures(backbone: mtgraph.Backbone, tasks: tuple[str, ...]) -> dict[str, tuple[mtgraph.MTGraph, ParamStore]]:
    """A tree, an AdaShare-style skip graph (per-site statistics) and a gated graph, built by passes."""
    from mtgraph.passes import run_passes

    n = backbone.num_blocks
    kinds = [row.shortcut.kind for row in backbone.signature]
    projection = [b for b in range(n) if kinds[b] == "projection"]
    identity = [b for b in range(n) if kinds[b] == "identity"]
    heads = make_heads(backbone.output_shape, tasks)
    s, e, d = tasks
    half = n // 2
    tree = from_groups(n, tasks, [[list(tasks)]] * half + [[[s, e], [d]]] + [[[s], [e], [d]]] * (n - half - 1))
    out = {"tree": (tree, ParamStore.create(tree, backbone, heads))}
    shared = one_net(n, tasks)
    start = ParamStore.create(shared, backbone, heads)
    skips = run_passes(shared, start, f"skip{{task={e},block={identity[0]}}},skip{{task={d},block={projection[0]}}},"
                                      f"skip{{task={s},block={projection[-1]}}}")
    out["adashare"] = (skips.graph, skips.params.with_site_statistics(skips.graph))
    gated = run_passes(shared, start, f"gate{{task={d},start={projection[0]},end={projection[0]},private=skip}},"
                                      f"gate{{task={s},start={identity[0]},end={identity[0]},private=fresh,alpha=0.3}}")
    out["gated"] = (gated.graph, gated.params)
    return out


@pytest.mark.parametrize("name", ["resnet_basic", "resnet_bottleneck", *(["tv_resnet18"] if "tv_resnet18" in ALL else [])])
def test_cost_of_trees_skips_and_gates_equals_the_flop_counter(name: str, traced, tasks) -> None:
    _, x, backbone = traced(name)
    for label, (graph, store) in _architectures(backbone, tasks).items():
        report = mtgraph.cost(graph, store)
        net = mtgraph.compile(graph, store)
        assert report.total_macs == _counted(net, x[:1], mac_counter()) == _counted(net, x[:1], FlopCounterMode(display=False)), label
        assert report.total_macs == sum(n.macs for n in report.nodes), label
        assert report.total_params == sum(p.numel() for p in net.parameters()), label  # parameters() dedups tensors


def test_cost_runs_heads_and_gates_once_and_no_traced_block(traced, tasks) -> None:
    _, _, backbone = traced("resnet_basic")
    graph, store = _architectures(backbone, tasks)["gated"]
    calls: dict[str, int] = {}
    handles = [
        module.register_forward_pre_hook(lambda m, args, key=key: calls.__setitem__(key, calls.get(key, 0) + 1))
        for key, module in store.items()
    ]
    try:
        mtgraph.cost(graph, store)
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(calls) == sorted(k for k in store.keys() if k.startswith(("head.", "gate.")))
    assert set(calls.values()) == {1}


def test_a_module_that_is_not_the_traced_block_is_measured() -> None:
    torch.manual_seed(0)
    backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)), torch.randn(2, 3, 8, 8))
    graph = stn(2, ["S", "E"])
    store = ParamStore.create(graph, backbone, {"S": nn.Conv2d(4, 1, 1), "E": nn.Conv2d(4, 1, 1)})
    cheaper = store.updated(add={"b1.E": nn.Sequential(nn.Conv2d(4, 4, 1))})  # same shapes, 9x fewer MACs
    before, after = mtgraph.cost(graph, store), mtgraph.cost(graph, cheaper)
    assert before.nodes[4].macs == backbone.blocks[1].macs == 9 * after.nodes[4].macs
    assert after.total_macs == _counted(mtgraph.compile(graph, cheaper), torch.randn(1, 3, 8, 8), mac_counter())
    assert after.nodes[4].params == 4 * 4 + 4


class _PairGate(nn.Module):
    """A gate module whose value is a pair, not a tensor (as Safe MTL's decoder-level gate)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a, b


class _PairHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.first(pair[0]) + self.second(pair[1])


def test_a_value_that_is_not_a_tensor_is_passed_on_as_the_module_returned_it() -> None:
    torch.manual_seed(0)
    backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)), torch.randn(2, 3, 8, 8))
    graph = parse_graph("%0 = input\n%1 = block 0 w=b0.shared (%0)\n%2 = block 1 w=b1.shared (%1)\n%3 = block 1 w=b1.S (%1)\n"
                        "%4 = gate S w=gate.S (%2, %3)\nS = head (%4)\nE = head (%2)\n")
    store = ParamStore.create(graph, backbone, {"S": nn.Identity(), "E": nn.Conv2d(4, 1, 1)}, gates={"gate.S": _PairGate()})
    store = store.updated(add={"head.S": _PairHead()})
    report = mtgraph.cost(graph, store)
    assert report.nodes[4].shape == () and report.nodes[4].macs == 0
    assert report.nodes[5].macs == 64 * (4 * 2 + 4 * 2 * 9) and report.nodes[5].shape == (2, 8, 8)
    assert report.total_macs == _counted(mtgraph.compile(graph, store), torch.randn(1, 3, 8, 8), mac_counter())
