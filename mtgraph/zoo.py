"""Small built-in backbones for the demo, the examples and quick experiments.

They are ordinary ``nn.Module`` s returning a dense feature map (no global
pooling), so dense heads (segmentation, depth, normals) can read them; mtgraph
traces them like any user model. ``resolve_model`` also accepts
``torchvision:NAME`` and ``timm:NAME`` when those packages are installed, and
``package.module:factory`` for a user's own factory.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import math
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from mtgraph.errors import ConfigError

__all__ = [
    "BasicBlock", "ResNetTiny", "resnet_tiny", "scaled_widths", "scaled_model", "FeatureExtractor", "resolve_model",
    "load_weights", "read_weight_file", "BUILTIN_MODELS", "BUILTIN_WIDTHS",
]


class BasicBlock(nn.Module):
    """A ResNet basic block: two 3x3 convolutions and a (projection when needed) shortcut.

    Args:
        cin: input channels.
        cout: output channels.
        stride: stride of the first convolution (and of the projection).

    Examples:
        >>> import torch
        >>> from mtgraph.zoo import BasicBlock
        >>> block = BasicBlock(4, 8, stride=2)
        >>> block(torch.randn(2, 4, 8, 8)).shape
        torch.Size([2, 8, 4, 4])
        >>> block.downsample is not None, BasicBlock(4, 4).downsample is None  # projection only when shapes change
        (True, True)
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetTiny(nn.Module):
    """A ResNet-18-shaped network (2 basic blocks per stage, 4 stages) with small widths.

    Output: a feature map at 1/8 of the input resolution with ``8 * width``
    channels (stage strides 1, 2, 2, 2 after a stride-1 stem).

    Args:
        width: channels of the stem and the first stage (doubled per stage).
        blocks_per_stage: basic blocks in each of the 4 stages.
        in_channels: channels of the input image.
        widths: channels of the four stages (the stem has the first); None:
            ``width * (1, 2, 4, 8)``. :func:`scaled_widths` gives the widths
            of a width multiplier.

    Raises:
        ConfigError: ``width``, a stage width or ``blocks_per_stage`` is not
            positive, or ``widths`` does not have four entries.

    Examples:
        >>> import torch
        >>> from mtgraph.zoo import ResNetTiny
        >>> model = ResNetTiny(width=4, blocks_per_stage=1)
        >>> model(torch.randn(1, 3, 16, 16)).shape, model.out_channels
        (torch.Size([1, 32, 2, 2]), 32)
        >>> ResNetTiny(widths=(5, 9, 18, 35)).out_channels
        35
        >>> ResNetTiny(width=0)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: width and blocks_per_stage must be positive, got 0 and 2
    """

    def __init__(
        self, width: int = 16, blocks_per_stage: int = 2, in_channels: int = 3, *, widths: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        if width < 1 or blocks_per_stage < 1:
            raise ConfigError(f"width and blocks_per_stage must be positive, got {width} and {blocks_per_stage}")
        stage_widths = _check_widths(widths) if widths is not None else tuple(width * 2**k for k in range(4))
        self.widths = stage_widths
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stage_widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(stage_widths[0]), nn.ReLU()
        )
        stages = []
        cin = stage_widths[0]
        for cout, stride in zip(stage_widths, (1, 2, 2, 2)):
            blocks = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    values = tuple(widths)
    if len(values) != 4 or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in values):
        raise ConfigError(f"widths must be four positive integers (one per stage), got {list(values)}")
    return values


def _relative_macs(widths: Sequence[int], in_channels: int = 3, blocks_per_stage: int = 2) -> float:
    """MACs of a ResNetTiny with stage ``widths`` per input pixel (the stride-2 stages see 1/4 of the pixels each)."""
    total = 9.0 * in_channels * widths[0]
    cin = widths[0]
    for k, cout in enumerate(widths):
        pixels = 4.0 ** -k
        first = 9.0 * cin * cout + 9.0 * cout * cout + (cin * cout if cin != cout or k > 0 else 0.0)
        total += pixels * (first + (blocks_per_stage - 1) * 18.0 * cout * cout)
        cin = cout
    return total


def scaled_widths(width: int, multiplier: float, *, in_channels: int = 3, blocks_per_stage: int = 2) -> tuple[int, ...]:
    """Stage widths of a :class:`ResNetTiny` scaled by a width ``multiplier``, its cost matched finely.

    Scaling every width by ``m`` multiplies the network's MACs by about
    ``m²``. Channels are integers, and rounding a narrow stage moves the cost
    in large steps (4 -> 5 channels is +56 % of that stage), so each stage is
    rounded down or up, whichever of the 16 combinations brings the MACs
    closest to those of the exact, non-integer widths ``m * width * (1, 2, 4,
    8)`` (the first stage width is also the stem's). An integer ``m * width``
    gives exactly those widths.

    Raises:
        ConfigError: ``width`` < 1, or ``multiplier`` not a finite number > 0.

    Examples:
        >>> from mtgraph.zoo import scaled_widths
        >>> scaled_widths(4, 1.0), scaled_widths(4, 1.5)
        ((4, 8, 16, 32), (6, 12, 24, 48))
        >>> scaled_widths(4, 1.1)  # 4.4 channels: the cost is matched with the wider stages
        (4, 9, 18, 36)
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(f"width must be an integer >= 1, got {width!r}")
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not math.isfinite(multiplier) \
            or multiplier <= 0:
        raise ConfigError(f"a width multiplier must be a finite number > 0, got {multiplier!r}")
    ideal = [multiplier * width * 2**k for k in range(4)]
    target = _relative_macs(ideal, in_channels, blocks_per_stage)  # the cost of (non-integer) ideal widths
    options = [sorted({max(1, math.floor(c)), max(1, math.ceil(c))}) for c in ideal]

    def mismatch(combo: tuple[int, ...]) -> tuple[float, float]:
        # Closest cost first; among equal costs, the widths closest to the ideal ones.
        error = abs(_relative_macs(combo, in_channels, blocks_per_stage) - target)
        return error, sum(abs(c - i) for c, i in zip(combo, ideal))

    return min(itertools.product(*options), key=mismatch)


def resnet_tiny(width: int = 16, multiplier: float = 1.0) -> ResNetTiny:
    """The demo backbone: ResNet-18-shaped, ``width`` channels in the first stage (9 blocks when traced).

    Args:
        width: channels of the first stage; the output has ``8 * width``.
        multiplier: a width multiplier (see :func:`scaled_widths`); 1 keeps ``width``.

    Returns:
        A :class:`ResNetTiny` with 2 blocks per stage and random weights.

    Raises:
        ConfigError: ``width`` is not positive, or ``multiplier`` not a number > 0.

    Examples:
        >>> import torch
        >>> from mtgraph.zoo import resnet_tiny
        >>> model = resnet_tiny(width=4)
        >>> model(torch.randn(1, 3, 16, 16)).shape, sum(p.numel() for p in model.parameters())
        (torch.Size([1, 32, 2, 2]), 44292)
        >>> resnet_tiny(width=4, multiplier=2.0).widths
        (8, 16, 32, 64)
    """
    if multiplier == 1.0:
        return ResNetTiny(width=width)
    return ResNetTiny(width=width, widths=scaled_widths(width, multiplier))


#: Built-in model names: ``resnet_tiny`` (width 16) and narrower variants for quick runs.
BUILTIN_MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet_tiny": resnet_tiny,
    "resnet_tiny_w8": functools.partial(resnet_tiny, width=8),
    "resnet_tiny_w4": functools.partial(resnet_tiny, width=4),
}
#: The first-stage width of each built-in model: the ones :func:`scaled_model` can scale.
BUILTIN_WIDTHS: dict[str, int] = {"resnet_tiny": 16, "resnet_tiny_w8": 8, "resnet_tiny_w4": 4}


def scaled_model(spec: str, multiplier: float) -> nn.Module:
    """The built-in model ``spec`` with its widths scaled by ``multiplier`` (random weights).

    Only the built-in ``resnet_tiny`` family can be scaled: a torchvision,
    timm or user model has no width parameter mtgraph knows.

    Raises:
        ConfigError: ``spec`` is not a built-in model, or ``multiplier`` is not a number > 0.

    Examples:
        >>> from mtgraph.zoo import scaled_model
        >>> scaled_model("resnet_tiny_w4", 0.5).widths
        (2, 4, 8, 16)
        >>> scaled_model("torchvision:resnet18", 0.5)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: model 'torchvision:resnet18' cannot be width-scaled; only the built-in models (resnet_tiny, resnet_tiny_w8, resnet_tiny_w4) can
    """
    if spec not in BUILTIN_WIDTHS:
        raise ConfigError(
            f"model {spec!r} cannot be width-scaled; only the built-in models ({', '.join(BUILTIN_WIDTHS)}) can"
        )
    return resnet_tiny(BUILTIN_WIDTHS[spec], multiplier)


class FeatureExtractor(nn.Module):
    """Named parts of a classifier run in order: its feature-map extractor, under the parts' own names.

    Keeping the names (``conv1``, ``layer1``, ``features``) makes
    :func:`mtgraph.trace` cut the extractor exactly as it cuts the whole
    classifier (``layer1.0``, ``features.3``): the command line and Python
    agree block for block, and a state dict of the classifier loads into it
    (less the dropped classifier).

    Args:
        parts: name -> module, in the order the classifier runs them.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from mtgraph.zoo import FeatureExtractor
        >>> model = FeatureExtractor({"stem": nn.Conv2d(3, 4, 3), "act": nn.ReLU()})
        >>> model(torch.zeros(1, 3, 8, 8)).shape, [name for name, _ in model.named_children()]
        (torch.Size([1, 4, 6, 6]), ['stem', 'act'])
    """

    def __init__(self, parts: Mapping[str, nn.Module]) -> None:
        super().__init__()
        for name, module in parts.items():
            self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


def _forward_features(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    features: torch.Tensor = self.forward_features(x)  # type: ignore[operator]  # a timm model's method
    return features


_FEATURE_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


def _features_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``cls`` with ``forward = forward_features``: a timm model that returns its feature map.

    A subclass, not a wrapper, so every module keeps its own name (a wrapper
    would prefix them all with its attribute, ``inner.layer1.0``) and the
    model's own helper methods stay reachable from ``forward_features``.
    """
    if cls not in _FEATURE_CLASSES:  # one subclass per class: isinstance and type checks stay stable
        _FEATURE_CLASSES[cls] = type(f"{cls.__name__}Features", (cls,), {"forward": _forward_features,
                                                                            "__module__": __name__})
    return _FEATURE_CLASSES[cls]


def _feature_extractor(model: nn.Module) -> nn.Module:
    """Drop a torchvision/timm classifier's pooling and classifier so the model returns a feature map.

    Module names are kept (see :class:`FeatureExtractor`), so the blocks are
    named as when tracing the whole classifier.
    """
    if hasattr(model, "forward_features"):  # timm
        reset = getattr(model, "reset_classifier", None)
        if callable(reset):
            reset(0)  # the classifier becomes an Identity: its weights are not part of the features
        model.__class__ = _features_class(type(model))
        return model
    if hasattr(model, "features") and isinstance(model.features, nn.Module):  # mobilenet, convnext, vgg...
        return FeatureExtractor({"features": model.features})
    if hasattr(model, "layer4") and hasattr(model, "fc"):  # resnet family
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        return FeatureExtractor({name: model.get_submodule(name) for name in names})
    return model


def resolve_model(spec: str, *, features: bool = True, weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """Build a model from ``spec``, with random weights or the weights of a local file.

    ``spec`` is a built-in name (``resnet_tiny``), ``torchvision:NAME``,
    ``timm:NAME`` or ``package.module:factory`` (a user's own factory, called
    with no arguments: this imports and runs that user code, by design). With
    ``features=True`` zoo classifiers are cut to their feature extractor,
    keeping their module names (see :class:`FeatureExtractor`). Nothing is
    downloaded: pretrained weights come from a file you name
    (:func:`load_weights`), such as torchvision's ``resnet18-f37072fd.pth``.

    Args:
        spec: the model name, as above.
        features: cut torchvision/timm classifiers to a feature-map extractor.
        weights: a safetensors file or a torch state dict of the model (of the
            whole classifier or of its feature extractor); None: random weights.

    Returns:
        The model, in training mode.

    Raises:
        ConfigError: the spec is malformed, names an unknown model, needs
            torchvision/timm when they are not installed, or its factory fails
            or returns something other than an nn.Module; or the weight file
            cannot be read or does not fit the model.

    Examples:
        >>> from mtgraph.zoo import resolve_model
        >>> resolve_model("resnet_tiny_w4").out_channels
        32
        >>> resolve_model("torch.nn:Identity")  # a factory called with no arguments
        Identity()
        >>> resolve_model("resnet_huge")
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: model 'resnet_huge' is not a built-in (resnet_tiny, ...) and not of the form ...
    """
    model, zoo = _build_model(spec)
    kept = _feature_extractor(model) if features and zoo else model
    if weights is not None:
        # The classifier's state dict also holds the layers the feature extractor dropped (fc, classifier):
        # those are the only keys allowed to go unused.
        dropped = set(model.state_dict()) - set(kept.state_dict()) if kept is not model else set()
        load_weights(kept, weights, ignore=dropped)
    return kept


def _build_model(spec: str) -> tuple[nn.Module, bool]:
    """The model ``spec`` names, whole, and whether it comes from torchvision or timm."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"model spec must be a non-empty string, got {spec!r}")
    if spec in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec](), False
    prefix, sep, name = spec.partition(":")
    if not sep or not name:
        raise ConfigError(
            f"model {spec!r} is not a built-in ({', '.join(BUILTIN_MODELS)}) and not of the form "
            "'package.module:factory', 'torchvision:NAME' or 'timm:NAME'"
        )
    if prefix in ("torchvision", "timm"):
        # A plain model name only: timm also accepts 'hf-hub:...' and 'local-dir:...' names that fetch or
        # read configuration from elsewhere, which a name recorded in model.json must not trigger.
        if not re.fullmatch(r"[A-Za-z0-9_][\w.\-]*", name):
            raise ConfigError(f"model {spec!r}: {prefix} model names are letters, digits, '_', '.' and '-', got {name!r}")
        try:
            zoo = importlib.import_module("torchvision.models" if prefix == "torchvision" else "timm")
        except ImportError as exc:
            raise ConfigError(f"model {spec!r} needs {prefix}; install it with: pip install 'mtgraph[zoo]'") from exc
        try:
            if prefix == "torchvision":
                return zoo.get_model(name, weights=None), True
            return zoo.create_model(name, pretrained=False), True
        except Exception as exc:
            raise ConfigError(f"{prefix} has no model {name!r} ({type(exc).__name__}: {exc})") from exc
    if not re.fullmatch(r"[A-Za-z_][\w.]*", prefix) or not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise ConfigError(f"model factory {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(prefix)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {prefix!r} for model {spec!r}: {exc}") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"module {prefix!r} has no callable {name!r}")
    try:
        model = factory()
    except Exception as exc:
        raise ConfigError(f"model factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model, False


#: Keys under which training scripts commonly nest a model's state dict in a checkpoint.
_NESTED_STATE_KEYS = ("state_dict", "model", "model_state_dict")


def read_weight_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or of a torch state dict, read without running code from the file.

    A ``.safetensors`` file is read as such; any other file with
    ``torch.load(weights_only=True)``, which refuses pickled objects other
    than tensors and containers. A checkpoint that nests the state dict under
    ``state_dict``, ``model`` or ``model_state_dict`` is unwrapped, and a
    ``module.`` prefix on every key (a DistributedDataParallel checkpoint) is
    removed.

    Args:
        path: the weight file.

    Returns:
        Tensor name -> tensor (on the CPU).

    Raises:
        ConfigError: the file does not exist, cannot be read that way, or does
            not hold a mapping of names to tensors.

    Examples:
        >>> import tempfile, torch
        >>> from mtgraph.zoo import read_weight_file
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     torch.save({"model": {"module.conv.weight": torch.ones(2)}}, f"{folder}/w.pt")
        ...     read_weight_file(f"{folder}/w.pt")
        {'conv.weight': tensor([1., 1.])}
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"weight file {str(file)!r} does not exist")
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(file)))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"weight file {str(file)!r} is not a valid safetensors file ({exc})") from exc
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...: all mean "not a plain state dict"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"weight file {str(file)!r} is neither a .safetensors file nor a torch state dict that loads with "
            f"weights_only=True ({first}); mtgraph does not run code stored in weight files. Save the model's "
            "state_dict() with torch.save, or convert it to safetensors"
        ) from exc
    if isinstance(state, Mapping):
        nested = [k for k in _NESTED_STATE_KEYS if isinstance(state.get(k), Mapping)]
        if nested and not any(isinstance(v, torch.Tensor) for v in state.values()):
            state = state[nested[0]]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"weight file {str(file)!r} does not hold a state dict (a mapping of names to tensors)")
    tensors = {str(k): v for k, v in state.items()}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, ignore: Collection[str] = ()) -> nn.Module:
    """Load the weight file ``path`` into ``model`` (in place, strict) and return ``model``.

    Every parameter and buffer of ``model`` must be in the file with its shape,
    and every tensor of the file must belong to ``model`` or be named in
    ``ignore`` (the classifier layers a feature extractor drops). The file is
    read by :func:`read_weight_file`.

    Args:
        model: the module to load into.
        path: a safetensors file or a torch state dict.
        ignore: tensor names of the file that may go unused.

    Returns:
        ``model``.

    Raises:
        ConfigError: the file cannot be read, lacks tensors of ``model``, has
            tensors ``model`` does not, or has a tensor of another shape.

    Examples:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from mtgraph.zoo import load_weights
        >>> source, target = nn.Linear(2, 3), nn.Linear(2, 3)
        >>> folder = tempfile.TemporaryDirectory()
        >>> torch.save(source.state_dict(), f"{folder.name}/linear.pt")
        >>> torch.equal(load_weights(target, f"{folder.name}/linear.pt").weight, source.weight)
        True
        >>> load_weights(nn.Linear(2, 4), f"{folder.name}/linear.pt")
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: weight file '.../linear.pt' does not fit the model: shape of weight is [3, 2] in the file but [4, 2] in the model; shape of bias is [3] in the file but [4] in the model
        >>> folder.cleanup()
    """
    state = read_weight_file(path)
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and k not in set(ignore)]
    if missing:
        problems.append(f"{len(missing)} tensors of the model are missing (first: {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors are not in the model (first: {unexpected[:3]})")
    problems += [
        f"shape of {k} is {list(state[k].shape)} in the file but {list(v.shape)} in the model"
        for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if problems:
        raise ConfigError(f"weight file {str(path)!r} does not fit the model: {'; '.join(problems[:4])}")
    model.load_state_dict({k: state[k] for k in expected}, strict=True)
    return model
