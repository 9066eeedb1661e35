"""A JSON description of how to rebuild an architecture's modules: backbone, input and task heads.

The command line writes ``model.json`` next to a saved architecture so that
``mtgraph cost|export|render ARCH`` can rebuild the modules the weights load
into. Reading it never runs code named by the file unless the caller allows
it: a backbone recorded as a user's ``package.module:factory`` is only
imported when the user names it again on the command line (``--model``).
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtgraph.errors import CheckpointError, ConfigError
from mtgraph.frontend.backbone import Backbone, trace
from mtgraph.persist import atomic_write_bytes
from mtgraph.tasks import Task, autoencoder, classification, depth, edges, normals, segmentation
from mtgraph.zoo import BUILTIN_MODELS, BUILTIN_WIDTHS, load_weights, resolve_model, scaled_model

__all__ = ["TaskSpec", "ModelSpec", "SPEC_FILE", "TASK_KINDS", "spec_of"]

SPEC_FILE = "model.json"
#: Larger model.json files are refused unread.
MAX_SPEC_BYTES = 1024 * 1024

#: Task kinds a spec can name, each with the keyword arguments it accepts.
TASK_KINDS: dict[str, tuple[str, ...]] = {
    "segmentation": ("num_classes",),
    "depth": (),
    "edges": (),
    "normals": (),
    "autoencoder": (),
    "classification": ("num_classes", "target"),
    # A task of the designed scene preset (mtgraph.data.designed_tasks), rebuilt exactly: its segmentation class
    # weights and hidden-label handling come from the preset; ``scene`` holds SceneConfig.designed overrides.
    "designed": ("scene", "hidden"),
}


@dataclass(frozen=True)
class TaskSpec:
    """One task: its output name, its kind (a key of TASK_KINDS) and the kind's options.

    Attributes:
        name: the task's output name.
        kind: one of ``TASK_KINDS`` (``segmentation``, ``depth``, ...).
        options: the kind's keyword arguments, such as ``num_classes``.

    Examples:
        >>> from mtgraph.spec import TaskSpec
        >>> task = TaskSpec("seg", "segmentation", {"num_classes": 3}).build()
        >>> task.name, task.primary
        ('seg', 'miou')
        >>> TaskSpec("seg", "segmentation", {"classes": 3}).build()
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: task 'seg' (segmentation): unknown options ['classes']; allowed: ['num_classes']
        >>> TaskSpec("unrelated", "designed", {"scene": {"size": 32}}).build().primary  # the designed preset's task
        'mse'
    """

    name: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Task:
        """The :class:`~mtgraph.tasks.Task` this spec describes.

        Raises:
            ConfigError: the kind is unknown or an option is not one the kind accepts.
        """
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"task {self.name!r}: unknown kind {self.kind!r}; known kinds: {', '.join(TASK_KINDS)}")
        unknown = sorted(set(self.options) - set(TASK_KINDS[self.kind]))
        if unknown:
            raise ConfigError(f"task {self.name!r} ({self.kind}): unknown options {unknown}; allowed: {list(TASK_KINDS[self.kind])}")
        opts = dict(self.options)
        if self.kind == "designed":
            return _designed_task(self.name, opts)
        if self.kind == "segmentation":
            return segmentation(int(opts.get("num_classes", 2)), name=self.name)
        if self.kind == "classification":
            return classification(int(opts.get("num_classes", 2)), name=self.name, target=str(opts.get("target", "dominant")))
        factory = {"depth": depth, "edges": edges, "normals": normals, "autoencoder": autoencoder}[self.kind]
        return factory(name=self.name)


def _designed_task(name: str, options: Mapping[str, Any]) -> Task:
    from mtgraph.data.scenes import DESIGNED_TASKS, SceneConfig, designed_tasks

    if name not in DESIGNED_TASKS:
        raise ConfigError(f"task {name!r} (designed): the designed preset's tasks are {list(DESIGNED_TASKS)}")
    scene = options.get("scene", {})
    if not isinstance(scene, Mapping):
        raise ConfigError(f"task {name!r} (designed): 'scene' must map SceneConfig fields to values, got {scene!r}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in scene.items()}  # JSON gives lists for tuples
    return designed_tasks(SceneConfig.designed(**fields), hidden=int(options.get("hidden", 8)))[name]


@dataclass(frozen=True)
class ModelSpec:
    """Backbone spec (see :func:`mtgraph.zoo.resolve_model`), input shape (C, H, W), cuts and tasks.

    Attributes:
        backbone: the model spec given to :func:`mtgraph.zoo.resolve_model`.
        input_shape: shape of one input image, without the batch dimension.
        tasks: the tasks, in output order.
        cuts: the ``cuts`` argument of :func:`mtgraph.trace`.
        seed: seed of the backbone's (and, plus one, the heads') random weights.
        width: multiplier of the built-in backbone's widths (1: as built in;
            see :meth:`rescaled`).

    Examples:
        >>> import json
        >>> from mtgraph.spec import ModelSpec, TaskSpec
        >>> spec = ModelSpec("resnet_tiny_w4", (3, 16, 16), (TaskSpec("seg", "segmentation"), TaskSpec("depth", "depth")))
        >>> list(spec.build_tasks())
        ['seg', 'depth']
        >>> json.loads(spec.to_json())["input_shape"], ModelSpec.from_json(spec.to_json()) == spec
        ([3, 16, 16], True)
        >>> ModelSpec.from_json("{}", origin="run/model.json")
        Traceback (most recent call last):
        ...
        mtgraph.errors.CheckpointError: run/model.json is malformed (KeyError: 'tasks')
    """

    backbone: str
    input_shape: tuple[int, ...]
    tasks: tuple[TaskSpec, ...]
    cuts: str = "auto"
    seed: int = 0
    width: float = 1.0

    def build_backbone(self, weights: str | os.PathLike[str] | None = None) -> Backbone:
        """Build the backbone model with the spec's seed (or pretrained ``weights``) and trace it.

        The backbone is remembered as built from this spec (:func:`spec_of`),
        so :func:`mtgraph.save` records the spec as its factory (a saved
        architecture's weights file holds every weight, so reopening it does
        not need ``weights``).

        Args:
            weights: a local weight file for the model (see
                :func:`mtgraph.zoo.load_weights`); None: random weights.
        """
        torch.manual_seed(self.seed)
        if self.width == 1.0:
            model = resolve_model(self.backbone, weights=weights)
        else:
            model = scaled_model(self.backbone, self.width)
            if weights is not None:
                load_weights(model, weights)
        backbone = trace(model, torch.zeros((1, *self.input_shape)), cuts=self.cuts)
        _BUILT[backbone] = self
        return backbone

    @property
    def rescalable(self) -> bool:
        """Whether the backbone can be rebuilt at another width (the built-in ``resnet_tiny`` models)."""
        return self.backbone in BUILTIN_WIDTHS

    def rescaled(self, multiplier: float) -> tuple[Backbone, dict[str, nn.Module]]:
        """The backbone and heads at ``multiplier`` times the backbone's widths: a :data:`mtgraph.problem.Rescale`.

        Built like :meth:`build_backbone` and :meth:`build_heads` (same seeds),
        so ``multiplier = 1`` gives the same weights. A bound method of a
        spec pickles, so a Problem built from a spec crosses process boundaries
        with its ``rescale``.

        Raises:
            ConfigError: the backbone is not a built-in model (see :func:`mtgraph.zoo.scaled_model`),
                or ``multiplier`` is not a number > 0.

        Examples:
            >>> import torch
            >>> from mtgraph.spec import ModelSpec, TaskSpec
            >>> spec = ModelSpec("resnet_tiny_w4", (3, 32, 32), (TaskSpec("depth", "depth"),))
            >>> backbone, heads = spec.rescaled(2.0)
            >>> backbone.output_shape[0], list(heads)
            (64, ['depth'])
            >>> same, _ = spec.rescaled(1.0)
            >>> original = spec.build_backbone()
            >>> all(torch.equal(a, b) for a, b in zip(same.blocks[0].module.parameters(), original.blocks[0].module.parameters()))
            True
        """
        scaled_model(self.backbone, multiplier)  # checks the model and the multiplier (ConfigError) before seeding
        spec = replace(self, width=float(self.width * multiplier))
        backbone = spec.build_backbone()
        return backbone, spec.build_heads(backbone, spec.build_tasks())

    def build_tasks(self) -> dict[str, Task]:
        """The tasks, by name, in spec order."""
        return {t.name: t.build() for t in self.tasks}

    def build_heads(self, backbone: Backbone, tasks: Mapping[str, Task]) -> dict[str, nn.Module]:
        """Fresh heads for ``tasks`` reading ``backbone``'s output, seeded for reproducibility."""
        torch.manual_seed(self.seed + 1)
        channels = backbone.output_shape[0]
        size = (int(self.input_shape[-2]), int(self.input_shape[-1]))
        return {name: task.make_head(channels, size) for name, task in tasks.items()}

    def to_json(self) -> str:
        """The spec as JSON text."""
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        if self.width == 1.0:
            del data["width"]  # files of unscaled models stay as they were before widths were recorded
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, origin: str = "model.json") -> ModelSpec:
        """Parse :meth:`to_json` output; raise CheckpointError naming the file when it is malformed.

        Raises:
            CheckpointError: ``text`` is not JSON or lacks a field or has a
                field of the wrong type; the message names ``origin``.
        """
        try:
            data = json.loads(text)
            tasks = tuple(TaskSpec(str(t["name"]), str(t["kind"]), dict(t.get("options", {}))) for t in data["tasks"])
            return cls(
                backbone=str(data["backbone"]),
                input_shape=tuple(int(d) for d in data["input_shape"]),
                tasks=tasks,
                cuts=str(data.get("cuts", "auto")),
                seed=int(data.get("seed", 0)),
                width=float(data.get("width", 1.0)),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{origin} is malformed ({type(exc).__name__}: {exc})") from exc

    def save(self, folder: str | Path) -> Path:
        """Write ``model.json`` into ``folder`` atomically."""
        path = Path(folder) / SPEC_FILE
        atomic_write_bytes(path, self.to_json().encode())
        return path

    @classmethod
    def load(cls, folder: str | Path, *, model_override: str | None = None) -> ModelSpec:
        """Read ``folder/model.json``.

        A recorded backbone that is not built in (or from torchvision/timm)
        is a user factory: it is refused unless ``model_override`` names the
        factory to use, so that a file cannot make mtgraph import arbitrary code.

        Raises:
            CheckpointError: the file is missing, too large, unreadable or malformed.
            ConfigError: the file names a user factory and ``model_override`` is None.
        """
        path = Path(folder) / SPEC_FILE
        if not path.is_file():
            raise CheckpointError(f"{str(path)!r} does not exist; it records the backbone and tasks of "
                                  "an architecture folder written by 'mtgraph learn' or 'mtgraph demo'")
        try:
            # A model.json is a few hundred bytes: refuse a huge file before reading it into memory.
            if path.stat().st_size > MAX_SPEC_BYTES:
                raise CheckpointError(f"{str(path)!r} is {path.stat().st_size} bytes, over the limit of {MAX_SPEC_BYTES}")
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:
            raise CheckpointError(f"{str(path)!r} cannot be read as UTF-8 JSON ({type(exc).__name__}: {exc})") from exc
        spec = cls.from_json(text, origin=str(path))
        if model_override is not None:
            return replace(spec, backbone=model_override)
        safe = spec.backbone in BUILTIN_MODELS or spec.backbone.split(":", 1)[0] in ("torchvision", "timm")
        if not safe:
            raise ConfigError(
                f"{str(path)} names the model factory {spec.backbone!r}; mtgraph does not import code named by a file. "
                f"Pass --model {spec.backbone} to confirm you trust it"
            )
        return spec


#: Backbones built by :meth:`ModelSpec.build_backbone`, each with its spec (weakly: an entry goes with its backbone).
_BUILT: weakref.WeakKeyDictionary[Backbone, ModelSpec] = weakref.WeakKeyDictionary()


def spec_of(backbone: Backbone) -> ModelSpec | None:
    """The spec ``backbone`` was built from by :meth:`ModelSpec.build_backbone` (None: traced otherwise).

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> from mtgraph.spec import ModelSpec, TaskSpec, spec_of
        >>> spec = ModelSpec("resnet_tiny_w4", (3, 16, 16), (TaskSpec("depth", "depth"),))
        >>> spec_of(spec.build_backbone()) == spec
        True
        >>> spec_of(mtgraph.trace(nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 8, 8))) is None
        True
    """
    return _BUILT.get(backbone)
