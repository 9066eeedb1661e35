"""Multi-tensor boundaries: encoder-decoders, feature pyramids and forwards with optional arguments.

Every architecture here is checked the way single-tensor backbones are: the
traced chain reproduces the model bit for bit, compiled trees equal code
written by hand with the same weights, cost equals FlopCounterMode / 2 of the
compiled module, and saving, ONNX export, drawing and every pass work on it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence

import pytest
import torch
from backbones import PyramidNeck, UNet4, make_heads, pyramid, randomize_batchnorm, unet4
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import mtgraph
from mtgraph import HeadError, MemberHead, ParamStore, TraceError
from mtgraph.analysis.macs import mac_counter
from mtgraph.exporters import dot_source
from mtgraph.ir import from_groups, one_net, stn
from mtgraph.ir.members import LongEdge, long_edges
from mtgraph.passes import GatePass, HardenPass, SkipPass, SplitPass, run_passes

TASKS = ("S", "E", "D")
#: The tree of these tests: the encoder and up1 (blocks 0-4) shared, up2 split {S, E} | {D}, then one branch per task.
DECODER_TREE = [[list(TASKS)]] * 5 + [[["S", "E"], ["D"]]] + [[["S"], ["E"], ["D"]]] * 3


@pytest.fixture(scope="module")
def traced_unet() -> tuple[nn.Module, torch.Tensor, mtgraph.Backbone]:
    model, x = unet4()
    return model, x, mtgraph.trace(model, x)


def _run(module: Callable[..., object], *args: object) -> object:
    with torch.no_grad():
        return module(*args)


def _unet(seed: int) -> UNet4:
    """A UNet4 with its own weights and BatchNorm statistics (the global random state is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet4()
    randomize_batchnorm(model, seed)
    return model.eval()


def _load(store: ParamStore, graph: mtgraph.MTGraph, models: dict[str, nn.Module]) -> None:
    """Copy each block key's weights from ``models[suffix]`` (``b5.S+E`` reads ``models["S+E"]``).

    A traced block keeps the model's qualified parameter names, so its state is a subset of the model's.
    """
    for key in graph.weight_keys():
        if key.startswith("head."):
            continue
        module = store[key]
        source = models[key.partition(".")[2]].state_dict()
        module.load_state_dict({name: source[name] for name in module.state_dict()})


def _heads(backbone: mtgraph.Backbone) -> dict[str, nn.Module]:
    return make_heads(backbone.output_shape, TASKS)


def _built(graph: mtgraph.MTGraph, backbone: mtgraph.Backbone, models: dict[str, nn.Module]) -> tuple[ParamStore, nn.Module]:
    store = ParamStore.create(graph, backbone, _heads(backbone))
    _load(store, graph, models)
    return store, mtgraph.compile(graph, store).eval()


def _assert_outputs_equal(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(expected)
    for task in expected:
        assert torch.equal(got[task], expected[task]), task


def _macs_measured(net: nn.Module, x: torch.Tensor, counter: FlopCounterMode) -> int:
    with torch.no_grad(), counter:
        net(x)
    return counter.get_total_flops() // 2


# --------------------------------------------------------------------------- #
# Tracing
# --------------------------------------------------------------------------- #


def test_unet_with_four_down_and_four_up_stages_traces_into_nine_blocks(traced_unet) -> None:
    model, x, backbone = traced_unet
    assert [b.name for b in backbone] == [
        "inc", "down1.maxpool_conv", "down2.maxpool_conv", "down3.maxpool_conv", "down4..up1", "up2", "up3", "up4",
        "outc.0",
    ]
    assert torch.equal(_run(backbone, x), _run(model, x))
    table = backbone.signature
    # Level 4 (after down3) carries x1..x4; down4 and up1 share a block because five tensors are live between them.
    assert table.level_members(4) == ("inc", "down1.maxpool_conv", "down2.maxpool_conv", "down3.maxpool_conv")
    assert [len(table.level(k)) for k in range(10)] == [1, 1, 2, 3, 4, 4, 3, 2, 1, 1]
    assert table.blocks[7].consumed == (0, 1)  # up4 reads x1 (carried since level 1) and up3's output
    assert [b.name for b in mtgraph.trace(model, x, max_live=5)][4:6] == ["down4.maxpool_conv", "up1"]
    assert [b.name for b in mtgraph.trace(model, x, max_live=1)] == ["inc", "down1..up4", "outc.0"]
    assert "+3" in backbone.describe() and "+k: the boundary also carries" in backbone.describe()


def test_every_block_of_the_unet_reproduces_its_piece_and_is_skippable_only_when_its_value_keeps_its_shapes(traced_unet) -> None:
    model, x, backbone = traced_unet
    value: object = x
    for block in backbone:
        value = _run(block.module, value)
    assert torch.equal(value, _run(model, x))
    skippable = [b.index for b in backbone if b.skippable]
    assert skippable == [4, 8]  # down4..up1 maps (x1, x2, x3, x4) to (x1, x2, x3, y4) of the same shapes; outc
    assert "only the identity skip is defined at a multi-tensor boundary" in backbone.blocks[5].shortcut.reason


# --------------------------------------------------------------------------- #
# Trees that branch inside the decoder compile to hand-written networks
# --------------------------------------------------------------------------- #


class HandWrittenTree(nn.Module):
    """DECODER_TREE written out: a shared encoder and up1, up2 for {S, E} and for D, then up3, up4, outc per task."""

    def __init__(self, models: dict[str, UNet4], heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleDict({k.replace("+", "_"): m for k, m in models.items()})
        self.heads = nn.ModuleDict(heads)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.models["shared"]
        x1 = shared.inc(x)
        x2 = shared.down1(x1)
        x3 = shared.down2(x2)
        x4 = shared.down3(x3)
        y = shared.up1(shared.down4(x4), x4)
        after_up2 = {"S": self.models["S_E"].up2(y, x3), "D": self.models["D"].up2(y, x3)}
        after_up2["E"] = after_up2["S"]
        out = {}
        for task in TASKS:
            own = self.models[task]
            out[task] = self.heads[task](own.outc(own.up4(own.up3(after_up2[task], x2), x1)))
        return out


def test_stn_one_net_and_a_tree_branching_in_the_decoder_compile_to_the_hand_written_networks(traced_unet) -> None:
    _, x, backbone = traced_unet
    models = {name: _unet(seed) for seed, name in enumerate(("shared", "S+E", "S", "E", "D"), start=30)}
    # One-Net: every task reads the one network.
    graph = one_net(backbone.num_blocks, TASKS)
    store, net = _built(graph, backbone, models)
    features = _run(models["shared"], x)
    _assert_outputs_equal(_run(net, x), {t: _run(store[f"head.{t}"], features) for t in TASKS})
    # Single-task networks: each task its own network.
    graph = stn(backbone.num_blocks, TASKS)
    store, net = _built(graph, backbone, models)
    _assert_outputs_equal(_run(net, x), {t: _run(store[f"head.{t}"], _run(models[t], x)) for t in TASKS})
    # The tree branching at up2 and up3.
    graph = from_groups(backbone.num_blocks, TASKS, DECODER_TREE)
    store, net = _built(graph, backbone, models)
    heads = {t: store[f"head.{t}"] for t in TASKS}
    _assert_outputs_equal(_run(net, x), _run(HandWrittenTree(models, heads).eval(), x))
    # Branching really happens inside the decoder: shared nodes hold multi-tensor values.
    shared_blocks = {n.block for i, n in enumerate(graph.nodes) if isinstance(n, mtgraph.ir.Block) and len(graph.served[i]) == 3}
    assert shared_blocks == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("build", ["one_net", "stn", "tree"])
def test_cost_equals_flop_counter_of_the_compiled_unet(traced_unet, build: str) -> None:
    _, x, backbone = traced_unet
    graph = {"one_net": lambda: one_net(9, TASKS), "stn": lambda: stn(9, TASKS), "tree": lambda: from_groups(9, TASKS, DECODER_TREE)}[build]()
    store = ParamStore.create(graph, backbone, _heads(backbone))
    report = mtgraph.cost(graph, store)
    net = mtgraph.compile(graph, store).eval()
    one = x[:1]
    assert report.total_macs == _macs_measured(net, one, FlopCounterMode(display=False)) == _macs_measured(net, one, mac_counter())
    assert report.total_params == sum(p.numel() for p in net.parameters())
    multi = [n for n in report.nodes if len(n.shapes) > 1]
    assert multi and all(n.shape == () for n in multi)  # the multi-tensor levels report every member's shape
    down3 = next(i for i, n in enumerate(graph.nodes) if isinstance(n, mtgraph.ir.Block) and n.block == 3)
    assert report.nodes[down3].shapes == ((4, 32, 32), (8, 16, 16), (16, 8, 8), (32, 4, 4))


def test_save_and_load_give_a_bit_identical_unet_tree(traced_unet, tmp_path) -> None:
    _, x, backbone = traced_unet
    graph = from_groups(backbone.num_blocks, TASKS, DECODER_TREE)
    heads = _heads(backbone)
    store = ParamStore.create(graph, backbone, heads)
    suffixes = sorted({k.partition(".")[2] for k in graph.weight_keys() if not k.startswith("head.")})
    _load(store, graph, {suffix: _unet(40 + i) for i, suffix in enumerate(suffixes)})
    mtgraph.save(graph, store, tmp_path)
    loaded_graph, loaded = mtgraph.load(tmp_path, backbone, heads)
    assert loaded_graph == graph
    _assert_outputs_equal(_run(mtgraph.compile(loaded_graph, loaded).eval(), x), _run(mtgraph.compile(graph, store).eval(), x))


def test_onnx_export_of_a_decoder_tree_has_task_named_outputs_and_parity(traced_unet, tmp_path) -> None:
    from mtgraph.exporters import export_onnx

    _, _, backbone = traced_unet
    graph = from_groups(backbone.num_blocks, TASKS, DECODER_TREE)
    store = ParamStore.create(graph, backbone, _heads(backbone))
    result = export_onnx(graph, store, tmp_path / "unet.onnx")
    assert result.output_names == TASKS and result.path.is_file()
    # Parity bound: float32 convolutions summed in another order differ by a few ulps of values of order 1.
    assert result.worst_diff < 1e-4
    assert result.macs == mtgraph.cost(graph, store).total_macs


def test_the_diagram_draws_the_skip_connections_from_the_node_that_computed_each_tensor(traced_unet) -> None:
    _, _, backbone = traced_unet
    graph = from_groups(backbone.num_blocks, TASKS, DECODER_TREE)
    store = ParamStore.create(graph, backbone, _heads(backbone))
    edges = long_edges(graph, backbone.signature)
    by_member: dict[str, list[LongEdge]] = {}
    for edge in edges:
        by_member.setdefault(edge.member, []).append(edge)
    # x3 -> up2 (two up2 nodes: {S, E} and D), x2 -> up3 and x1 -> up4 (one per task); all computed by shared nodes.
    assert {m: len(e) for m, e in by_member.items()} == {"down2.maxpool_conv": 2, "down1.maxpool_conv": 3, "inc": 3}
    for edge in edges:
        assert graph.served[edge.origin] == frozenset(TASKS)
        assert graph.nodes[edge.consumer].block == {"inc": 7, "down1.maxpool_conv": 6, "down2.maxpool_conv": 5}[edge.member]
    source = dot_source(graph, store)
    dotted = [line for line in source.splitlines() if "style=dotted" in line]
    drawn = [re.search(r"n(\d+) -> n(\d+) \[label=\"?([\w.#]+)", line).groups() for line in dotted]  # type: ignore[union-attr]
    assert sorted((int(a), int(b), m) for a, b, m in drawn) == sorted((e.origin, e.consumer, e.member) for e in edges)
    assert "style=dotted" not in dot_source(graph)  # without the store the signature table is unknown


# --------------------------------------------------------------------------- #
# Passes on an encoder-decoder
# --------------------------------------------------------------------------- #


def test_split_inside_the_decoder_is_bit_identical_and_fuse_recovers_the_tree(traced_unet) -> None:
    _, x, backbone = traced_unet
    graph = one_net(backbone.num_blocks, TASKS)
    store = ParamStore.create(graph, backbone, _heads(backbone))
    before = _run(mtgraph.compile(graph, store).eval(), x)
    split = SplitPass(block=5, groups=(("S", "E"), ("D",)))(graph, store)
    _assert_outputs_equal(_run(mtgraph.compile(split.graph, split.params).eval(), x), before)
    result = run_passes(graph, store, "split{block=5,groups=S+E/D},split{block=6,groups=S/E},cse,dce")
    assert result.graph == from_groups(backbone.num_blocks, TASKS, DECODER_TREE)
    fuses = ",".join(f"fuse{{tasks=S+E+D,block={b},init=average}}" for b in range(5, 9))
    back = run_passes(result.graph, result.params, f"{fuses},cse,dce")
    assert back.graph == graph


def test_skip_of_a_multi_tensor_block_passes_the_value_on_and_other_blocks_are_refused(traced_unet) -> None:
    model, x, backbone = traced_unet
    graph = one_net(backbone.num_blocks, ("S",))
    store = ParamStore.create(graph, backbone, make_heads(backbone.output_shape, ("S",)))
    skipped = SkipPass("S", block=4)(graph, store)  # down4..up1: (x1, x2, x3, x4) -> (x1, x2, x3, y)
    head = store["head.S"]
    x1 = model.inc(x)
    x2 = model.down1(x1)
    x3 = model.down2(x2)
    x4 = model.down3(x3)
    expected = _run(lambda: head(model.outc(model.up4(model.up3(model.up2(x4, x3), x2), x1))))
    assert torch.equal(_run(mtgraph.compile(skipped.graph, skipped.params).eval(), x)["S"], expected)
    assert mtgraph.cost(skipped.graph, skipped.params).total_macs == _macs_measured(
        mtgraph.compile(skipped.graph, skipped.params).eval(), x[:1], FlopCounterMode(display=False))
    refusal = SkipPass("S", block=5).check(graph, store)
    assert refusal is not None and re.search(
        r"block 5 \(up2\) cannot be skipped: its input value \[4, 32, 32\] float32 \+ .* and output value .* differ", refusal.text)


def test_gates_mix_multi_tensor_values_member_by_member_and_harden_to_one_path(traced_unet) -> None:
    _, x, backbone = traced_unet
    graph = one_net(backbone.num_blocks, TASKS)
    store = ParamStore.create(graph, backbone, _heads(backbone))
    # D gets a private path for blocks 2..5 (levels 3..6 carry 2 to 4 tensors), mixed back by a gate at level 6.
    gated = GatePass("D", start=2, end=5, alpha=0.25)(graph, store)
    gate = next(n for n in gated.graph.nodes if isinstance(n, mtgraph.ir.Gate))
    assert gated.graph.levels[gate.srcs[0]] == 6 and len(backbone.signature.level(6)) == 3
    net = mtgraph.compile(gated.graph, gated.params).eval()
    report = mtgraph.cost(gated.graph, gated.params)
    assert report.total_macs == _macs_measured(net, x[:1], FlopCounterMode(display=False))
    # Perturb the private path: D's output is the 0.25 / 0.75 mixture of the public and the private value.
    with torch.no_grad():
        for key in gated.params.keys():
            if key.startswith("b") and ".D" in key:
                for p in gated.params[key].parameters():
                    p.mul_(1.5)
    values: dict[int, object] = {}
    recorder = [gated.params[gate.weights].register_forward_hook(lambda m, args, out: values.update(args=args, out=out))]
    _run(net, x)
    recorder[0].remove()
    public, private = values["args"]  # type: ignore[misc]
    assert isinstance(public, tuple) and len(public) == 3
    for mixed, a, b in zip(values["out"], public, private, strict=True):  # type: ignore[call-overload]
        # The gate computes a * w0 + b * w1 with softmax weights: exactly that expression, member by member.
        w = gated.params[gate.weights].probabilities()
        assert torch.equal(mixed, a * w[0] + b * w[1])
    hard = HardenPass()(gated.graph, gated.params)
    assert not any(isinstance(n, mtgraph.ir.Gate) for n in hard.graph.nodes)


# --------------------------------------------------------------------------- #
# Feature pyramids: heads read the tuple or one member; a neck is the last block
# --------------------------------------------------------------------------- #


class TupleHead(nn.Module):
    """A head reading every level of a pyramid: each level projected, upsampled to the finest, summed."""

    def __init__(self, channels: Sequence[int], out: int) -> None:
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(c, out, 1) for c in channels)

    def forward(self, levels: tuple[torch.Tensor, ...]) -> torch.Tensor:
        size = levels[0].shape[-2:]
        return sum(nn.functional.interpolate(p(f), size=size, mode="nearest") for p, f in zip(self.project, levels))


def test_a_pyramid_backbone_gives_its_maps_as_a_tuple_to_tuple_heads_and_member_heads(tmp_path) -> None:
    from mtgraph.exporters import export_onnx

    model, x = pyramid()
    backbone = mtgraph.trace(model, x)
    assert backbone.output_members == ("stages.0", "stages.1", "stages.2") and backbone.num_blocks == 3
    heads = {"S": TupleHead((8, 16, 32), 3), "D": backbone.member_head("stages.0", nn.Conv2d(8, 1, 1))}
    graph = from_groups(3, ("S", "D"), [[["S", "D"]], [["S", "D"]], [["S"], ["D"]]])
    store = ParamStore.create(graph, backbone, heads)
    net = mtgraph.compile(graph, store).eval()
    features = _run(model, x)
    out = _run(net, x)
    assert torch.equal(out["S"], _run(heads["S"], tuple(features)))
    assert torch.equal(out["D"], _run(heads["D"].head, features[0]))
    assert mtgraph.cost(graph, store).total_macs == _macs_measured(net, x[:1], FlopCounterMode(display=False))
    mtgraph.save(graph, store, tmp_path / "arch")
    again, loaded = mtgraph.load(tmp_path / "arch", backbone, heads)
    _assert_outputs_equal(_run(mtgraph.compile(again, loaded).eval(), x), out)
    result = export_onnx(graph, store, tmp_path / "pyramid.onnx")
    assert result.output_names == ("S", "D") and result.worst_diff < 1e-4  # float32 bound, as above
    # The head of D reads stages.0, computed by block 0 and carried to the output: a skip edge to D's head.
    assert LongEdge(origin=1, consumer=graph.heads["D"], member="stages.0") in long_edges(graph, backbone.signature, {"D": 0})


def test_member_heads_are_checked_against_the_backbone_outputs() -> None:
    model, x = pyramid()
    backbone = mtgraph.trace(model, x)
    graph = one_net(3, ("S",))
    with pytest.raises(HeadError, match=r"member 'p9' is not an output of the backbone; its outputs are \['stages.0'"):
        backbone.member_head("p9", nn.Identity())
    wrong = MemberHead(nn.Conv2d(8, 1, 1), 1, "stages.0")  # index 1 is stages.1 on this backbone
    with pytest.raises(HeadError, match=r"made for output member 'stages.0' \(index 1\), but this backbone's member 1 is 'stages.1'"):
        ParamStore.create(graph, backbone, {"S": wrong})
    with pytest.raises(HeadError, match=r"reads output member 5, but the backbone returns 3 tensors"):
        ParamStore.create(graph, backbone, {"S": MemberHead(nn.Identity(), 5)})
    with pytest.raises(HeadError, match=r"backbone outputs a tuple of 3 tensors \(stages.0 \[N, 8, 16, 16\], .*expects 8 input"):
        ParamStore.create(graph, backbone, {"S": nn.Conv2d(8, 1, 1)})  # a plain head receives the tuple
    single = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.zeros(1, 3, 8, 8))
    with pytest.raises(HeadError, match="returns one tensor"):
        single.member_head(0, nn.Identity())
    with pytest.raises(HeadError, match="reads output member 0 .* but the backbone returns one tensor"):
        ParamStore.create(one_net(1, ("S",)), single, {"S": MemberHead(nn.Identity(), 0)})


def test_a_problem_on_a_pyramid_needs_heads_that_say_what_they_read() -> None:
    from mtgraph import ConfigError, Problem
    from mtgraph import tasks as T
    from mtgraph.data import SceneDataset

    model, _ = pyramid()
    data = SceneDataset(2, size=32, seed=0)
    with pytest.raises(ConfigError, match=r"returns 3 tensors \['stages.0', 'stages.1', 'stages.2'\]; give heads="):
        Problem.create(model, [T.depth(hidden=4)], data)
    backbone = mtgraph.trace(model, data[0][0].unsqueeze(0))
    problem = Problem.create(backbone, [T.depth(hidden=4)], data,
                             heads={"depth": backbone.member_head("stages.0", T.depth(hidden=4).make_head(8, (32, 32)))})
    assert isinstance(problem.heads["depth"], MemberHead)


def test_a_neck_after_a_pyramid_is_the_last_block() -> None:
    body, x = pyramid()
    model = nn.Sequential(body, PyramidNeck()).eval()
    backbone = mtgraph.trace(model, x)
    assert [b.name for b in backbone] == ["0", "1"] and backbone.blocks[1].signature.arity_in == 3
    assert all(torch.equal(a, b) for a, b in zip(_run(backbone, x), _run(model, x), strict=True))
    assert backbone.output_members == ("1", "1#2", "1#3")


# --------------------------------------------------------------------------- #
# Forward signatures
# --------------------------------------------------------------------------- #


class WithOptions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 2.0, *, causal: bool = False) -> torch.Tensor:
        y = self.conv(x) * scale
        if mask is not None:
            y = y + mask
        return -y if causal else y


class Required(WithOptions):
    def forward(self, x: torch.Tensor, mask: torch.Tensor, scale: float = 2.0) -> torch.Tensor:  # type: ignore[override]
        return self.conv(x) + mask


def test_forward_parameters_with_defaults_are_traced_with_their_defaults() -> None:
    model = WithOptions().eval()
    x = torch.randn(2, 3, 8, 8)
    backbone = mtgraph.trace(model, x)
    assert torch.equal(_run(backbone, x), _run(model, x))
    code = backbone.blocks[0].module.code
    assert "mask" not in code and "causal" not in code and "_assert" not in code


def test_a_required_extra_forward_parameter_is_still_refused() -> None:
    with pytest.raises(TraceError, match=r"forward takes 2 inputs \['x', 'mask'\]; mtgraph needs exactly one tensor input"):
        mtgraph.trace(Required(), torch.zeros(1, 3, 8, 8))


# --------------------------------------------------------------------------- #
# The signature table of multi-tensor rows
# --------------------------------------------------------------------------- #


def test_block_signatures_refuse_inconsistent_members_and_provenance(traced_unet) -> None:
    from dataclasses import replace

    from mtgraph import IRError

    row = traced_unet[2].signature.blocks[2]  # down2: (x1, x2) -> (x1, x2, x3)
    assert row.members == ("inc", "down1.maxpool_conv", "down2.maxpool_conv") and row.carried == (0, 1, -1)
    with pytest.raises(IRError, match="members must name each of the 3 output tensors once"):
        replace(row, members=("a", "a", "b"))
    with pytest.raises(IRError, match=r"carried must give, per output tensor, an input index \(0..1\) or -1"):
        replace(row, carried=(0, 2, -1))
    with pytest.raises(IRError, match="output 1 is carried from input 0, but their signatures differ"):
        replace(row, carried=(0, 0, -1))
    assert copy.deepcopy(row) == row
