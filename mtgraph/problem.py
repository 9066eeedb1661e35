"""The problem every strategy solves: one validated, frozen :class:`Problem`.

A :class:`Problem` gathers what a structural-learning strategy needs (the
traced backbone, a head per task, the tasks, the training and validation data,
the device and the seed) and checks it once, with the typed errors a user sees
whichever strategy they call. Strategies read it and never re-validate.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtgraph.errors import ConfigError, DataError
from mtgraph.frontend.backbone import Backbone
from mtgraph.tasks.task import Task

__all__ = ["Problem", "Rescale", "ReferenceCosts", "toy_problem", "TOY_TASKS"]

#: ``width multiplier -> (backbone, heads)``: the problem's backbone and heads rebuilt at another width
#: (1.0 gives the problem's own shapes). The evaluation protocol uses it for the One-Net width-matched to a
#: learned architecture's GMac; it must be picklable (a module-level function or a ``functools.partial``).
Rescale = Callable[[float], "tuple[Backbone, Mapping[str, nn.Module]]"]


@dataclass(frozen=True)
class ReferenceCosts:
    """GMac and parameters of the problem's two trivial architectures, single-task networks and One-Net.

    Examples:
        >>> from mtgraph.problem import ReferenceCosts
        >>> ReferenceCosts(stn_gmac=2.0, stn_params=200, one_net_gmac=1.1, one_net_params=110).one_net_gmac
        1.1
    """

    stn_gmac: float
    stn_params: int
    one_net_gmac: float
    one_net_params: int


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Problem:
    """A multi-task learning problem: backbone, heads, tasks, data, device and seed, validated once.

    Build it with :meth:`create` (which traces a plain module and builds
    missing heads from the tasks' factories) or directly from a traced
    backbone; either way the fields are checked at construction.

    Attributes:
        backbone: the traced backbone (:func:`mtgraph.trace`).
        heads: task name -> head module, one per task (strategies copy them).
        tasks: task name -> :class:`~mtgraph.tasks.Task` (2 or more for
            structural learning; every strategy checks its own minimum).
        train_data: a map-style dataset of ``(image, {target: tensor})``, or a
            DataLoader over one.
        val_data: the validation data (same form), or None.
        device: where strategies train (None: :func:`mtgraph.train.fit`'s choice).
        seed: seeds every random choice of a strategy run.
        rescale: optional :data:`Rescale`, the backbone and heads at another
            width (needed only for width-matched baselines).

    Raises:
        ConfigError: a field of the wrong type, no head for a task, a head
            for an unknown task, an empty task mapping, a negative seed.
        DataError: empty training or validation data.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        >>> tasks = {"seg": T.segmentation(3, hidden=4), "depth": T.depth(hidden=4)}
        >>> problem = mtgraph.Problem.create(model, tasks, SceneDataset(4, size=32, seed=0, num_classes=2))
        >>> problem.task_names, problem.backbone.num_blocks, sorted(problem.heads)
        (('seg', 'depth'), 2, ['depth', 'seg'])
        >>> mtgraph.Problem(problem.backbone, {"seg": nn.Identity()}, tasks, problem.train_data)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: no head for tasks ['depth']; heads were given for ['seg']
    """

    backbone: Backbone
    heads: Mapping[str, nn.Module]
    tasks: Mapping[str, Task]
    train_data: Dataset | DataLoader
    val_data: Dataset | DataLoader | None = None
    device: torch.device | None = None
    seed: int = 0
    rescale: Rescale | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, Backbone):
            raise ConfigError(
                f"backbone must be a traced mtgraph.Backbone, got {type(self.backbone).__name__}; "
                "trace it first: mtgraph.trace(model, example_input), or use Problem.create(model, ...)"
            )
        if not isinstance(self.tasks, Mapping) or not self.tasks:
            raise ConfigError("tasks must be a non-empty mapping task name -> mtgraph.tasks.Task")
        for name, task in self.tasks.items():
            if not isinstance(task, Task):
                raise ConfigError(f"tasks[{name!r}] must be an mtgraph.tasks.Task, got {type(task).__name__}")
        if not isinstance(self.heads, Mapping):
            raise ConfigError(f"heads must be a mapping task name -> nn.Module, got {type(self.heads).__name__}")
        missing = [t for t in self.tasks if t not in self.heads]
        if missing:
            raise ConfigError(f"no head for tasks {missing}; heads were given for {list(self.heads)}")
        extra = [t for t in self.heads if t not in self.tasks]
        if extra:
            raise ConfigError(f"heads were given for tasks {extra} that are not in tasks {list(self.tasks)}")
        for name in self.tasks:
            if not isinstance(self.heads[name], nn.Module):
                raise ConfigError(f"the head of task {name!r} must be an nn.Module, got {type(self.heads[name]).__name__}")
        _check_data(self.train_data, "train_data")
        if self.val_data is not None:
            _check_data(self.val_data, "val_data")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.device is not None:
            object.__setattr__(self, "device", _device(self.device))
        if self.rescale is not None and not callable(self.rescale):
            raise ConfigError(f"rescale must be a callable width -> (backbone, heads), got {type(self.rescale).__name__}")
        # Read-only views in task order: the value cannot be changed behind a strategy's back.
        object.__setattr__(self, "tasks", _frozen(self.tasks))
        object.__setattr__(self, "heads", _frozen({t: self.heads[t] for t in self.tasks}))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Mapping views cannot be pickled; rebuild from plain dicts so a Problem crosses process boundaries.
        fields = [getattr(self, f.name) for f in dataclasses.fields(self)]
        fields[1], fields[2] = dict(self.heads), dict(self.tasks)
        return (Problem, tuple(fields))

    @classmethod
    def create(
        cls,
        backbone: Backbone | nn.Module,
        tasks: Mapping[str, Task] | Sequence[Task],
        train_data: Dataset | DataLoader,
        *,
        heads: Mapping[str, nn.Module] | None = None,
        val_data: Dataset | DataLoader | None = None,
        device: str | torch.device | None = None,
        seed: int = 0,
        rescale: Rescale | None = None,
    ) -> Problem:
        """A validated Problem; traces a plain module and builds missing heads.

        Args:
            backbone: a traced :class:`~mtgraph.Backbone`, or an ``nn.Module``
                to trace (``cuts="auto"``) on the first training image.
            tasks: task name -> Task, or a sequence of Tasks (keyed by their names).
            train_data: map-style dataset (or a DataLoader over one).
            heads: task -> head; None builds each task's head with its
                factory for the backbone's output (``task.make_head``), for
                a backbone returning one tensor.
            val_data: validation data, or None.
            device: where strategies train (None: ``fit``'s choice).
            seed: the run's seed.
            rescale: the backbone and heads at another width (see :data:`Rescale`).

        Returns:
            The Problem.

        Raises:
            ConfigError: see :class:`Problem`; also a backbone that is neither, or
                no heads for a backbone returning several tensors.
            DataError: empty data.
            TraceError: the module cannot be traced.

        Examples:
            >>> import torch
            >>> from torch import nn
            >>> import mtgraph
            >>> from mtgraph import tasks as T
            >>> from mtgraph.data import SceneDataset
            >>> data = SceneDataset(4, size=32, seed=0, num_classes=2)
            >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            >>> problem = mtgraph.Problem.create(model, [T.depth(hidden=4), T.edges(hidden=4)], data, seed=3)
            >>> problem.task_names, problem.seed
            (('depth', 'edges'), 3)
            >>> mtgraph.Problem.create("resnet18", [T.depth()], data)
            Traceback (most recent call last):
            ...
            mtgraph.errors.ConfigError: backbone must be a traced mtgraph.Backbone or an nn.Module, got str
        """
        task_map = _task_map(tasks)
        _check_data(train_data, "train_data")
        traced = _traced(backbone, train_data)
        if heads is None:
            if traced.output_arity > 1:  # which tensor a task's head reads is the user's choice
                raise ConfigError(
                    f"the backbone returns {traced.output_arity} tensors {list(traced.output_members)}; give heads= "
                    "reading the tuple, or one tensor each: backbone.member_head(name, task.make_head(channels, size))"
                )
            height, width = traced.input_shape[-2:]
            heads = {name: task.make_head(traced.output_shape[0], (height, width)) for name, task in task_map.items()}
        return cls(traced, heads, task_map, train_data, val_data, _device(device) if device is not None else None,
                   seed, rescale)

    @property
    def task_names(self) -> tuple[str, ...]:
        """The task names, in order."""
        return tuple(self.tasks)

    @property
    def train_dataset(self) -> Dataset:
        """The training data as a map-style dataset (a DataLoader's dataset)."""
        return self.train_data.dataset if isinstance(self.train_data, DataLoader) else self.train_data

    def with_seed(self, seed: int) -> Problem:
        """The same problem with another seed (the evaluation protocol's runs differ only by it).

        Examples:
            >>> import torch
            >>> from torch import nn
            >>> import mtgraph
            >>> from mtgraph import tasks as T
            >>> from mtgraph.data import SceneDataset
            >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            >>> problem = mtgraph.Problem.create(model, [T.depth(hidden=4)], SceneDataset(4, size=32, seed=0))
            >>> problem.with_seed(2).seed, problem.seed
            (2, 0)
        """
        copy = dataclasses.replace(self, seed=seed)
        if "reference_costs" in self.__dict__:  # the seed does not change them: keep the cached costs
            copy.__dict__["reference_costs"] = self.__dict__["reference_costs"]
        return copy

    @functools.cached_property
    def reference_costs(self) -> ReferenceCosts:
        """The cost of the single-task networks and of One-Net (computed once per Problem)."""
        from mtgraph.analysis.cost import cost
        from mtgraph.ir.builders import one_net, stn
        from mtgraph.params import ParamStore

        reports = {}
        for label, build in (("stn", stn), ("one_net", one_net)):
            graph = build(self.backbone.num_blocks, self.task_names)
            reports[label] = cost(graph, ParamStore.create(graph, self.backbone, self.heads))
        return ReferenceCosts(
            stn_gmac=reports["stn"].gmac,
            stn_params=reports["stn"].total_params,
            one_net_gmac=reports["one_net"].gmac,
            one_net_params=reports["one_net"].total_params,
        )


def _task_map(tasks: Any) -> dict[str, Task]:
    if isinstance(tasks, Mapping):
        return dict(tasks)
    if isinstance(tasks, (list, tuple)) and all(isinstance(t, Task) for t in tasks):
        names = [t.name for t in tasks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"task names must be unique, got {repeated} more than once")
        return {t.name: t for t in tasks}
    raise ConfigError(f"tasks must be a mapping task name -> Task or a sequence of Tasks, got {type(tasks).__name__}")


def _check_data(data: Any, what: str) -> None:
    if not isinstance(data, (Dataset, DataLoader)):
        raise ConfigError(f"{what} must be a map-style torch Dataset or a DataLoader, got {type(data).__name__}")
    dataset = data.dataset if isinstance(data, DataLoader) else data
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(f"{what} must have a length (a map-style dataset)") from None
    if size == 0:
        raise DataError(f"{what} is empty")


def _traced(backbone: Any, data: Dataset | DataLoader) -> Backbone:
    if isinstance(backbone, Backbone):
        return backbone
    if isinstance(backbone, nn.Module):
        from mtgraph.frontend.backbone import trace

        dataset = data.dataset if isinstance(data, DataLoader) else data
        image = dataset[0][0]
        return trace(backbone, image.unsqueeze(0))
    raise ConfigError(f"backbone must be a traced mtgraph.Backbone or an nn.Module, got {type(backbone).__name__}")


def _device(device: Any) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must name a torch device such as 'cpu' or 'cuda:0', got {device!r}") from exc


#: The task names :func:`toy_problem` knows (the generated scenes' dense targets).
TOY_TASKS = ("seg", "depth", "edges", "normals", "autoencoder")


def toy_problem(
    tasks: Sequence[str] = ("seg", "depth"), *, blocks: int = 2, width: int = 4, size: int = 32, samples: int = 4,
    seed: int = 0,
) -> Problem:
    """A tiny Problem for examples and quick checks: a conv net of ``blocks`` blocks on generated scenes.

    Each block is a 3x3 convolution (``width`` channels) and a ReLU; the tasks
    are the scenes' dense targets with small heads; seg has 3 classes.

    Args:
        tasks: names from :data:`TOY_TASKS`.
        blocks: backbone blocks (>= 1).
        width: channels of every block.
        size: image size in pixels.
        samples: training images (the validation set has as many, another seed).
        seed: seeds the weights, the scenes and the Problem.

    Returns:
        The Problem.

    Raises:
        ConfigError: an unknown task name or a non-positive size.

    Examples:
        >>> from mtgraph.problem import toy_problem
        >>> problem = toy_problem(("seg", "depth", "edges"), blocks=3)
        >>> problem.task_names, problem.backbone.num_blocks, len(problem.train_data)
        (('seg', 'depth', 'edges'), 3, 4)
    """
    from mtgraph import tasks as T
    from mtgraph.data import SceneDataset

    unknown = [t for t in tasks if t not in TOY_TASKS]
    if unknown:
        raise ConfigError(f"toy_problem knows the tasks {list(TOY_TASKS)}, got {unknown}")
    for name, value in (("blocks", blocks), ("width", width), ("size", size), ("samples", samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"toy_problem: {name} must be an int >= 1, got {value!r}")
    factories = {
        "seg": lambda: T.segmentation(3, hidden=width), "depth": lambda: T.depth(hidden=width),
        "edges": lambda: T.edges(hidden=width), "normals": lambda: T.normals(hidden=width),
        "autoencoder": lambda: T.autoencoder(hidden=width),
    }
    torch.manual_seed(seed)
    model = nn.Sequential(*[
        nn.Sequential(nn.Conv2d(3 if b == 0 else width, width, 3, padding=1), nn.ReLU()) for b in range(blocks)
    ])
    train = SceneDataset(samples, size=size, seed=seed, num_classes=2)
    val = SceneDataset(samples, size=size, seed=seed + 10_000, num_classes=2)
    return Problem.create(model, [factories[t]() for t in tasks], train, val_data=val, seed=seed)
