"""What an exported model says about itself: input size and normalisation, dynamic axes, precision.

Every model :func:`~mtgraph.exporters.export_onnx` writes carries these
entries in its ONNX ``metadata_props`` (all keys start with ``mtgraph.``), so
that a consumer in any language can prepare its input without the Python
that trained it:

========================== ==================================================
key                        value
========================== ==================================================
``mtgraph.tasks``          the outputs, comma-separated (one per task)
``mtgraph.input_shape``    ``C,H,W`` of the images the network was traced on
``mtgraph.dynamic_axes``   ``batch`` or ``batch,height,width``
``mtgraph.static_size``    why height/width are fixed (absent when dynamic)
``mtgraph.input_mean``     per-channel mean as a JSON list (absent if unknown)
``mtgraph.input_std``      per-channel std as a JSON list (absent if unknown)
``mtgraph.normalization``  how the input is prepared, in words
``mtgraph.precision``      ``fp32``, ``int8`` or ``fp16``
``mtgraph.optimization``   the onnxruntime optimisation stored in the file
``mtgraph.architecture``   the architecture's IR text
========================== ==================================================
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mtgraph.errors import ConfigError

__all__ = ["InputNormalization", "IMAGENET", "read_metadata", "normalization_entries"]

#: Prefix of every metadata key mtgraph writes.
PREFIX = "mtgraph."


@dataclass(frozen=True)
class InputNormalization:
    """Per-channel input normalisation the network expects: ``x = (image - mean) / std``.

    ``image`` is the picture scaled to ``[0, 1]``, channels first. The caller
    applies it (it is not part of the ONNX graph, so that a deployment that
    already normalises does not do it twice); the exported model records it.

    Args:
        mean: one value per input channel.
        std: one value per input channel, each > 0.

    Raises:
        ConfigError: unequal lengths, an empty or non-finite value, or a std <= 0.

    Examples:
        >>> import numpy as np
        >>> from mtgraph.exporters import InputNormalization
        >>> norm = InputNormalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        >>> norm.apply(np.full((1, 3, 2, 2), 0.75, dtype=np.float32))[0, :, 0, 0]
        array([1., 1., 1.], dtype=float32)
        >>> InputNormalization((0.5,), (0.0,))
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: InputNormalization.std must be > 0 for every channel, got [0.0]
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ConfigError(f"InputNormalization.{name} must be a non-empty sequence of numbers, got {values!r}")
            try:
                floats = tuple(float(v) for v in values)
            except (TypeError, ValueError):
                raise ConfigError(f"InputNormalization.{name} must hold numbers, got {list(values)!r}") from None
            if not all(math.isfinite(v) for v in floats):
                raise ConfigError(f"InputNormalization.{name} must be finite, got {list(floats)}")
            object.__setattr__(self, name, floats)
        if len(self.mean) != len(self.std):
            raise ConfigError(
                f"InputNormalization has {len(self.mean)} means and {len(self.std)} stds; give one of each per channel"
            )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"InputNormalization.std must be > 0 for every channel, got {list(self.std)}")

    @property
    def channels(self) -> int:
        """The number of channels it normalises."""
        return len(self.mean)

    def apply(self, images: object) -> object:
        """``(images - mean) / std`` over the channel axis (axis 1) of an ``[N, C, H, W]`` array.

        The result keeps the array's dtype.
        """
        import numpy as np

        array = np.asarray(images)
        shape = (1, self.channels) + (1,) * (array.ndim - 2)
        mean = np.asarray(self.mean, dtype=array.dtype).reshape(shape)
        std = np.asarray(self.std, dtype=array.dtype).reshape(shape)
        return (array - mean) / std


#: ImageNet's normalisation, expected by torchvision's and timm's pretrained weights.
IMAGENET = InputNormalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def normalization_entries(normalization: InputNormalization | None) -> dict[str, str]:
    """The metadata entries describing ``normalization`` (None: not recorded).

    Args:
        normalization: the input normalisation, or None when it is not known.

    Returns:
        ``{key: value}``: mean and std as JSON lists (when known) and a sentence.

    Examples:
        >>> from mtgraph.exporters.metadata import IMAGENET, normalization_entries
        >>> normalization_entries(IMAGENET)["mtgraph.input_mean"]
        '[0.485, 0.456, 0.406]'
        >>> normalization_entries(None)
        {'mtgraph.normalization': 'not recorded: feed images prepared as for training'}
    """
    if normalization is None:
        return {PREFIX + "normalization": "not recorded: feed images prepared as for training"}
    return {
        PREFIX + "input_mean": json.dumps(list(normalization.mean)),
        PREFIX + "input_std": json.dumps(list(normalization.std)),
        PREFIX + "normalization": "input = (image - mean) / std per channel, image in [0, 1], channels first",
    }


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``mtgraph.*`` metadata entries of the ONNX model at ``path`` (keys without the prefix).

    Args:
        path: an ONNX model file.

    Returns:
        ``{key: value}``, e.g. ``{"tasks": "seg,depth", "dynamic_axes": "batch,height,width", ...}``.

    Examples:
        >>> import tempfile, onnx
        >>> from onnx import helper
        >>> from mtgraph.exporters import read_metadata
        >>> model = helper.make_model(helper.make_graph([], "empty", [], []))
        >>> _ = model.metadata_props.add(key="mtgraph.precision", value="fp32")
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     onnx.save(model, f"{folder}/m.onnx")
        ...     read_metadata(f"{folder}/m.onnx")
        {'precision': 'fp32'}
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len(PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}


def normalization_from_metadata(entries: Mapping[str, str]) -> InputNormalization | None:
    """The normalisation recorded in ``entries`` (as returned by :func:`read_metadata`), None if absent."""
    if "input_mean" not in entries or "input_std" not in entries:
        return None
    try:
        return InputNormalization(tuple(json.loads(entries["input_mean"])), tuple(json.loads(entries["input_std"])))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the model's recorded input normalisation is malformed: {exc}") from exc
