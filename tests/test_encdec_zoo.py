"""Real dense-prediction and transformer backbones traced as they are (weights not downloaded, 64 px inputs).

torchvision's FCN / DeepLabV3 ResNet-50 backbones (an ``IntermediateLayerGetter``
returning a dict), timm's ViT-Tiny and DeiT-Tiny (whose forward takes
``attn_mask=None, is_causal=False``) and HRNet-W18-small (parallel branches:
boundaries carrying up to four tensors), plus feature pyramids: timm's
``features_only`` and torchvision's ``FeaturePyramidNetwork`` neck. Each is
checked like the test backbones: the block chain reproduces the model bit for
bit, a compiled multi-task network equals the model plus heads, and cost
equals the MAC counter (FlopCounterMode / 2, plus the CPU attention kernel
FlopCounterMode has no formula for) of the compiled module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from backbones import make_heads
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import mtgraph
from mtgraph import ParamStore
from mtgraph.analysis.macs import mac_counter
from mtgraph.frontend import members_of
from mtgraph.ir import from_groups, one_net

TASKS = ("S", "D")
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _run(module: Callable[..., object], *args: object) -> object:
    with torch.no_grad():
        return module(*args)


def _outputs(value: object) -> tuple[torch.Tensor, ...]:
    if isinstance(value, dict):
        return tuple(value.values())
    return members_of(value)  # a tensor, or a tuple/list of them


def _macs(net: nn.Module, x: torch.Tensor, counter: FlopCounterMode) -> int:
    with torch.no_grad(), counter:
        net(x)
    return counter.get_total_flops() // 2


def _check(model: nn.Module, *, blocks: int, members: Sequence[str], attention: bool = False) -> mtgraph.Backbone:
    """Trace ``model`` on X: exact chain, One-Net and a split tree equal to model + heads, cost == the counter."""
    model = model.eval()
    backbone = mtgraph.trace(model, X)
    assert backbone.num_blocks == blocks and backbone.output_members == tuple(members)
    expected = _outputs(_run(model, X))
    got = _outputs(_run(backbone, X))
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
    heads = make_heads(backbone.output_shape, TASKS)
    if backbone.output_arity > 1:
        heads = {t: backbone.member_head(backbone.output_arity - 1, h) for t, h in heads.items()}
    half = backbone.num_blocks // 2
    for graph in (one_net(blocks, TASKS), from_groups(blocks, TASKS, [[list(TASKS)]] * half + [[["S"], ["D"]]] * (blocks - half))):
        store = ParamStore.create(graph, backbone, heads)
        net = mtgraph.compile(graph, store).eval()
        out = _run(net, X)
        for task in TASKS:  # every copy of a block starts with the backbone's weights: each path is the model
            assert torch.equal(out[task], _run(store[f"head.{task}"], expected[0] if len(expected) == 1 else tuple(expected)))
        report = mtgraph.cost(graph, store)
        assert report.total_macs == _macs(net, X[:1], mac_counter())
        if not attention:
            assert report.total_macs == _macs(net, X[:1], FlopCounterMode(display=False))
    return backbone


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_resnet50"])
def test_torchvision_segmentation_backbones_trace_as_they_are(name: str) -> None:
    segmentation = pytest.importorskip("torchvision.models.segmentation")
    model = getattr(segmentation, name)(weights=None, weights_backbone=None)
    # The backbone returns {"out": layer4}: one tensor named by its key; ResNet-50's 20 blocks (stem parts, bottlenecks).
    _check(model.backbone, blocks=20, members=("out",))


@pytest.mark.slow
def test_deeplabv3_with_its_auxiliary_output_returns_two_maps() -> None:
    segmentation = pytest.importorskip("torchvision.models.segmentation")
    body = segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True).backbone
    backbone = _check(body, blocks=20, members=("aux", "out"))
    # layer3's output ("aux") is carried across layer4's three blocks.
    assert [len(b.signature.outputs) for b in backbone][-4:] == [1, 2, 2, 2]


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_timm_vits_with_optional_forward_arguments_trace_as_they_are(name: str) -> None:
    timm = pytest.importorskip("timm")
    # forward(x, attn_mask=None, is_causal=False): the defaults are traced; 64 px (img_size) keeps the test small.
    model = timm.create_model(name, pretrained=False, img_size=64)
    backbone = _check(model, blocks=14, members=("norm..head",), attention=True)
    assert [b.name for b in backbone][1:13] == [f"blocks.{k}" for k in range(12)]


@pytest.mark.slow
def test_timm_hrnet_traces_into_blocks_carrying_its_parallel_branches() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("hrnet_w18_small", pretrained=False)
    backbone = _check(model, blocks=19, members=("head_drop..classifier",))
    # 3 blocks with single-tensor cuts only; the stages in between carry 2 to 4 branches.
    assert max(len(b.signature.outputs) for b in backbone) == 4
    assert mtgraph.trace(model, X, max_live=1).num_blocks == 3


def test_timm_features_only_gives_the_pyramid_to_the_heads() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, features_only=True)
    _check(model, blocks=11, members=("act1", "layer1.1", "layer2.1", "layer3.1", "layer4"))


def test_torchvision_feature_pyramid_network_is_the_last_block() -> None:
    pytest.importorskip("torchvision")
    from torchvision.models import resnet18
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    body = IntermediateLayerGetter(resnet18(), {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"})
    model = nn.Sequential(body, FeaturePyramidNetwork([64, 128, 256, 512], 16, extra_blocks=LastLevelMaxPool()))
    backbone = _check(model, blocks=10, members=("0", "1", "2", "3", "pool"))
    assert backbone.blocks[-1].name == "1" and backbone.blocks[-1].signature.arity_in == 4  # the neck reads C2..C5
