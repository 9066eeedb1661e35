"""Small test backbones, written out in full (nothing is downloaded), shared by every test file.

Import it as ``from backbones import ...`` (``tests/conftest.py`` puts this
folder on ``sys.path``). The API is stable; other teammates' tests use it.

Every factory takes no argument and returns ``(model, example_input)``:

* the model is deterministic (built under a fixed seed, without touching the
  global random state), in **eval mode**, with non-trivial BatchNorm running
  statistics (so that eval-mode BatchNorm is not the identity);
* the example input is a batch of **2** images (or the stated shape), small:
  32 px, few channels, so that a trace takes well under a second.

=========================  ==============  =========================================================
factory                    input           what it exercises
=========================  ==============  =========================================================
``resnet_basic``           [2, 3, 32, 32]  BasicBlocks, identity and strided 1x1-projection shortcuts
``resnet_bottleneck``      [2, 3, 32, 32]  Bottlenecks, projection with and without stride
``mobilenet_v2``           [2, 3, 32, 32]  inverted residuals, depthwise convolutions, ReLU6
``vit_matmul``             [2, 3, 32, 32]  patch embedding, class token, hand-written matmul/softmax attention
``vit_mha``                [2, 3, 32, 32]  the same with ``nn.MultiheadAttention``
``convnext``               [2, 3, 32, 32]  channels-last LayerNorm, permutes, layer scale, depthwise 7x7
``unet``                   [2, 3, 32, 32]  encoder-decoder with skip connections (cuts carry the skip features)
``twice_called``           [2, 3, 32, 32]  one submodule called twice in forward
``tied``                   [2, 3, 32, 32]  one submodule registered twice plus a tied parameter
=========================  ==============  =========================================================

``HAND_WRITTEN`` maps these names to their factories; ``TORCHVISION`` maps
``tv_resnet18``, ``tv_mobilenet_v3_small``, ``tv_vit`` (a small
VisionTransformer, 32 px) and ``tv_convnext_tiny`` to factories when
torchvision is installed (empty otherwise); ``ALL`` is both. ``NAMED_CUTS``
gives, per name, module names that are valid ``cuts=[...]`` for it.
``tv_vit_b_16`` (224 px, slow) is separate.

Models for the error paths: ``data_dependent`` (its submodule
``DATA_DEPENDENT_MODULE`` branches on tensor values), ``tuple_output``,
``dict_output``. ``skip_chain(n)`` is ``chain(n)`` keeping three block
outputs alive to its end (every boundary carries up to four tensors), for
benchmarks. Encoder-decoders and pyramids (not in ``ALL``): ``unet4``
(4 down and 4 up stages, concatenated skips, the common PyTorch U-Net
layout) and ``pyramid`` (three stages returning their three feature maps as
a list, like timm's ``features_only``), with ``PyramidNeck`` (a small
top-down neck taking that list). ``chain(n)`` is a synthetic chain of ``n`` residual blocks
for benchmarks; ``tiny_resnet()`` (and ``TinyResNet``, a stem and a list of
BasicBlocks) is the passes' four-block test backbone.
``make_heads(out_shape, tasks)`` builds small heads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "Factory",
    "IMAGE",
    "BATCH",
    "resnet_basic",
    "resnet_bottleneck",
    "TinyResNet",
    "tiny_resnet",
    "mobilenet_v2",
    "vit_matmul",
    "vit_mha",
    "convnext",
    "unet",
    "unet4",
    "pyramid",
    "PyramidNeck",
    "twice_called",
    "tied",
    "data_dependent",
    "DATA_DEPENDENT_MODULE",
    "tuple_output",
    "dict_output",
    "chain",
    "skip_chain",
    "make_heads",
    "randomize_batchnorm",
    "HAS_TORCHVISION",
    "HAND_WRITTEN",
    "TORCHVISION",
    "ALL",
    "NAMED_CUTS",
    "tv_vit_b_16",
]

#: Image side of every small backbone's example input.
IMAGE = 32
#: Batch size of every example input (not 1, so that batch-size bugs show).
BATCH = 2

Factory = Callable[[], tuple[nn.Module, torch.Tensor]]


def _seeded(seed: int, build: Callable[[], nn.Module], input_shape: Sequence[int]) -> tuple[nn.Module, torch.Tensor]:
    """Build a model and an input under ``seed`` without disturbing the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
        randomize_batchnorm(model, seed)
        x = torch.randn(*input_shape)
    return model.eval(), x


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm layer random running statistics and affine parameters (deterministically)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                if module.affine:
                    module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                    module.bias.copy_(0.1 * torch.randn(n, generator=generator))


def _image() -> tuple[int, int, int, int]:
    return (BATCH, 3, IMAGE, IMAGE)


# --------------------------------------------------------------------------- #
# ResNet-like
# --------------------------------------------------------------------------- #


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (identity, or a strided 1x1 projection)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), plus a shortcut; the torchvision layout."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A stem (top-level conv1/bn1/relu), then ``layer1``, ``layer2`` Sequentials; returns the feature map."""

    def __init__(self, layer1: list[nn.Module], layer2: list[nn.Module], stem: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(*layer1)
        self.layer2 = nn.Sequential(*layer2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer2(self.layer1(x))


def resnet_basic() -> tuple[nn.Module, torch.Tensor]:
    """ResNet with BasicBlocks: output [16, 8, 8]; ``layer2.0`` downsamples with a strided projection."""
    return _seeded(
        1,
        lambda: ResNet([BasicBlock(8, 8), BasicBlock(8, 8)], [BasicBlock(8, 16, 2), BasicBlock(16, 16)]),
        _image(),
    )


def resnet_bottleneck() -> tuple[nn.Module, torch.Tensor]:
    """ResNet with Bottlenecks: output [32, 8, 8]; ``layer1.0`` projects 8->16 channels, ``layer2.0`` also strides."""
    return _seeded(
        2,
        lambda: ResNet([Bottleneck(8, 4), Bottleneck(16, 4)], [Bottleneck(16, 8, 2), Bottleneck(32, 8)]),
        _image(),
    )


class TinyResNet(nn.Module):
    """A stem (conv + ReLU) then ``layers``: BasicBlocks of the given (width, stride) in order."""

    def __init__(self, blocks: Sequence[tuple[int, int]], stem: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1), nn.ReLU())
        layers, cin = [], stem
        for cout, stride in blocks:
            layers.append(BasicBlock(cin, cout, stride))
            cin = cout
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


def tiny_resnet(width: int = 8) -> tuple[nn.Module, torch.Tensor]:
    """The passes' test backbone: stem, then BasicBlocks of widths w, 2w (strided projection), 2w; output [2w, 16, 16].

    Traced (``cuts="auto"``) into four blocks: ``stem`` (not skippable),
    ``layers.0`` (identity shortcut), ``layers.1`` (projection) and
    ``layers.2`` (identity). Not in :data:`ALL`: the pass tests use it directly.
    """
    return _seeded(14, lambda: TinyResNet([(width, 1), (2 * width, 2), (2 * width, 1)], stem=width), _image())


# --------------------------------------------------------------------------- #
# MobileNetV2-like
# --------------------------------------------------------------------------- #


class ConvBNAct(nn.Sequential):
    """Convolution, BatchNorm, ReLU6 (a Sequential subclass, like torchvision's Conv2dNormActivation)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise 3x3, project (1x1, linear); residual when stride 1 and widths match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(cin, hidden, 1))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:  # a Python bool fixed at construction: fine for torch.fx
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """``features`` Sequential of a stem and inverted residuals, then a 1x1 conv; output [32, 4, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNAct(3, 8, 3, 2),
            InvertedResidual(8, 8, 1, 1),
            InvertedResidual(8, 12, 2, 4),
            InvertedResidual(12, 12, 1, 4),
            InvertedResidual(12, 16, 2, 4),
            InvertedResidual(16, 16, 1, 4),
            ConvBNAct(16, 32, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def mobilenet_v2() -> tuple[nn.Module, torch.Tensor]:
    """MobileNetV2-like: 7 ``features`` blocks, output [32, 4, 4]."""
    return _seeded(3, MobileNetV2, _image())


# --------------------------------------------------------------------------- #
# ViT-like
# --------------------------------------------------------------------------- #


class MatmulAttention(nn.Module):
    """Multi-head self-attention written with matmul and softmax."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(d // self.heads))
        attn = attn.softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out)


class MHAttention(nn.Module):
    """Self-attention through ``nn.MultiheadAttention`` (a leaf module for torch.fx)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp: int, attention: type[nn.Module]) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Patch embedding (8x8 conv), class token, position embedding, encoder blocks; returns the class token [32]."""

    def __init__(self, attention: type[nn.Module], dim: int = 32, depth: int = 3, heads: int = 2, patch: int = 8) -> None:
        super().__init__()
        tokens = (IMAGE // patch) ** 2 + 1
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, tokens, dim))
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, 2 * dim, attention) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.blocks(x)
        return self.norm(x)[:, 0]


def vit_matmul() -> tuple[nn.Module, torch.Tensor]:
    """ViT-like with hand-written attention (matmul + softmax); output [32]."""
    return _seeded(4, lambda: ViT(MatmulAttention), _image())


def vit_mha() -> tuple[nn.Module, torch.Tensor]:
    """ViT-like with ``nn.MultiheadAttention``; output [32]."""
    return _seeded(5, lambda: ViT(MHAttention), _image())


# --------------------------------------------------------------------------- #
# ConvNeXt-like
# --------------------------------------------------------------------------- #


class ChannelsLastNorm(nn.Module):
    """LayerNorm over channels of an NCHW map, by permuting to NHWC and back."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """Depthwise 7x7, channels-last LayerNorm + MLP, layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(0.5 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x)
        y = torch.permute(y, (0, 2, 3, 1))
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = self.gamma * y
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """Stem (4x4 patchify + norm), stage, downsample (norm + 2x2 conv), stage; output [32, 4, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), ChannelsLastNorm(16))
        self.stages = nn.Sequential(
            nn.Sequential(CNBlock(16), CNBlock(16)),
            nn.Sequential(ChannelsLastNorm(16), nn.Conv2d(16, 32, 2, 2)),
            nn.Sequential(CNBlock(32), CNBlock(32)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def convnext() -> tuple[nn.Module, torch.Tensor]:
    """ConvNeXt-like with channels-last LayerNorms and permutes; output [32, 4, 4]."""
    return _seeded(6, ConvNeXt, _image())


# --------------------------------------------------------------------------- #
# U-Net-like
# --------------------------------------------------------------------------- #


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Two-level encoder-decoder with concatenated skips.

    ``enc1``'s output stays live until the last concatenation, so ``enc2``,
    ``mid``, ``up2``, ``dec2`` and ``up1`` never end a block: only ``stem``,
    ``enc1``, the ``cat`` before ``dec1``, and ``dec1`` are single-value cuts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.enc1 = _double_conv(8, 8)
        self.down1 = nn.MaxPool2d(2)
        self.enc2 = _double_conv(8, 16)
        self.down2 = nn.MaxPool2d(2)
        self.mid = _double_conv(16, 16)
        self.up2 = nn.ConvTranspose2d(16, 16, 2, 2)
        self.dec2 = _double_conv(32, 16)
        self.up1 = nn.ConvTranspose2d(16, 8, 2, 2)
        self.dec1 = _double_conv(16, 8)
        self.out = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        e1 = self.enc1(x)
        e2 = self.enc2(self.down1(e1))
        m = self.mid(self.down2(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.out(d1)


def unet() -> tuple[nn.Module, torch.Tensor]:
    """U-Net-like: 11 blocks under ``cuts="blocks"`` (5 with ``max_live=1``); output [8, 16, 16]."""
    return _seeded(7, UNet, _image())


class _Down(nn.Module):
    """Max-pool then two 3x3 convolutions (``maxpool_conv``, as in the common PyTorch U-Net)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), _double_conv(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class _Up(nn.Module):
    """Transposed-convolution upsampling, concatenation with the encoder's skip feature, two 3x3 convolutions."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, 2)
        self.conv = _double_conv(cin, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet4(nn.Module):
    """Four down and four up stages with concatenated skips: ``inc``, ``down1..4``, ``up1..4``, ``outc``.

    After ``down4`` five tensors are live (x1..x5), so with the default
    ``max_live=4`` ``down4`` and ``up1`` form one block: 9 blocks.
    """

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        w = [width * 2**k for k in range(5)]
        self.inc = _double_conv(3, w[0])
        self.down1, self.down2, self.down3, self.down4 = (_Down(w[k], w[k + 1]) for k in range(4))
        self.up1, self.up2, self.up3, self.up4 = (_Up(w[k], w[k - 1]) for k in range(4, 0, -1))
        self.outc = nn.Sequential(nn.Conv2d(w[0], w[0], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


def unet4() -> tuple[nn.Module, torch.Tensor]:
    """U-Net with 4 down and 4 up stages (widths 4..64): 9 blocks; output [4, 32, 32]."""
    return _seeded(17, UNet4, _image())


class Pyramid(nn.Module):
    """Three strided stages returning their feature maps [8, 16, 16], [16, 8, 8], [32, 4, 4] as a list."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
            for cin, cout in ((3, 8), (8, 16), (16, 32))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class PyramidNeck(nn.Module):
    """A small top-down neck for :class:`Pyramid`: lateral 1x1 convolutions, nearest upsampling, sums; returns a list."""

    def __init__(self, channels: Sequence[int] = (8, 16, 32), width: int = 8) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        top = self.lateral[-1](features[-1])
        out = [top]
        for k in range(len(features) - 2, -1, -1):
            top = self.lateral[k](features[k]) + nn.functional.interpolate(top, scale_factor=2.0, mode="nearest")
            out.insert(0, top)
        return out


def pyramid() -> tuple[nn.Module, torch.Tensor]:
    """Three stages returning three feature maps (a list, like timm's ``features_only``)."""
    return _seeded(19, Pyramid, _image())


# --------------------------------------------------------------------------- #
# Reused and tied modules
# --------------------------------------------------------------------------- #


class ResidualConv(nn.Module):
    """conv-BN-ReLU with an identity shortcut (shape preserving)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


class SkipChain(nn.Module):
    """Residual blocks in a ModuleList; the outputs of ``skips`` evenly spaced blocks are added at the end.

    Every boundary after the first saved output carries it (and the later
    ones) next to the current map: up to ``skips + 1`` tensors.
    """

    def __init__(self, num_blocks: int, channels: int, skips: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResidualConv(channels) for _ in range(num_blocks))
        self.every = max(1, num_blocks // (skips + 1))
        self.skips = skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved = []
        for k, block in enumerate(self.blocks):
            x = block(x)
            if k % self.every == 0 and len(saved) < self.skips:
                saved.append(x)
        for feature in saved:
            x = x + feature
        return x


class TwiceCalled(nn.Module):
    """``block`` is called twice in forward: two blocks of the chain, one set of parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.block = ResidualConv(8)
        self.out = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(self.block(self.stem(x))))


def twice_called() -> tuple[nn.Module, torch.Tensor]:
    """A submodule called twice: under ``cuts="blocks"`` the chain is stem | block | block#2 | out; output [16, 8, 8]."""
    return _seeded(8, TwiceCalled, _image())


class Tied(nn.Module):
    """``shared`` appears twice in ``layers``; ``head_b``'s weight is ``head_a``'s (a tied parameter)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.shared = ResidualConv(8)
        self.layers = nn.Sequential(ResidualConv(8), self.shared, ResidualConv(8), self.shared)
        self.proj_a = nn.Conv2d(8, 8, 1)
        self.proj_b = nn.Conv2d(8, 8, 1)
        self.proj_b.weight = self.proj_a.weight  # tied: one tensor, two modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.proj_b(torch.relu(self.proj_a(x)))


def tied() -> tuple[nn.Module, torch.Tensor]:
    """A shared submodule (registered twice) and a tied weight; output [8, 16, 16]."""
    return _seeded(9, Tied, _image())


# --------------------------------------------------------------------------- #
# Models for the error paths
# --------------------------------------------------------------------------- #

#: Qualified name of the submodule of ``data_dependent()`` that branches on tensor values.
DATA_DEPENDENT_MODULE = "body.gate"


class DataDependentGate(nn.Module):
    """Applies its convolution with a sign that depends on the input's values (untraceable by torch.fx)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return self.conv(x)
        return -self.conv(x)


class DataDependent(nn.Module):
    """A backbone whose ``body.gate`` has data-dependent control flow."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.body = nn.Sequential()
        self.body.add_module("conv", nn.Conv2d(8, 8, 3, padding=1))
        self.body.add_module("gate", DataDependentGate(8))
        self.body.add_module("act", nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


def data_dependent() -> tuple[nn.Module, torch.Tensor]:
    """Backbone that torch.fx cannot trace unless ``DATA_DEPENDENT_MODULE`` is a leaf; output [8, 16, 16]."""
    return _seeded(10, DataDependent, _image())


class _TupleOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, y.mean(dim=(2, 3))


class _DictOutput(_TupleOutput):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        y = self.conv(x)
        return {"map": y, "pooled": y.mean(dim=(2, 3))}


class _MixedOutput(_TupleOutput):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:  # type: ignore[override]
        return self.conv(x), 3


class _IntKeyedOutput(_TupleOutput):
    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:  # type: ignore[override]
        return {0: self.conv(x)}


def mixed_output() -> tuple[nn.Module, torch.Tensor]:
    """A backbone returning a tuple of a tensor and an int (mtgraph needs tensors only)."""
    return _seeded(11, _MixedOutput, _image())


def int_keyed_output() -> tuple[nn.Module, torch.Tensor]:
    """A backbone returning a dict keyed by an int (member names must be strings)."""
    return _seeded(12, _IntKeyedOutput, _image())


def tuple_output() -> tuple[nn.Module, torch.Tensor]:
    """A backbone returning a tuple of two tensors (a two-member value)."""
    return _seeded(11, _TupleOutput, _image())


def dict_output() -> tuple[nn.Module, torch.Tensor]:
    """A backbone returning a dict of two tensors (a two-member value with names)."""
    return _seeded(12, _DictOutput, _image())


# --------------------------------------------------------------------------- #
# Synthetic chain for benchmarks
# --------------------------------------------------------------------------- #


def chain(num_blocks: int, channels: int = 4, image: int = 8) -> tuple[nn.Module, torch.Tensor]:
    """A Sequential of ``num_blocks`` small residual conv blocks; input [2, channels, image, image]."""
    return _seeded(13, lambda: nn.Sequential(*[ResidualConv(channels) for _ in range(num_blocks)]),
                   (BATCH, channels, image, image))


# --------------------------------------------------------------------------- #
# Heads
# --------------------------------------------------------------------------- #


def skip_chain(num_blocks: int, channels: int = 4, image: int = 8, skips: int = 3) -> tuple[nn.Module, torch.Tensor]:
    """:func:`chain` whose boundaries carry up to ``skips`` earlier block outputs (multi-tensor cuts)."""
    return _seeded(13, lambda: SkipChain(num_blocks, channels, skips), (BATCH, channels, image, image))


def make_heads(out_shape: Sequence[int], tasks: Sequence[str], seed: int = 0) -> dict[str, nn.Module]:
    """Small heads, one per task, for a backbone output of shape ``out_shape`` (no batch dim).

    A feature map [C, H, W] gets conv-BN-ReLU-conv heads (task k has k + 1
    output channels); a vector [D] gets Linear-ReLU-Linear heads (k + 2
    outputs). Heads are in eval mode, with random BatchNorm statistics.
    """
    heads: dict[str, nn.Module] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 + seed)
        for k, task in enumerate(tasks):
            if len(out_shape) == 3:
                c = out_shape[0]
                head: nn.Module = nn.Sequential(
                    nn.Conv2d(c, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, k + 1, 1)
                )
            elif len(out_shape) == 1:
                d = out_shape[0]
                head = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, k + 2))
            else:
                raise ValueError(f"make_heads supports [C, H, W] and [D] outputs, got {list(out_shape)}")
            randomize_batchnorm(head, seed + k)
            heads[task] = head.eval()
    return heads


# --------------------------------------------------------------------------- #
# torchvision backbones (traced as they are)
# --------------------------------------------------------------------------- #

try:
    import torchvision  # noqa: F401
    from torchvision.models import convnext_tiny, mobilenet_v3_small, resnet18, vit_b_16
    from torchvision.models.vision_transformer import VisionTransformer

    HAS_TORCHVISION = True
except ImportError:  # torchvision is an optional extra ("zoo")
    HAS_TORCHVISION = False


def _tv_resnet18() -> tuple[nn.Module, torch.Tensor]:
    return _seeded(20, lambda: resnet18(), _image())


def _tv_mobilenet_v3_small() -> tuple[nn.Module, torch.Tensor]:
    return _seeded(21, lambda: mobilenet_v3_small(), _image())


def _tv_vit() -> tuple[nn.Module, torch.Tensor]:
    return _seeded(
        22,
        lambda: VisionTransformer(image_size=IMAGE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64),
        _image(),
    )


def _tv_convnext_tiny() -> tuple[nn.Module, torch.Tensor]:
    return _seeded(23, lambda: convnext_tiny(), _image())


def tv_vit_b_16() -> tuple[nn.Module, torch.Tensor]:
    """torchvision's full vit_b_16 (random weights), input [1, 3, 224, 224]: slow, for one check only."""
    if not HAS_TORCHVISION:
        raise ImportError("torchvision is not installed")
    return _seeded(24, lambda: vit_b_16(), (1, 3, 224, 224))


HAND_WRITTEN: dict[str, Factory] = {
    "resnet_basic": resnet_basic,
    "resnet_bottleneck": resnet_bottleneck,
    "mobilenet_v2": mobilenet_v2,
    "vit_matmul": vit_matmul,
    "vit_mha": vit_mha,
    "convnext": convnext,
    "unet": unet,
    "twice_called": twice_called,
    "tied": tied,
}

TORCHVISION: dict[str, Factory] = (
    {
        "tv_resnet18": _tv_resnet18,
        "tv_mobilenet_v3_small": _tv_mobilenet_v3_small,
        "tv_vit": _tv_vit,
        "tv_convnext_tiny": _tv_convnext_tiny,
    }
    if HAS_TORCHVISION
    else {}
)

ALL: dict[str, Factory] = {**HAND_WRITTEN, **TORCHVISION}

#: Valid ``cuts=[...]`` module names per backbone (each ends at a single-live-value point).
NAMED_CUTS: dict[str, list[str]] = {
    "resnet_basic": ["layer1", "layer2.0"],
    "resnet_bottleneck": ["layer1.0", "layer2.0"],
    "mobilenet_v2": ["features.0", "features.2", "features.4"],
    "vit_matmul": ["blocks.0", "blocks.1"],
    "vit_mha": ["blocks.1"],
    "convnext": ["stem", "stages.0.1", "stages.1"],
    "unet": ["stem", "dec1"],
    "twice_called": ["block", "block#2"],
    "tied": ["layers.0", "shared#2"],
    "tv_resnet18": ["layer1", "layer3.0"],
    "tv_mobilenet_v3_small": ["features.3", "features"],
    "tv_vit": ["encoder.layers.encoder_layer_0"],
    "tv_convnext_tiny": ["features.1", "features.5.3"],
}
