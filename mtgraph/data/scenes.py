"""Generated multi-task scenes: shapes standing on a slanted ground plane.

Each image shows a sky, a ground plane seen by a pinhole camera that is pitched
down and slightly rolled (so depth varies with the row, and a little with the
column), and a few objects. Object class ``k`` (1-based) is a shape:
disc, square, triangle, diamond, ring, cross (at most six classes). Objects
stand on the ground at a sampled depth, are drawn with a z-buffer (so
occlusion follows depth) and carry a relief: their depth bulges towards the
camera as a dome, a pyramid, a flat plate or a tilted plate.

Per image the five dense targets of papers/000 are produced, plus two
image-level targets:

========== ===================== ==========================================
name        dtype, shape          meaning
========== ===================== ==========================================
seg         int64 [H, W]          0 background, 1..C object class
depth       float32 [1, H, W]     positive depth (z) along the optical axis
edges       float32 [1, H, W]     1 where ``seg`` differs from a 4-neighbour
normals     float32 [3, H, W]     unit normals of the depth map (x right,
                                  y up, z towards the viewer)
image       float32 [3, H, W]     the input image itself (autoencoder), [0, 1]
count       int64 []              number of objects with a visible pixel
dominant    int64 []              object class with most pixels (0 if none;
                                  ties go to the smaller class id)
unrelated   float32 [1, H, W]     only when ``unrelated_strength > 0``:
                                  a hidden random field in (-1, 1)
========== ===================== ==========================================

Normals are computed from the returned depth map
(:func:`mtgraph.data.targets.normals_from_depth` with ``focal``), and the
image is shaded with them, so normals are both consistent with depth and
visible in the image.

How related the tasks are is set by :class:`SceneConfig`:

* ``colour_by_class`` -- 1: an object's colour names its class, 0: colours
  are random and only the outline tells the class.
* ``relief_by_class`` -- True: the relief is a function of the class (dome,
  pyramid, flat, tilt, cycling over the classes), so normals and fine depth
  carry class information; False: the relief is random.
* ``shading`` -- how strongly the normals shade the image (0: flat colours,
  the normals task must be inferred from outlines and perspective alone).
* ``unrelated_strength`` -- the deliberately unrelated task. A smooth random
  field ``F`` in (-1, 1) is drawn from its own random stream, independent of
  everything in the scene, and added to the image as
  ``unrelated_strength * F * (-1) ** (row + col)``: a checkerboard carrier
  modulated by ``F``. Multiplying by the checkerboard and smoothing (one
  convolution) recovers ``F``; what the scene puts at that frequency (hard
  edges, pixel noise) is uncorrelated with ``F`` and averages out. The scene
  is first clipped to ``[strength, 1 - strength]`` so the addition never
  saturates. ``F`` is the target ``unrelated``. It is learnable from the image
  and, as a random variable, independent of seg, depth, normals, edges,
  count and dominant; the scene targets are bit-identical whatever
  ``unrelated_strength`` is.
  Use it as the task that should *not* share (Safe MTL, task grouping).

Every random number is drawn whatever the knobs, so the knobs never move
objects: ``colour_by_class``, ``texture``, ``shading`` and ``pixel_noise``
change only the image; ``relief_by_class`` changes depth and normals (and so,
where two objects overlap, possibly which one is in front).

Determinism: sample ``i`` of seed ``s`` is drawn from
``numpy.random.default_rng([s, i, 0])`` (the scene), ``[s, i, 1]`` (the
unrelated field) and ``[s, i, 2]`` (which labels ``seg_labelled``,
``depth_labelled`` and ``normals_labelled`` hide), so it depends only on ``(config, s, i)``, never on
which other samples were generated, or in which order.

The designed preset
-------------------

``SceneConfig.designed()`` (``SceneDataset(n, preset="designed")``) is a
benchmark in which what a network shares decides how well it does. Its five
tasks (:data:`DESIGNED_TASKS`, built by :func:`designed_tasks`) form three
known clusters, :data:`DESIGNED_CLUSTERS`:

* ``{seg, edges}`` share the objects' outlines: ``edges`` is exactly the
  boundary of ``seg``;
* ``{depth, normals}`` share the geometry: the camera's pitch (0.1..0.45 rad)
  and roll (up to 20 degrees) decide the ground plane, hence the ground's
  depth and its normal, and ``normals`` are the normals of ``depth``;
* ``unrelated`` shares nothing with the scene (see ``unrelated_strength``).

Why sharing helps inside the outline cluster at a CPU-sized scale (32 px, a
``resnet_tiny`` of width 4, a few hundred images, a few epochs): ``seg`` is
labelled on a quarter of the training images (``seg_labelled``), ``edges`` on
all of them. A network of its own learns where the objects are from those few
labels only (and from a background whose shading, texture and horizon also
draw contours); a trunk shared with ``edges`` learns which contours are object
outlines from every image, and the segmentation head only has to name them.
Validation and test sets keep every label (:attr:`SceneConfig.fully_labelled`).

Why sharing hurts across clusters: the unrelated field lives at the highest
spatial frequency, as a carrier the scene tasks must ignore and the unrelated
task must demodulate in the first layers; in a narrow shared trunk the
channels go to the tasks that pull hardest, and the unrelated task, whose loss
is the smallest, loses them. The scene clusters also compete for a narrow
trunk (the objects' colours and outlines against the ground's pose).

Segmentation learns more than background because objects are large (radius
1..2 at the camera height 1.5: about a fifth of the pixels, every class above
3 %), colour mostly names the class (``colour_by_class`` 0.8), there are three
classes, and :func:`designed_tasks` weights the cross-entropy by
median-frequency balancing.

What is measured, with intervals over seeds, is in ``docs/results/designed/``
(``examples/designed_transfer.py``, documented in ``docs/benchmark.md``),
including the effects the design aimed at and did not get.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mtgraph.data.npy_folder import IGNORE_INDEX
from mtgraph.data.targets import normals_from_depth, semantic_edges
from mtgraph.errors import ConfigError, DataError
from mtgraph.tasks import Task, depth, edges, normals, regression, segmentation

__all__ = [
    "SHAPES",
    "PRESETS",
    "DESIGNED_TASKS",
    "DESIGNED_CLUSTERS",
    "SceneConfig",
    "Scene",
    "render_scene",
    "SceneDataset",
    "designed_tasks",
    "label_shares",
]

#: Object class ``k`` (1-based) is the shape ``SHAPES[k - 1]``.
SHAPES = ("disc", "square", "triangle", "diamond", "ring", "cross")
_RELIEFS = ("dome", "pyramid", "flat", "tilt")
# One clearly separated hue per class; used in proportion to colour_by_class.
_PALETTE = np.array(
    [
        [0.85, 0.20, 0.20],
        [0.20, 0.70, 0.25],
        [0.20, 0.35, 0.90],
        [0.90, 0.80, 0.15],
        [0.75, 0.25, 0.80],
        [0.15, 0.80, 0.80],
    ]
)
_CAMERA_HEIGHT = 1.5
# The fields that hide labels (each a fraction of the images that keep theirs).
_LABEL_FRACTIONS = ("seg_labelled", "depth_labelled", "normals_labelled")

#: The tasks of the ``designed`` preset, in head order (each names the target it learns).
DESIGNED_TASKS = ("seg", "edges", "depth", "normals", "unrelated")
#: The task clusters the ``designed`` preset is built to have: tasks in one cluster share a latent of the
#: scene (object outlines; camera geometry); tasks in different clusters compete for a small network's capacity.
DESIGNED_CLUSTERS: tuple[tuple[str, ...], ...] = (("seg", "edges"), ("depth", "normals"), ("unrelated",))
#: Names ``SceneDataset(..., preset=NAME)`` accepts.
PRESETS = ("designed",)
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class SceneConfig:
    """Options of the scene generator (every field is a difficulty knob).

    Attributes:
        size: image height and width in pixels, 32..256.
        num_classes: object classes C, 1..6 (``seg`` has C + 1 labels).
        min_objects: fewest objects placed per image (some may end up hidden).
        max_objects: most objects placed per image.
        object_radius: range of an object's physical radius (camera height is
            1.5); its size in pixels follows perspective.
        max_depth: depth of the sky, and cap of the ground's depth.
        max_roll_deg: largest camera roll; the horizon tilts by up to this.
        colour_by_class: 0..1, how much an object's colour reveals its class.
        relief_by_class: whether the relief (hence the normals) reveals the class.
        texture: 0..1, contrast of object stripes and the ground checkerboard.
        shading: 0..1, weight of Lambertian shading by the normals.
        pixel_noise: standard deviation of Gaussian pixel noise.
        unrelated_strength: 0..0.2, amplitude of the unrelated field in the
            image; 0 disables the ``unrelated`` target.
        pitch: range of the camera's downward pitch in radians, within 0..1
            (the default puts the horizon between 38% and 17% of the height).
        relief_height: 0..2, scale of the objects' relief (0: every object is
            a flat plate facing the camera).
        flat_objects: objects are painted on the ground (their depth and
            normals are the ground's) instead of standing on it.
        seg_labelled: 0..1, fraction of the images whose ``seg`` target is
            kept; on the others every pixel is ``IGNORE_INDEX`` (-1). ``edges``
            always comes from the full segmentation.
        depth_labelled: 0..1, fraction of the images whose ``depth`` is kept;
            on the others it is 0 everywhere (no measurement, which the depth
            loss and metrics skip).
        normals_labelled: 0..1, fraction of the images whose ``normals`` are
            kept; on the others they are zero vectors (no ground truth, which
            the normals loss and metrics skip). The normals come from the
            complete depth either way.

    Raises:
        ConfigError: a field outside its range.

    Examples:
        >>> from mtgraph.data import SceneConfig
        >>> config = SceneConfig(size=32, num_classes=3)
        >>> config.seg_classes, config.target_names
        (4, ('seg', 'depth', 'edges', 'normals', 'image', 'count', 'dominant'))
        >>> SceneConfig(num_classes=7)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: num_classes must be in 1..6 (shapes: ...), got 7
    """

    size: int = 64
    num_classes: int = 4
    min_objects: int = 1
    max_objects: int = 4
    object_radius: tuple[float, float] = (0.35, 0.8)
    max_depth: float = 25.0
    max_roll_deg: float = 8.0
    colour_by_class: float = 0.7
    relief_by_class: bool = True
    texture: float = 0.3
    shading: float = 0.6
    pixel_noise: float = 0.02
    unrelated_strength: float = 0.0
    pitch: tuple[float, float] = (0.12, 0.32)
    relief_height: float = 1.0
    flat_objects: bool = False
    seg_labelled: float = 1.0
    depth_labelled: float = 1.0
    normals_labelled: float = 1.0

    def __post_init__(self) -> None:
        # Real-valued fields become floats: an int such as max_depth=8 would otherwise make numpy build integer
        # arrays (a ground depth truncated to whole units, and normals computed from that staircase).
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("float", "tuple[float, float]") and not isinstance(value, bool):
                try:
                    coerced = float(value) if field.type == "float" else tuple(float(v) for v in value)
                except (TypeError, ValueError):
                    raise ConfigError(f"{field.name} must be a number (or a pair of numbers), got {value!r}") from None
                object.__setattr__(self, field.name, coerced)
        if not 32 <= self.size <= 256:
            raise ConfigError(f"scene size must be in 32..256 pixels, got {self.size}")
        if not 1 <= self.num_classes <= len(SHAPES):
            raise ConfigError(
                f"num_classes must be in 1..{len(SHAPES)} (shapes: {', '.join(SHAPES)}), got {self.num_classes}"
            )
        if not 0 <= self.min_objects <= self.max_objects:
            raise ConfigError(f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        low, high = self.object_radius
        if not 0 < low <= high:
            raise ConfigError(f"object_radius must be 0 < low <= high, got {self.object_radius}")
        if self.max_depth <= 2 * _CAMERA_HEIGHT:
            raise ConfigError(f"max_depth must exceed {2 * _CAMERA_HEIGHT}, got {self.max_depth}")
        if not 0 <= self.max_roll_deg <= 30:
            raise ConfigError(f"max_roll_deg must be in 0..30, got {self.max_roll_deg}")
        if not 0 <= self.pitch[0] <= self.pitch[1] <= 1:
            raise ConfigError(f"pitch must be a range 0 <= low <= high <= 1 (radians), got {self.pitch}")
        for name in ("colour_by_class", "texture", "shading", *_LABEL_FRACTIONS):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"{name} must be in 0..1, got {value}")
        if not 0 <= self.relief_height <= 2:
            raise ConfigError(f"relief_height must be in 0..2, got {self.relief_height}")
        if self.pixel_noise < 0:
            raise ConfigError(f"pixel_noise must be >= 0, got {self.pixel_noise}")
        if not 0 <= self.unrelated_strength <= 0.2:
            raise ConfigError(f"unrelated_strength must be in 0..0.2, got {self.unrelated_strength}")

    @classmethod
    def designed(cls, **overrides: Any) -> SceneConfig:
        """The benchmark preset whose tasks form the known clusters :data:`DESIGNED_CLUSTERS`.

        See the module docstring ("The designed preset") for why sharing helps
        inside a cluster and hurts across clusters, and
        ``docs/results/designed/`` for the measurement. Its training sets hide
        labels (``seg_labelled``, ``depth_labelled``, ``normals_labelled`` < 1); evaluate on
        :meth:`fully_labelled`.

        Args:
            **overrides: fields to change (e.g. ``size=64``).

        Returns:
            The preset's :class:`SceneConfig`.

        Raises:
            ConfigError: an unknown field, or a value outside its range.

        Examples:
            >>> from mtgraph.data import SceneConfig
            >>> config = SceneConfig.designed()
            >>> config.size, config.seg_classes, "unrelated" in config.target_names
            (32, 4, True)
            >>> config.fully_labelled.seg_labelled, SceneConfig.designed(size=64).size
            (1.0, 64)
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ConfigError(f"unknown scene option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        return cls(**{**_DESIGNED, **overrides})

    @property
    def fully_labelled(self) -> SceneConfig:
        """The same scenes with every label kept (for validation and test sets).

        Examples:
            >>> from mtgraph.data import SceneConfig
            >>> SceneConfig(seg_labelled=0.2).fully_labelled.seg_labelled
            1.0
        """
        return dataclasses.replace(self, seg_labelled=1.0, depth_labelled=1.0, normals_labelled=1.0)

    @property
    def focal(self) -> float:
        """Focal length in pixels (equal to the size: a 53 degree field of view)."""
        return float(self.size)

    @property
    def seg_classes(self) -> int:
        """Number of segmentation labels, background included (C + 1)."""
        return self.num_classes + 1

    @property
    def target_names(self) -> tuple[str, ...]:
        """Names of the targets each sample carries, in a fixed order."""
        names = ("seg", "depth", "edges", "normals", "image", "count", "dominant")
        return names + (("unrelated",) if self.unrelated_strength > 0 else ())


# The designed preset's fields (see the module docstring, "The designed preset", for each choice).
_DESIGNED: dict[str, Any] = {
    "size": 32,
    "num_classes": 3,
    "min_objects": 1,
    "max_objects": 3,
    "object_radius": (1.0, 2.0),
    "max_depth": 8.0,
    "max_roll_deg": 20.0,
    "pitch": (0.1, 0.45),
    "colour_by_class": 0.8,
    "relief_by_class": False,
    "unrelated_strength": 0.1,
    "seg_labelled": 0.25,
}


@functools.lru_cache(maxsize=16)
def label_shares(config: SceneConfig, samples: int = 256) -> tuple[float, ...]:
    """Share of the pixels each segmentation label covers, over ``samples`` scenes of ``config``.

    Measured on complete labels (whatever ``seg_labelled`` hides) of seed
    ``2**31 - 1``, a seed no dataset of the examples uses; cached per config.

    Args:
        config: the scenes.
        samples: how many scenes to count.

    Returns:
        ``config.seg_classes`` shares summing to 1, background first.

    Examples:
        >>> from mtgraph.data import SceneConfig, label_shares
        >>> shares = label_shares(SceneConfig.designed())
        >>> len(shares), round(sum(shares), 6), shares[0] > 0.5
        (4, 1.0, True)
    """
    counts = np.zeros(config.seg_classes, dtype=np.int64)
    for index in range(samples):
        counts += np.bincount(_render_complete(config, 2**31 - 1, index).seg.ravel(), minlength=config.seg_classes)
    return tuple(float(c) for c in counts / counts.sum())


def designed_tasks(config: SceneConfig | None = None, *, hidden: int = 8) -> dict[str, Task]:
    """The tasks :data:`DESIGNED_TASKS` of the designed preset, keyed by name in head order.

    Segmentation ignores the hidden labels (``IGNORE_INDEX``) and weights its
    cross-entropy by median-frequency balancing of :func:`label_shares`
    (background about 0.1, object classes about 1-2), so that a small network
    trained for a few epochs learns the objects instead of background
    everywhere; the normals
    loss and metrics skip the zero vectors of hidden normals; ``unrelated`` is
    a one-channel :func:`~mtgraph.tasks.regression`. Every other loss and
    every metric is the task factory's default.

    Args:
        config: the scenes (default :meth:`SceneConfig.designed`); gives the
            number of segmentation labels and must have ``unrelated_strength > 0``.
        hidden: channels of every head's 3x3 conv. Small by default so that
            what tasks share is decided in the backbone, not in wide heads.

    Returns:
        ``{name: Task}`` for ``seg``, ``edges``, ``depth``, ``normals``, ``unrelated``.

    Raises:
        ConfigError: a config without the ``unrelated`` target, or ``hidden < 1``.

    Examples:
        >>> from mtgraph.data import designed_tasks
        >>> {name: task.primary for name, task in designed_tasks().items()}
        {'seg': 'miou', 'edges': 'bce', 'depth': 'rmse', 'normals': 'cos_sim', 'unrelated': 'mse'}
    """
    config = SceneConfig.designed() if config is None else config
    if config.unrelated_strength <= 0:
        raise ConfigError("the designed tasks include 'unrelated': the scenes need unrelated_strength > 0")
    shares = label_shares(config)
    # Median-frequency balancing (Eigen & Fergus, 2015): w_k = median(share) / share_k.
    median = float(np.median(shares))
    weights = [median / max(share, 1e-6) for share in shares]
    return {
        "seg": segmentation(config.seg_classes, IGNORE_INDEX, class_weights=weights, hidden=hidden),
        "edges": edges(hidden=hidden),
        "depth": depth(hidden=hidden),
        "normals": normals(hidden=hidden),
        "unrelated": regression(1, hidden=hidden),
    }


@dataclass(frozen=True, eq=False)
class Scene:
    """One generated sample as numpy arrays (see the module docstring for shapes).

    Examples:
        >>> from mtgraph.data import SceneConfig, render_scene
        >>> scene = render_scene(SceneConfig(size=32), seed=0, index=0)
        >>> scene.image.shape, scene.seg.shape, scene.depth.shape, scene.normals.shape
        ((3, 32, 32), (32, 32), (1, 32, 32), (3, 32, 32))
        >>> sorted(scene.targets())
        ['count', 'depth', 'dominant', 'edges', 'image', 'normals', 'seg']
    """

    image: np.ndarray
    seg: np.ndarray
    depth: np.ndarray
    edges: np.ndarray
    normals: np.ndarray
    count: int
    dominant: int
    unrelated: np.ndarray | None = None

    def targets(self) -> dict[str, np.ndarray]:
        """Return the targets keyed by name; ``image`` is a copy of the input."""
        out = {
            "seg": self.seg,
            "depth": self.depth,
            "edges": self.edges,
            "normals": self.normals,
            "image": self.image.copy(),
            "count": np.array(self.count, dtype=np.int64),
            "dominant": np.array(self.dominant, dtype=np.int64),
        }
        if self.unrelated is not None:
            out["unrelated"] = self.unrelated
        return out


def render_scene(config: SceneConfig, seed: int, index: int) -> Scene:
    """Generate sample ``index`` of ``seed``; a pure function of its arguments.

    Args:
        config: the generator's options.
        seed: dataset seed, >= 0.
        index: sample index, >= 0.

    Returns:
        The :class:`Scene`, drawn from ``numpy.random.default_rng([seed, index, ...])``.

    Raises:
        ConfigError: a negative ``seed`` or ``index``.

    Examples:
        >>> import numpy as np
        >>> from mtgraph.data import SceneConfig, render_scene
        >>> config = SceneConfig(size=32, num_classes=2)
        >>> a, b = render_scene(config, 3, 5), render_scene(config, 3, 5)
        >>> bool(np.array_equal(a.image, b.image)), int(a.seg.max()) <= config.num_classes
        (True, True)
    """
    if seed < 0 or index < 0:
        raise ConfigError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return _hide_labels(config, _render_complete(config, seed, index), seed, index)


def _render_complete(config: SceneConfig, seed: int, index: int) -> Scene:
    """Sample ``index`` of ``seed`` with every label (before the ``*_labelled`` fractions hide any)."""
    rng = np.random.default_rng([seed, index, 0])
    size = config.size
    u = (np.arange(size) + 0.5 - size / 2) / config.focal
    v = u  # square images: rows and columns share the same coordinates

    down = _ground_normal(rng, config)
    ground, is_ground = _ground_depth(u, v, down, config.max_depth)
    depth = ground.copy()
    seg = np.zeros((size, size), dtype=np.int64)
    instance = np.zeros((size, size), dtype=np.int32)
    albedo = _background(rng, config, u, v, ground, is_ground)

    n_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    for k in range(n_objects):
        _draw_object(rng, config, k + 1, down, ground, depth, seg, instance, albedo)

    depth32 = depth.astype(np.float32)
    normals = normals_from_depth(depth32, config.focal)
    image = _shade(rng, config, albedo, normals, depth32 < config.max_depth)

    unrelated = None
    if config.unrelated_strength > 0:
        field = _unrelated_field(np.random.default_rng([seed, index, 1]), size)
        carrier = np.where((np.arange(size)[:, None] + np.arange(size)[None, :]) % 2 == 0, 1, -1)
        lo = config.unrelated_strength
        image = np.clip(image, lo, 1 - lo) + lo * field * carrier
        unrelated = field[None].astype(np.float32)

    visible = np.unique(instance[instance > 0])
    per_class = np.bincount(seg.ravel(), minlength=config.seg_classes)[1:]
    dominant = int(np.argmax(per_class)) + 1 if per_class.any() else 0
    return Scene(
        image=image.astype(np.float32),
        seg=seg,
        depth=depth32[None],
        edges=semantic_edges(seg)[None],
        normals=normals,
        count=int(visible.size),
        dominant=dominant,
        unrelated=unrelated,
    )


def _labels_kept(config: SceneConfig, seed: int, index: int) -> tuple[bool, bool, bool]:
    """Whether sample ``index`` keeps its ``seg``, ``depth`` and ``normals`` labels.

    Drawn from a stream of its own (``[seed, index, 2]``), so hiding labels
    never changes a scene, and a fraction of 1 keeps every label.
    """
    draws = np.random.default_rng([seed, index, 2]).random(3)
    return (
        bool(draws[0] < config.seg_labelled),
        bool(draws[1] < config.depth_labelled),
        bool(draws[2] < config.normals_labelled),
    )


def _hide_labels(config: SceneConfig, scene: Scene, seed: int, index: int) -> Scene:
    """``scene`` with the labels that ``seg_labelled``, ``depth_labelled`` and ``normals_labelled`` withhold hidden.

    Hidden labels take the value the tasks read as 'unknown': ``IGNORE_INDEX``
    for ``seg``, 0 for ``depth`` (no measurement) and zero vectors for ``normals``.
    """
    keep_seg, keep_depth, keep_normals = _labels_kept(config, seed, index)
    if keep_seg and keep_depth and keep_normals:
        return scene
    return dataclasses.replace(
        scene,
        seg=scene.seg if keep_seg else np.full_like(scene.seg, IGNORE_INDEX),
        depth=scene.depth if keep_depth else np.zeros_like(scene.depth),
        normals=scene.normals if keep_normals else np.zeros_like(scene.normals),
    )


def _ground_normal(rng: np.random.Generator, config: SceneConfig) -> np.ndarray:
    """Return the world 'down' direction in the camera frame (x right, y down, z forward)."""
    pitch = rng.uniform(*config.pitch)  # by default the horizon lies between 38% and 17% of the height
    roll = math.radians(rng.uniform(-config.max_roll_deg, config.max_roll_deg))
    return np.array([-math.sin(roll) * math.cos(pitch), math.cos(roll) * math.cos(pitch), math.sin(pitch)])


def _ground_depth(u: np.ndarray, v: np.ndarray, down: np.ndarray, max_depth: float) -> tuple[np.ndarray, np.ndarray]:
    """Depth of the ground plane (distance ``_CAMERA_HEIGHT`` below the camera) per pixel."""
    # A ray (u, v, 1) meets the plane {P : down . P = h} at z = h / (down . ray).
    denom = down[0] * u[None, :] + down[1] * v[:, None] + down[2]
    is_ground = denom > _CAMERA_HEIGHT / max_depth
    depth = np.full(denom.shape, max_depth)
    depth[is_ground] = _CAMERA_HEIGHT / denom[is_ground]
    return depth, is_ground


def _background(
    rng: np.random.Generator,
    config: SceneConfig,
    u: np.ndarray,
    v: np.ndarray,
    depth: np.ndarray,
    is_ground: np.ndarray,
) -> np.ndarray:
    """Albedo ``[3, H, W]`` of sky (vertical gradient) and ground (perspective checkerboard)."""
    sky_top = np.array([0.30, 0.50, 0.85]) + rng.uniform(-0.08, 0.08, 3)
    sky_low = np.array([0.80, 0.85, 0.92]) + rng.uniform(-0.05, 0.05, 3)
    t = np.clip(v + 0.5, 0, 1)[None, :, None]
    sky = sky_top[:, None, None] * (1 - t) + sky_low[:, None, None] * t
    ground_colour = np.array([0.45, 0.38, 0.28]) + rng.uniform(-0.12, 0.12, 3)
    # A checkerboard painted on the ground; its contrast fades with distance
    # to limit aliasing, and its perspective is a depth cue.
    side = rng.uniform(0.6, 1.4)
    x_world = depth * u[None, :]
    parity = (np.floor(x_world / side) + np.floor(depth / side)) % 2
    contrast = config.texture * np.exp(-depth / 8.0)
    ground = ground_colour[:, None, None] * (1 + contrast * (parity - 0.5))[None]
    return np.where(is_ground[None], ground, np.broadcast_to(sky, ground.shape)).copy()


def _draw_object(
    rng: np.random.Generator,
    config: SceneConfig,
    instance_id: int,
    down: np.ndarray,
    ground: np.ndarray,
    depth: np.ndarray,
    seg: np.ndarray,
    instance: np.ndarray,
    albedo: np.ndarray,
) -> None:
    """Draw one object into ``depth``, ``seg``, ``instance`` and ``albedo`` (z-buffered).

    ``ground`` is the depth of the empty scene; ``depth`` already holds the
    objects drawn before this one.
    """
    size = config.size
    cls = int(rng.integers(1, config.num_classes + 1))
    shape = SHAPES[cls - 1]
    # Draw every random number whatever the knobs, so that appearance knobs
    # (colour_by_class, relief_by_class, texture, shading) never move objects.
    random_relief = _RELIEFS[int(rng.integers(len(_RELIEFS)))]
    relief = _RELIEFS[(cls - 1) % len(_RELIEFS)] if config.relief_by_class else random_relief
    # Where the object touches the ground: a depth and a column; solve the row.
    contact_depth = math.exp(rng.uniform(math.log(2.0), math.log(0.4 * config.max_depth)))
    u_contact = rng.uniform(-0.5, 0.5)
    v_contact = (_CAMERA_HEIGHT / contact_depth - down[2] - down[0] * u_contact) / down[1]
    radius_px = rng.uniform(*config.object_radius) * config.focal / contact_depth
    radius_px = float(np.clip(radius_px, 0.05 * size, 0.25 * size))
    centre_col = (u_contact * config.focal) + size / 2 - 0.5
    centre_row = (v_contact * config.focal) + size / 2 - 0.5 - 0.8 * radius_px

    reach = 1.2 * radius_px  # every shape's mask lies within 1.2 radii of its centre
    r0, r1 = max(0, int(centre_row - reach)), min(size, int(centre_row + reach) + 2)
    c0, c1 = max(0, int(centre_col - reach)), min(size, int(centre_col + reach) + 2)
    angle = rng.uniform(0, 2 * math.pi)
    relief_angle = rng.uniform(0, 2 * math.pi)
    bulge = rng.uniform(0.6, 1.0)
    colour = config.colour_by_class * _PALETTE[cls - 1] + (1 - config.colour_by_class) * rng.uniform(0.1, 0.95, 3)
    colour = np.clip(colour + rng.uniform(-0.06, 0.06, 3), 0.05, 1.0)
    stripe_freq = rng.uniform(1.0, 3.0)
    stripe_dir = rng.uniform(0, math.pi)
    stripe_phase = rng.uniform(0, 2 * math.pi)
    if r0 >= r1 or c0 >= c1:
        return  # entirely outside the image (random draws above keep the stream aligned)

    rows = (np.arange(r0, r1) - centre_row)[:, None] / radius_px
    cols = (np.arange(c0, c1) - centre_col)[None, :] / radius_px
    a = cols * math.cos(angle) + rows * math.sin(angle)
    b = -cols * math.sin(angle) + rows * math.cos(angle)
    gauge = _gauge(shape, a, b)
    mask = gauge <= 1.0
    if not mask.any():
        return

    window = depth[r0:r1, c0:c1]
    if config.flat_objects:
        # Painted on the ground: only where there is ground, over earlier paint; depth stays the ground's.
        front = mask & (ground[r0:r1, c0:c1] < config.max_depth)
    else:
        # Stand in front of the ground behind the object, then bulge towards the
        # camera; the z-buffer below settles occlusion between objects.
        base = min(contact_depth, float(ground[r0:r1, c0:c1][mask].min())) * 0.995
        physical_radius = radius_px * base / config.focal
        height = config.relief_height * bulge * physical_radius
        obj_depth = base - height * _relief_profile(relief, gauge, cols, rows, relief_angle)
        front = mask & (obj_depth < window)
        window[front] = obj_depth[front]
    seg[r0:r1, c0:c1][front] = cls
    instance[r0:r1, c0:c1][front] = instance_id
    stripes = 1 + config.texture * 0.5 * np.sin(
        2 * math.pi * stripe_freq * (a * math.cos(stripe_dir) + b * math.sin(stripe_dir)) + stripe_phase
    )
    patch = albedo[:, r0:r1, c0:c1]
    patch[:, front] = (colour[:, None, None] * stripes[None])[:, front]


def _gauge(shape: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shape gauge: the shape is ``gauge <= 1``; also its normalised 'radius' for the relief."""
    if shape == "disc":
        return np.hypot(a, b)
    if shape == "square":
        return np.maximum(np.abs(a), np.abs(b)) / 0.8
    if shape == "diamond":
        return np.abs(a) + np.abs(b)
    if shape == "triangle":
        # Equilateral triangle with vertices at distance 1 (inradius 0.5).
        sides = [a * math.cos(t) + b * math.sin(t) for t in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
        return np.maximum.reduce(sides) / 0.5
    if shape == "ring":
        return np.abs(np.hypot(a, b) - 0.775) / 0.225
    if shape == "cross":
        arm = 0.3
        return np.minimum(np.maximum(np.abs(a), np.abs(b) / arm), np.maximum(np.abs(a) / arm, np.abs(b)))
    raise ConfigError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _relief_profile(relief: str, gauge: np.ndarray, cols: np.ndarray, rows: np.ndarray, angle: float) -> np.ndarray:
    """Height towards the camera, in object radii, in 0..1 inside the mask."""
    inside = np.clip(gauge, 0.0, 1.0)
    if relief == "dome":
        return np.sqrt(1.0 - inside**2)
    if relief == "pyramid":
        return 1.0 - inside
    if relief == "flat":
        return np.zeros_like(inside)
    # "tilt": a plane leaning along a random direction.
    return np.clip(0.5 + 0.4 * (cols * math.cos(angle) + rows * math.sin(angle)), 0.0, 1.0)


def _shade(
    rng: np.random.Generator,
    config: SceneConfig,
    albedo: np.ndarray,
    normals: np.ndarray,
    lit: np.ndarray,
) -> np.ndarray:
    """Lambertian shading of ``albedo`` by ``normals`` (the sky is not shaded), plus noise."""
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.3, 0.9), 1.0])
    light /= np.linalg.norm(light)
    lambert = 0.3 + 0.7 * np.clip(np.tensordot(light, normals, axes=1), 0.0, 1.0)
    factor = np.where(lit, (1 - config.shading) + config.shading * lambert, 1.0)
    image = albedo * factor[None]
    if config.pixel_noise > 0:
        image = image + rng.normal(0.0, config.pixel_noise, image.shape)
    return np.clip(image, 0.0, 1.0)


def _unrelated_field(rng: np.random.Generator, size: int, grid: int = 4) -> np.ndarray:
    """A smooth random field in (-1, 1): bilinear upsampling of a ``grid x grid`` Gaussian grid."""
    coarse = rng.normal(0.0, 1.0, (grid, grid))
    pos = np.clip((np.arange(size) + 0.5) * grid / size - 0.5, 0, grid - 1)
    lower = np.minimum(np.floor(pos).astype(int), grid - 2)
    frac = pos - lower
    interp = np.zeros((size, grid))
    interp[np.arange(size), lower] = 1 - frac
    interp[np.arange(size), lower + 1] = frac
    return np.tanh(1.5 * interp @ coarse @ interp.T)


class SceneDataset(Dataset):
    """``n`` generated scenes as a ``torch`` dataset of ``(image, {target: tensor})``.

    Args:
        n: number of samples.
        size: image size in pixels (32..256); default 64, or the preset's.
        seed: dataset seed (>= 0); sample ``i`` depends only on ``(seed, i)``.
        num_classes: object classes (1..6); default 4, or the preset's.
        preset: start from a named configuration instead of the defaults:
            ``"designed"`` is :meth:`SceneConfig.designed` (the benchmark with
            known task clusters); the other arguments override its fields.
        cache: optional directory. The whole dataset is then generated once and
            kept in ``<cache>/scenes-<hash>.npz`` (written atomically), the
            hash covering the config, ``n`` and ``seed``.
        **options: other :class:`SceneConfig` fields (difficulty knobs).

    Without a cache every ``__getitem__`` renders its sample on the fly (about a
    millisecond at 64 pixels), so nothing is held in memory.

    Raises:
        ConfigError: an unknown option or preset, a negative ``n`` or
            ``seed``, or an option outside its range (see :class:`SceneConfig`).

    Examples:
        >>> from mtgraph.data import SceneDataset
        >>> dataset = SceneDataset(4, size=32, seed=1)
        >>> image, targets = dataset[0]
        >>> len(dataset), tuple(image.shape), tuple(targets["normals"].shape), targets["seg"].dtype
        (4, (3, 32, 32), (3, 32, 32), torch.int64)
        >>> designed = SceneDataset(4, seed=2, preset="designed")
        >>> designed.config.size, sorted(designed[0][1])[-1]
        (32, 'unrelated')
        >>> SceneDataset(4, colour=0.5)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: unknown scene option(s) colour; known: size, num_classes, ...
    """

    def __init__(
        self,
        n: int,
        size: int | None = None,
        seed: int = 0,
        num_classes: int | None = None,
        *,
        preset: str | None = None,
        cache: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(SceneConfig)})
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(SceneConfig))
            raise ConfigError(f"unknown scene option(s) {', '.join(unknown)}; known: {known}")
        if size is not None:
            options["size"] = size
        if num_classes is not None:
            options["num_classes"] = num_classes
        if preset is None:
            config = SceneConfig(**options)
        elif preset == "designed":
            config = SceneConfig.designed(**options)
        else:
            raise ConfigError(f"unknown scene preset {preset!r}; known: {', '.join(PRESETS)}")
        self._init(n, config, seed, cache)

    @classmethod
    def from_config(
        cls,
        n: int,
        config: SceneConfig,
        seed: int = 0,
        cache: str | os.PathLike[str] | None = None,
    ) -> SceneDataset:
        """Build a dataset from an existing :class:`SceneConfig`.

        Examples:
            >>> from mtgraph.data import SceneConfig, SceneDataset
            >>> dataset = SceneDataset.from_config(2, SceneConfig(size=32, unrelated_strength=0.1))
            >>> "unrelated" in dataset[0][1]
            True
        """
        dataset = cls.__new__(cls)
        dataset._init(n, config, seed, cache)
        return dataset

    def _init(self, n: int, config: SceneConfig, seed: int, cache: str | os.PathLike[str] | None) -> None:
        if n < 0:
            raise ConfigError(f"number of scenes must be >= 0, got {n}")
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self.n = n
        self.config = config
        self.seed = seed
        self._arrays: dict[str, np.ndarray] | None = None
        self.cache_path: Path | None = None
        if cache is not None:
            self.cache_path = Path(cache) / f"scenes-{self._fingerprint()}.npz"
            self._arrays = self._load_or_build_cache(self.cache_path)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not -self.n <= index < self.n:
            raise IndexError(f"scene index {index} out of range for {self.n} scenes")
        index %= self.n
        scene = self.scene(index)
        targets = {name: torch.from_numpy(value) for name, value in scene.targets().items()}
        return torch.from_numpy(scene.image), targets

    def scene(self, index: int) -> Scene:
        """Return sample ``index`` as a :class:`Scene` of numpy arrays."""
        if self._arrays is None:
            return render_scene(self.config, self.seed, index)
        return _hide_labels(self.config, self._cached_scene(self._arrays, index), self.seed, index)

    def _cached_scene(self, arrays: dict[str, np.ndarray], index: int) -> Scene:
        """Sample ``index`` with every label, rebuilt from the cache's arrays."""
        seg = arrays["seg"][index].astype(np.int64)
        # Copies, so that a caller editing a sample in place cannot corrupt the cache.
        depth = arrays["depth"][index].copy()
        return Scene(
            image=arrays["image"][index].copy(),
            seg=seg,
            depth=depth,
            # Derived targets are pure functions of stored ones: recomputing
            # them gives the same bits as rendering and halves the file.
            edges=semantic_edges(seg)[None],
            normals=normals_from_depth(depth[0], self.config.focal),
            count=int(arrays["count"][index]),
            dominant=int(arrays["dominant"][index]),
            unrelated=arrays["unrelated"][index].copy() if "unrelated" in arrays else None,
        )

    def _fingerprint(self) -> str:
        description = {
            "format": _CACHE_FORMAT,
            "n": self.n,
            "seed": self.seed,
            "config": dataclasses.asdict(self.config),
        }
        text = json.dumps(description, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _load_or_build_cache(self, path: Path) -> dict[str, np.ndarray]:
        if path.exists():
            return self._read_cache(path)
        # The cache holds complete labels (edges and normals are recomputed from
        # them on reading); hidden labels are hidden again on every read.
        scenes = [_render_complete(self.config, self.seed, i) for i in range(self.n)]
        size = self.config.size
        arrays: dict[str, np.ndarray] = {
            "image": np.stack([s.image for s in scenes]) if scenes else np.zeros((0, 3, size, size), np.float32),
            "seg": np.stack([s.seg.astype(np.uint8) for s in scenes])
            if scenes
            else np.zeros((0, size, size), np.uint8),
            "depth": np.stack([s.depth for s in scenes]) if scenes else np.zeros((0, 1, size, size), np.float32),
            "count": np.array([s.count for s in scenes], dtype=np.int64),
            "dominant": np.array([s.dominant for s in scenes], dtype=np.int64),
        }
        if self.config.unrelated_strength > 0:
            arrays["unrelated"] = (
                np.stack([s.unrelated for s in scenes if s.unrelated is not None]) if scenes else np.zeros((0, 1, size, size), np.float32)
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file in the same folder, then rename: a reader
        # never sees a half-written cache, even if this process is killed.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return arrays

    def _read_cache(self, path: Path) -> dict[str, np.ndarray]:
        size = self.config.size
        expected = {
            "image": (self.n, 3, size, size),
            "seg": (self.n, size, size),
            "depth": (self.n, 1, size, size),
            "count": (self.n,),
            "dominant": (self.n,),
        }
        if self.config.unrelated_strength > 0:
            expected["unrelated"] = (self.n, 1, size, size)
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in expected}
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"scene cache {path} is unreadable or incomplete ({exc}); delete it to regenerate") from exc
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise DataError(
                    f"scene cache {path}: array {name!r} has shape {arrays[name].shape}, "
                    f"expected {shape}; delete it to regenerate"
                )
        return arrays
