"""The frontend: tracing every test backbone into a chain of blocks that reproduces it exactly."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import pytest
import torch
from backbones import (
    ALL,
    DATA_DEPENDENT_MODULE,
    HAS_TORCHVISION,
    NAMED_CUTS,
    DataDependentGate,
    data_dependent,
    dict_output,
    resnet_basic,
    resnet_bottleneck,
    tied,
    tuple_output,
    tv_vit_b_16,
    twice_called,
    unet,
)
from torch import nn

import mtgraph
from mtgraph import CutError, TraceError
from mtgraph.analysis.macs import count_parameters
from mtgraph.frontend.backbone import members_of

NAMES = list(ALL)


def _run(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {name: m.training for name, m in model.named_modules()}
    return state, flags


def _assert_chain(backbone: mtgraph.Backbone, model: nn.Module, x: torch.Tensor) -> None:
    """The chain reproduces the model bit for bit and the block shapes chain."""
    expected = _run(model, x)
    assert torch.equal(_run(backbone, x), expected)
    assert backbone.blocks[0].in_shape == tuple(x.shape[1:])
    for before, after in zip(backbone.blocks, backbone.blocks[1:]):
        assert before.signature.outputs == after.signature.inputs, (before.name, after.name)
    assert backbone.output_shape == tuple(expected.shape[1:])
    value = x
    for block in backbone.blocks:
        value = _run(block.module, value)
        tensors = members_of(value)
        assert [tuple(t.shape[1:]) for t in tensors] == [t.shape for t in block.signature.outputs], block.name
    assert [b.index for b in backbone.blocks] == list(range(backbone.num_blocks))


def _output_of(model: nn.Module, label: str, x: torch.Tensor) -> torch.Tensor:
    """The output of the call ``label`` (a module name, ``name#k`` for its k-th call) during ``model(x)``."""
    name, _, call = label.partition("#")
    wanted = int(call) if call else 1
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(lambda _m, _i, out: seen.append(out.clone()))
    try:
        _run(model, x)
    finally:
        handle.remove()
    return seen[wanted - 1]


# --------------------------------------------------------------------------- #
# Every backbone: exact reproduction, shapes, granularities, named cuts, state
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", NAMES)
def test_blocks_chain_reproduces_backbone(name: str, traced) -> None:
    model, x, backbone = traced(name)
    assert backbone.num_blocks >= 2
    _assert_chain(backbone, model, x)


@pytest.mark.parametrize("name", NAMES)
def test_stages_chain_reproduces_backbone_and_leaves_model_state_unchanged(name: str) -> None:
    model, x = ALL[name]()
    model.train()
    next(model.children()).eval()  # a mix of train and eval flags must survive too
    state, flags = _snapshot(model)
    x_before = x.clone()
    backbone = mtgraph.trace(model, x, cuts="stages")
    after_state, after_flags = _snapshot(model)
    assert after_flags == flags
    assert after_state.keys() == state.keys()
    for key, value in state.items():  # BatchNorm statistics and num_batches_tracked included
        assert torch.equal(after_state[key], value), key
    assert torch.equal(x, x_before)
    model.eval()
    _assert_chain(backbone, model, x)


@pytest.mark.parametrize("name", [n for n in NAMES if n in NAMED_CUTS])
def test_named_cuts_end_blocks_exactly_after_those_modules(name: str) -> None:
    model, x = ALL[name]()
    names = NAMED_CUTS[name]
    model.train()
    state, flags = _snapshot(model)
    backbone = mtgraph.trace(model, x, cuts=names)
    assert _snapshot(model)[1] == flags
    assert all(torch.equal(v, state[k]) for k, v in _snapshot(model)[0].items())
    model.eval()
    _assert_chain(backbone, model, x)
    assert backbone.num_blocks == len(names) + 1
    value = x
    for block, label in zip(backbone.blocks, names):
        value = _run(block.module, value)
        assert torch.equal(value, _output_of(model, label, x)), label


def test_auto_is_blocks(traced) -> None:
    model, x, auto = traced("resnet_basic")
    blocks = mtgraph.trace(model, x, cuts="blocks")
    assert [b.name for b in blocks.blocks] == [b.name for b in auto.blocks]


@pytest.mark.parametrize("name", NAMES)
def test_parameters_are_counted_once(name: str, traced) -> None:
    model, _, backbone = traced(name)
    assert backbone.params == count_parameters([model]) == sum(p.numel() for p in model.parameters())
    # Blocks use the model's own tensors: tracing copies nothing.
    model_ids = {id(p) for p in model.parameters()}
    assert {id(p) for b in backbone.blocks for p in b.module.parameters()} == model_ids


def test_resnet_blocks_and_shortcuts(traced) -> None:
    model, x, backbone = traced("resnet_basic")
    assert [b.name for b in backbone.blocks] == ["conv1..relu", "layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    assert [b.shortcut.kind for b in backbone.blocks] == ["none", "identity", "identity", "projection", "identity"]
    assert "does not end in a residual sum" in backbone.blocks[0].shortcut.reason
    assert backbone.blocks[3].shortcut.has_weights and not backbone.blocks[1].shortcut.has_weights
    # The projection shortcut is exactly the block's downsample branch, on a copy of the block.
    block = backbone.blocks[3]
    copy_ = copy.deepcopy(block.module)
    shortcut = block.shortcut_of(copy_)
    identity = backbone.blocks[1]
    assert shortcut is not None and identity.shortcut_of(copy.deepcopy(identity.module)) is None
    h = _run(backbone.blocks[0].module, x)
    h = _run(backbone.blocks[2].module, _run(backbone.blocks[1].module, h))
    assert torch.equal(_run(shortcut, h), _run(model.layer2[0].downsample, h))
    assert {id(p) for p in shortcut.parameters()} <= {id(p) for p in copy_.parameters()}


def test_bottleneck_projection_without_stride(traced) -> None:
    _, _, backbone = traced("resnet_bottleneck")
    first = backbone.blocks[1]
    assert first.name == "layer1.0" and first.in_shape == (8, 16, 16) and first.out_shape == (16, 16, 16)
    assert first.shortcut.kind == "projection"
    assert backbone.blocks[3].shortcut.kind == "projection" and backbone.blocks[3].out_shape == (32, 8, 8)


def test_describe_lists_every_block(traced) -> None:
    _, _, backbone = traced("mobilenet_v2")
    text = backbone.describe()
    assert all(b.name in text for b in backbone.blocks)
    assert f"{backbone.num_blocks} blocks" in text and f"{backbone.params} parameters" in text


def test_example_input_has_traced_shape(traced) -> None:
    _, x, backbone = traced("convnext")
    example = backbone.example_input(3)
    assert example.shape == (3, *x.shape[1:]) and example.dtype == x.dtype
    assert torch.equal(example, backbone.example_input(3))


# --------------------------------------------------------------------------- #
# U-Net: cuts only where one value is live
# --------------------------------------------------------------------------- #


def test_unet_cuts_between_its_stages_carrying_the_skip_features(traced) -> None:
    model, x, backbone = traced("unet")
    # enc1's output is live until the last concatenation: the cuts inside the encoder-decoder carry it (and enc2's).
    assert [b.name for b in backbone.blocks] == [
        "stem", "enc1", "down1", "enc2", "down2", "mid", "up2..cat", "dec2", "up1..cat", "dec1", "out",
    ]
    rows = {b.name: b.signature for b in backbone.blocks}
    assert rows["mid"].members == ("enc1", "enc2", "mid") and rows["mid"].carried == (0, 1, -1)
    assert rows["up2..cat"].members == ("enc1", "up2..cat") and rows["up2..cat"].consumed == (1, 2)  # reads enc2
    assert rows["up1..cat"].arity_out == 1 and rows["up1..cat"].consumed == (0, 1)
    assert rows["mid"].skippable and not rows["enc2"].skippable  # only a value keeping its shapes is skipped
    # Single-tensor cuts only (max_live=1): today's coarse blocks, as before multi-tensor cuts existed.
    single = mtgraph.trace(model, x, max_live=1)
    assert [b.name for b in single.blocks] == ["stem", "enc1", "down1..cat", "dec1", "out"]
    with pytest.raises(CutError, match=r"cannot cut after \['enc2'\]: .*exactly one live tensor.*Valid cut names: .*stem"):
        mtgraph.trace(model, x, cuts=["enc2"], max_live=1)
    named = mtgraph.trace(model, x, cuts=["enc2"])
    assert [b.signature.members for b in named.blocks] == [("stem..enc2", "stem..enc2#2"), ("down2..out",)]
    _assert_chain(named, model, x)
    with pytest.raises(CutError, match=r"at most max_live=2 live tensors"):
        mtgraph.trace(model, x, cuts=["mid"], max_live=2)  # mid's end leaves enc1, enc2 and mid live


@pytest.mark.parametrize("max_live", [0, -1, 1.5, True, "4"])
def test_max_live_must_be_a_positive_int(max_live: object) -> None:
    model, x = resnet_basic()
    with pytest.raises(TraceError, match="max_live must be an int >= 1"):
        mtgraph.trace(model, x, max_live=max_live)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_backbones_with_single_tensor_boundaries_trace_the_same_whatever_max_live(name: str, traced) -> None:
    model, x, backbone = traced(name)
    single = mtgraph.trace(model, x, max_live=1)
    if name == "unet":  # the only test backbone whose stages keep several tensors alive
        assert single.num_blocks < backbone.num_blocks
        return
    assert [b.signature for b in single.blocks] == [b.signature for b in backbone.blocks]


# --------------------------------------------------------------------------- #
# A submodule called twice, a submodule registered twice, a tied parameter
# --------------------------------------------------------------------------- #


def test_submodule_called_twice_gives_two_blocks_sharing_parameters() -> None:
    model, x = twice_called()
    backbone = mtgraph.trace(model, x)
    assert [b.name for b in backbone.blocks] == ["stem", "block", "block#2", "out"]
    first, second = backbone.blocks[1], backbone.blocks[2]
    assert [id(p) for p in first.module.parameters()] == [id(p) for p in second.module.parameters()]
    assert backbone.params == count_parameters([model])
    _assert_chain(backbone, model, x)


def test_module_registered_twice_is_cut_at_both_calls() -> None:
    model, x = tied()
    backbone = mtgraph.trace(model, x)
    # layers.1 and layers.3 are the same module as `shared`: both calls are blocks.
    assert [b.name for b in backbone.blocks] == ["stem", "layers.0", "shared", "layers.2", "shared#2", "proj_a..proj_b"]
    assert backbone.params == count_parameters([model]) == 2080
    _assert_chain(backbone, model, x)


# --------------------------------------------------------------------------- #
# Blocks that write into their input
# --------------------------------------------------------------------------- #


class _PreActDown(nn.Module):
    """Downsampling block that applies an in-place ReLU to its input after reading the shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(4, 8, 1, 2)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(4, 8, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.down(x)
        return self.conv(self.act(x)) + shortcut


def test_block_writing_into_its_input_works_on_a_copy_and_keeps_its_projection() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _PreActDown(), nn.Hardswish(inplace=True)).eval()
    x = torch.randn(2, 3, 16, 16)
    x_before = x.clone()
    backbone = mtgraph.trace(model, x)
    assert torch.equal(x, x_before)
    _assert_chain(backbone, model, x)
    h = _run(backbone.blocks[0].module, x)
    h_before = h.clone()
    _run(backbone.blocks[1].module, h)
    _run(backbone.blocks[2].module, h)
    assert torch.equal(h, h_before)  # neither block changed the value it was given
    assert backbone.blocks[1].shortcut.kind == "projection"
    shortcut = backbone.blocks[1].shortcut_of(copy.deepcopy(backbone.blocks[1].module))
    assert torch.equal(_run(shortcut, h), _run(model[1].down, h))
    assert torch.equal(h, h_before)


class _AliasedInPlace(nn.Module):
    """Updates a tensor in place while another name still refers to it (eager semantics: both see the update)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.out = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        alias = y
        y += x
        y *= 2
        y -= 1
        y /= 3
        return self.out(alias)


def test_in_place_arithmetic_is_traced_in_place() -> None:
    torch.manual_seed(0)
    model = _AliasedInPlace().eval()
    x = torch.randn(2, 3, 8, 8)
    backbone = mtgraph.trace(model, x)
    _assert_chain(backbone, model, x)  # fx alone would trace `y += x` as `y = y + x` and lose the alias


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed")
def test_traced_blocks_keep_the_original_memory_layout(traced) -> None:
    # torchvision's CNBlock ends in `result += input` on a permuted (channels-last) tensor: the in-place add
    # keeps that layout, also where the map is 1x1 and strides are ambiguous, and the layout decides the next
    # convolution's kernel (an out-of-place add made the last stage's depthwise convolutions 2x slower).
    model, x, backbone = traced("tv_convnext_tiny")
    layouts: list[tuple[int, ...]] = []
    handles = [m.register_forward_pre_hook(lambda _m, args: layouts.append(args[0].stride()))
               for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        _run(model, x)
        eager = list(layouts)
        layouts.clear()
        _run(backbone, x)
    finally:
        for h in handles:
            h.remove()
    assert layouts == eager


def test_tracing_does_not_change_the_example_input() -> None:
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(3, 4, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    before = x.clone()
    mtgraph.trace(model, x)
    assert torch.equal(x, before)


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #


def test_data_dependent_control_flow_names_the_module_and_suggests_leaf_modules() -> None:
    model, x = data_dependent()
    with pytest.raises(TraceError) as info:
        mtgraph.trace(model, x)
    message = str(info.value)
    assert f"module '{DATA_DEPENDENT_MODULE}' (DataDependentGate)" in message
    assert f"leaf_modules=['{DATA_DEPENDENT_MODULE}']" in message


@pytest.mark.parametrize("leaf", [DATA_DEPENDENT_MODULE, DataDependentGate])
def test_leaf_modules_make_data_dependent_backbone_traceable(leaf: str | type) -> None:
    model, x = data_dependent()
    backbone = mtgraph.trace(model, x, leaf_modules=[leaf])
    _assert_chain(backbone, model, x)
    negated = -x  # the other branch of the data-dependent module
    assert torch.equal(_run(backbone, negated), _run(model, negated))
    assert backbone.blocks[-1].macs == 16 * 16 * (8 * 8 * 9 + 8 * 8)  # body.conv + the leaf's 1x1 conv


def test_unknown_leaf_module_name_is_rejected() -> None:
    model, x = data_dependent()
    with pytest.raises(TraceError, match=r"\['body\.nope'\] are not submodules.*body\.gate"):
        mtgraph.trace(model, x, leaf_modules=["body.nope"])


@pytest.mark.parametrize("factory, names", [(tuple_output, ("conv..mean", "conv..mean#2")), (dict_output, ("map", "pooled"))])
def test_backbone_returning_several_tensors_gives_them_as_a_tuple(factory: Callable, names: tuple[str, ...]) -> None:
    model, x = factory()
    backbone = mtgraph.trace(model, x)
    assert backbone.output_members == names and backbone.output_arity == 2
    expected = _run(model, x)
    expected = tuple(expected.values()) if isinstance(expected, dict) else tuple(expected)
    got = _run(backbone, x)
    assert isinstance(got, tuple) and all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert backbone.output_shape == (4,)  # the primary (last) member: the pooled vector


class _Returns(nn.Module):
    def __init__(self, make: Callable[[torch.Tensor], object]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.make = make

    def forward(self, x: torch.Tensor) -> object:
        return self.make(self.conv(x))


@pytest.mark.parametrize("make, kind", [
    (lambda y: (y, 3), "tuple"),
    (lambda y: {"a": y, "b": [y]}, "dict"),
    (lambda y: (), "tuple"),
    (lambda y: {1: y}, "dict"),
    (lambda y: y.split(2, dim=1), "tuple"),
])
def test_backbone_returning_anything_but_tensors_is_rejected(make: Callable, kind: str) -> None:
    with pytest.raises(TraceError, match=rf"returns (a|an empty) {kind}|dict with keys \[1\]"):
        mtgraph.trace(_Returns(make), torch.zeros(2, 3, 8, 8))


def test_unknown_cut_name_lists_valid_ones() -> None:
    model, x = resnet_basic()
    with pytest.raises(CutError) as info:
        mtgraph.trace(model, x, cuts=["layer1", "layer9"])
    message = str(info.value)
    assert "['layer9']" in message
    valid = message.split("Valid cut names: ")[1].split(", ")
    assert {"layer1", "layer1.0", "layer1.1", "layer2.0"} <= set(valid)
    assert "layer1.0.conv1" in valid  # inside a residual block two values are live: a cut may carry both
    with pytest.raises(CutError) as info:
        mtgraph.trace(model, x, cuts=["layer9"], max_live=1)
    assert "layer1.0.conv1" not in str(info.value).split("Valid cut names: ")[1].split(", ")


def test_unknown_granularity_is_rejected() -> None:
    model, x = resnet_bottleneck()
    with pytest.raises(CutError, match=r"'layers' is not a granularity.*\['auto', 'blocks', 'stages'\]"):
        mtgraph.trace(model, x, cuts="layers")


def test_non_tensor_and_batchless_inputs_are_rejected() -> None:
    model, x = unet()
    with pytest.raises(TraceError, match="backbone must be a torch.nn.Module, got function"):
        mtgraph.trace(lambda t: t, x)  # type: ignore[arg-type]
    with pytest.raises(TraceError, match="must be a torch.Tensor"):
        mtgraph.trace(model, x.tolist())  # type: ignore[arg-type]
    with pytest.raises(TraceError, match="batch dimension"):
        mtgraph.trace(model, torch.zeros(5))
    with pytest.raises(TraceError, match=r"input of shape \[2, 5, 32, 32\] failed"):
        mtgraph.trace(model, torch.zeros(2, 5, 32, 32))


# --------------------------------------------------------------------------- #
# The real vit_b_16
# --------------------------------------------------------------------------- #


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed")
def test_real_vit_b_16_traces_exactly() -> None:
    model, x = tv_vit_b_16()
    start = time.perf_counter()
    backbone = mtgraph.trace(model, x)
    elapsed = time.perf_counter() - start
    assert backbone.num_blocks == 14  # embedding, 12 encoder layers, norm + head
    assert torch.equal(_run(backbone, x), _run(model, x))
    assert elapsed < 30, f"tracing vit_b_16 took {elapsed:.1f} s"


# --------------------------------------------------------------------------- #
# The block signature table
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", NAMES)
def test_the_signature_table_describes_every_block(name: str, traced) -> None:
    from mtgraph.analysis.macs import count_macs

    _, x, backbone = traced(name)
    table = backbone.signature
    assert table is backbone.signature and hash(table) == hash(copy.deepcopy(table))  # a frozen, hashable value
    assert table.num_blocks == backbone.num_blocks and table.source == backbone.source
    assert table.level(0) == (mtgraph.ir.TensorSignature(tuple(x.shape[1:]), "float32"),)
    for block, row in zip(backbone.blocks, table):
        assert row is block.signature and (row.index, row.name) == (block.index, block.name)
        assert (row.in_shape, row.out_shape, row.macs, row.params) == (block.in_shape, block.out_shape, block.macs, block.params)
        assert table.level(row.index + 1) == row.outputs and len(row.members) == len(row.carried) == len(row.outputs)
        assert all(row.inputs[c] == row.outputs[k] for k, c in enumerate(row.carried) if c >= 0)
        assert (len(row.inputs) == len(row.outputs) == 1) or name == "unet"
        assert row.state == tuple((n, tuple(t.shape)) for n, t in block.module.state_dict().items())
        shortcut = row.shortcut
        if shortcut.kind != "projection":
            assert (shortcut.macs, shortcut.params, shortcut.parameters) == (0, 0, ())
            continue
        branch = block.shortcut_of(copy.deepcopy(block.module))
        probe = torch.zeros(1, *row.in_shape)
        assert shortcut.macs == count_macs(branch.eval(), probe) > 0
        assert shortcut.params == count_parameters([branch]) > 0
        named = dict(block.module.named_parameters(remove_duplicate=False))
        assert sum(named[n].numel() for n in set(shortcut.parameters)) == shortcut.params


def test_the_signature_table_refuses_a_chain_that_does_not_fit(traced) -> None:
    from dataclasses import replace

    from mtgraph import IRError
    from mtgraph.ir import BackboneSignature, TensorSignature

    _, _, backbone = traced("resnet_basic")
    table = backbone.signature
    wrong = replace(table.blocks[2], inputs=(TensorSignature((3, 3, 3)),))
    with pytest.raises(IRError, match=r"block 2 \(layer1.1\) consumes \[3, 3, 3\] float32 but level 2 holds \[8, 16, 16\]"):
        BackboneSignature(table.blocks[:2] + (wrong,) + table.blocks[3:], table.input)
    with pytest.raises(IRError, match=r"blocks\[0\] has index 1"):
        BackboneSignature(table.blocks[1:], table.blocks[0].outputs)
    with pytest.raises(IRError, match="level 6 is outside the backbone, which has levels 0..5"):
        table.level(6)
