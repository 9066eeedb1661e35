"""The one training loop every strategy uses: :func:`fit`.

``fit`` trains a graph and its params on several tasks. Per step it computes
every task's loss on one batch, weights them (mean over tasks by default),
adds the hooks' loss terms, and steps the optimizer of the current
:class:`OptimizerGroup`. Groups take turns: with one group an epoch is one
pass over the data; with several (AdaShare's weights on one data split, then
policy logits on another) an epoch is one *cycle* in which each group takes
``steps`` steps (default: one pass over its data) with its own optimizer,
scheduler and data stream.

Determinism: the order of every epoch is a permutation drawn from
``(seed, stream, epoch)``; RNG states, optimizer and scheduler states, stream
positions and hook states are checkpointed, so a run killed at any point and
resumed from its last checkpoint ends with bit-identical weights on CPU.

Under ``torchrun`` the same call trains data-parallel (see
:mod:`mtgraph.train.distributed`): the batch size is the *global* batch, each
rank reads its slice, rank 0 alone logs and writes checkpoints.
"""

from __future__ import annotations

import functools
import math
import os
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler

from mtgraph.compile import compile
from mtgraph.errors import CheckpointError, ConfigError, TrainError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Gate, Skip
from mtgraph.options import check_flag
from mtgraph.params import ParamStore
from mtgraph.passes import remap_optimizer
from mtgraph.train.checkpoint import (
    Checkpoint,
    CheckpointConfig,
    checkpoint_path,
    flatten_state,
    latest_checkpoint,
    list_checkpoints,
    resume_checkpoint,
    weights_state,
    write_checkpoint,
)
from mtgraph.train.distributed import (
    DistContext,
    all_reduce_mean,
    barrier,
    epoch_batches,
    epoch_seed,
    init_distributed,
    wrap_module,
)
from mtgraph.train.evaluate import MetricsTable, check_tasks, evaluate_module, task_targets
from mtgraph.train.hooks import Hook, Rewrite, TrainState, as_lineage
from mtgraph.train.session import session_arguments

if TYPE_CHECKING:
    from mtgraph.tasks import Task

__all__ = ["fit", "FitResult", "History", "OptimizerGroup", "OptimizerFactory", "SchedulerFactory", "adam", "sgd"]

#: Builds an optimizer from ``[(name, parameter), ...]`` (torch optimizers accept that list as it is).
OptimizerFactory = Callable[[list[tuple[str, nn.Parameter]]], torch.optim.Optimizer]
#: Builds an LR scheduler for an optimizer; it is stepped after every step of its group.
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def adam(lr: float = 1e-3, **options: Any) -> OptimizerFactory:
    """A factory of ``torch.optim.Adam(params, lr=lr, **options)`` (the default optimizer).

    Examples:
        >>> import torch
        >>> from mtgraph.train import adam
        >>> optimizer = adam(lr=0.01, weight_decay=1e-4)([torch.nn.Parameter(torch.zeros(2))])
        >>> type(optimizer).__name__, optimizer.defaults["lr"], optimizer.defaults["weight_decay"]
        ('Adam', 0.01, 0.0001)
    """
    return functools.partial(torch.optim.Adam, lr=lr, **options)


def sgd(lr: float, momentum: float = 0.9, **options: Any) -> OptimizerFactory:
    """A factory of ``torch.optim.SGD(params, lr=lr, momentum=momentum, **options)``.

    Examples:
        >>> import torch
        >>> from mtgraph.train import sgd
        >>> optimizer = sgd(0.1)([torch.nn.Parameter(torch.zeros(2))])
        >>> type(optimizer).__name__, optimizer.defaults["momentum"]
        ('SGD', 0.9)
    """
    return functools.partial(torch.optim.SGD, lr=lr, momentum=momentum, **options)


@dataclass(frozen=True)
class OptimizerGroup:
    """Parameters trained together, by one optimizer, on one data stream, in turns with the other groups.

    Attributes:
        name: label in histories and checkpoints.
        select: ``(weight_key, module) -> bool`` picks this group's weight
            keys; groups are asked in order and the first that says yes owns
            the key. None: every key no other group selects (at most one
            group may leave it None). Keys nobody owns are frozen.
        optimizer: optimizer factory (default Adam, lr 1e-3).
        scheduler: optional LR-scheduler factory, stepped after each of this group's steps.
        data: this group's own Dataset or DataLoader (None: the data given to ``fit``).
        batch_size: global batch size when ``data`` is a Dataset (None: ``fit``'s).
        steps: steps per turn (None: one pass over its data).

    Examples:
        Train the heads with SGD and everything else with Adam, taking turns
        (pass both as ``fit(..., groups=[heads, rest])``):

        >>> from mtgraph.train import OptimizerGroup, adam, sgd
        >>> heads = OptimizerGroup("heads", select=lambda key, module: key.startswith("head."), optimizer=sgd(0.1))
        >>> rest = OptimizerGroup("backbone", optimizer=adam(1e-3), steps=4)
        >>> heads.select("head.seg", None), heads.select("b0.shared", None), rest.select is None
        (True, False, True)
    """

    name: str
    select: Callable[[str, nn.Module], bool] | None = None
    optimizer: OptimizerFactory = field(default_factory=adam)
    scheduler: SchedulerFactory | None = None
    data: DataLoader | Dataset | None = None
    batch_size: int | None = None
    steps: int | None = None


@dataclass
class History:
    """What happened during training.

    Attributes:
        losses: task -> loss at every step (mean over the global batch).
        extra: hook name -> its loss term at every step (None where it gave none).
        total: the optimised loss at every step.
        groups: the optimizer group of every step.
        epochs: one record per finished epoch: ``epoch``, ``step`` (steps done
            at its end), ``loss`` (task -> mean over its steps), ``metrics``
            (task -> metric -> value, when evaluation data was given) and
            ``rewrites`` (notes of the rewrites applied at its end).

    Examples:
        >>> from mtgraph.train import History
        >>> history = History()
        >>> history.record_step("train", {"seg": 1.0}, {}, 1.0)
        >>> history.record_step("train", {"seg": 0.5}, {}, 0.5)
        >>> history.mean_losses(0), history.total
        ({'seg': 0.75}, [1.0, 0.5])
        >>> History.from_state(history.to_state()) == history
        True
    """

    losses: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, list[float | None]] = field(default_factory=dict)
    total: list[float] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)

    def record_step(self, group: str, losses: Mapping[str, float], extra: Mapping[str, float], total: float) -> None:
        """Append one step."""
        done = len(self.total)
        for task, value in losses.items():
            self.losses.setdefault(task, [math.nan] * done).append(value)
        for name in extra:
            self.extra.setdefault(name, [None] * done)
        for name, values in self.extra.items():
            values.append(extra.get(name))
        self.total.append(total)
        self.groups.append(group)

    def mean_losses(self, start: int) -> dict[str, float]:
        """Each task's mean loss over the steps from ``start`` on."""
        return {t: (sum(v[start:]) / len(v[start:]) if v[start:] else math.nan) for t, v in self.losses.items()}

    def to_state(self) -> dict[str, Any]:
        """A JSON-compatible copy (for checkpoints)."""
        return {"losses": self.losses, "extra": self.extra, "total": self.total, "groups": self.groups, "epochs": self.epochs}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> History:
        """Rebuild from :meth:`to_state` output."""
        return cls(
            losses={k: list(v) for k, v in state["losses"].items()},
            extra={k: list(v) for k, v in state["extra"].items()},
            total=list(state["total"]),
            groups=list(state["groups"]),
            epochs=[dict(e) for e in state["epochs"]],
        )


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        graph: the final graph (rewrites included).
        params: its trained weights.
        history: per-step losses and per-epoch records.
        step: optimizer steps done.
        epoch: epochs completed.
        metrics: the last evaluation (None without evaluation data).
        checkpoint: the final checkpoint file (None without checkpointing).
        resumed: True if training continued from a checkpoint.

    Examples:
        >>> import torch
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.train import fit
        >>> from mtgraph.zoo import resnet_tiny
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
        >>> tasks = {"seg": T.segmentation(5, hidden=8), "depth": T.depth(hidden=8)}
        >>> heads = {n: t.make_head(backbone.output_shape[0], (32, 32)) for n, t in tasks.items()}
        >>> graph = mtgraph.one_net(backbone.num_blocks, list(tasks))
        >>> params = mtgraph.ParamStore.create(graph, backbone, heads)
        >>> data = SceneDataset(8, size=32, seed=0, num_classes=4)
        >>> result = fit(graph, params, tasks, data, steps=2, batch_size=4, progress=False)
        >>> result.step, result.epoch, result.resumed, len(result.history.total)
        (2, 1, False, 2)
        >>> result.params is params  # trained in place: no rewrite happened
        True
    """

    graph: MTGraph
    params: ParamStore
    history: History
    step: int
    epoch: int
    metrics: MetricsTable | None = None
    checkpoint: Path | None = None
    resumed: bool = False


# ---------------------------------------------------------------------------
# Data streams


_LOADER_OPTIONS = ("num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn", "multiprocessing_context")


class _Stream:
    """Batches of one dataset in a resumable, seed-determined order, sharded across ranks."""

    def __init__(self, data: DataLoader | Dataset, batch_size: int | None, seed: int, index: int, ctx: DistContext) -> None:
        options: dict[str, Any] = {}
        shuffle, drop_last = True, False
        if isinstance(data, DataLoader):
            if data.batch_size is None:
                raise ConfigError("a training DataLoader must have a batch_size (a custom batch_sampler cannot be resumed)")
            if batch_size is not None and batch_size != data.batch_size:
                raise ConfigError(f"batch_size={batch_size} contradicts the DataLoader's batch_size={data.batch_size}")
            batch_size, drop_last = data.batch_size, data.drop_last
            shuffle = not isinstance(data.sampler, SequentialSampler)
            options = {name: getattr(data, name) for name in _LOADER_OPTIONS}
            if data.num_workers > 0 and data.prefetch_factor is not None:
                options["prefetch_factor"] = data.prefetch_factor
            data = data.dataset
        if isinstance(data, IterableDataset) or not isinstance(data, Dataset):
            raise ConfigError(
                f"training data must be a map-style torch Dataset (or a DataLoader over one), got {type(data).__name__}; "
                "an iterable dataset has no order a resumed run could replay"
            )
        if batch_size is None:
            raise ConfigError("pass batch_size when the training data is a Dataset")
        self.dataset, self.batch_size, self.seed, self.index, self.ctx = data, batch_size, seed, index, ctx
        self.shuffle, self.drop_last, self.options = shuffle, drop_last, options
        try:
            self.num_samples = len(data)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError(f"the training dataset {type(data).__name__} has no len()") from None
        full, rest = divmod(self.num_samples, batch_size)
        self.batches_per_epoch = full + (1 if rest and not (drop_last or ctx.world_size > 1) else 0)
        if self.batches_per_epoch == 0:
            raise ConfigError(f"a dataset of {self.num_samples} samples gives no full batch of {batch_size}")
        self.epoch, self.position = 0, 0
        self._iter: Any = None

    def next(self) -> Any:
        """The next batch of this rank (moving on to the next epoch's order when one ends)."""
        if self._iter is None:
            plan = epoch_batches(
                self.num_samples, self.batch_size, seed=self.seed, stream=self.index, epoch=self.epoch,
                shuffle=self.shuffle, drop_last=self.drop_last, rank=self.ctx.rank, world_size=self.ctx.world_size,
            )[self.position:]
            # An own generator: making the iterator must not draw from the global RNG,
            # or a resumed run (which makes one mid-epoch) would diverge.
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, 1_000_003 + self.index, self.epoch))
            loader = DataLoader(self.dataset, batch_sampler=plan, generator=generator, **self.options)
            self._iter = iter(loader)
        batch = next(self._iter)
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position, self._iter = self.epoch + 1, 0, None
        return batch

    def state(self) -> dict[str, int]:
        """Position, for checkpoints."""
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: Mapping[str, int]) -> None:
        """Continue from a :meth:`state`."""
        self.epoch, self.position, self._iter = int(state["epoch"]), int(state["position"]), None

    def close(self) -> None:
        """Drop the iterator (and its worker processes)."""
        self._iter = None


# ---------------------------------------------------------------------------
# RNG and optimizer state


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(int(v) for v in python_state["internal"].tolist()),
                     python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _named_optimizer_state(optimizer: torch.optim.Optimizer, names: Mapping[int, str]) -> dict[str, Any]:
    """``optimizer.state_dict()`` with parameter indices replaced by parameter names."""
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    raw = optimizer.state_dict()
    return {
        "state": {order[i]: s for i, s in raw["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in raw["param_groups"]],
    }


def _load_named_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any], names: Mapping[int, str], origin: str) -> None:
    """Load a :func:`_named_optimizer_state`, first giving each parameter group the checkpoint's members.

    A rewrite may have put a parameter into the group of the weights it was
    copied from; the factory alone would not know, so membership is restored
    from the checkpoint.
    """
    saved_groups = state["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise CheckpointError(f"{origin}: the optimizer has {len(optimizer.param_groups)} parameter groups, the checkpoint {len(saved_groups)}")
    by_name = {names[id(p)]: p for group in optimizer.param_groups for p in group["params"]}
    wanted = sorted(n for g in saved_groups for n in g["params"])
    if wanted != sorted(by_name):
        raise CheckpointError(f"{origin}: the optimizer's parameters do not match the checkpoint's")
    for saved, current in zip(saved_groups, optimizer.param_groups):
        current["params"] = [by_name[n] for n in saved["params"]]
        if "param_names" in current:
            current["param_names"] = list(saved["params"])
    index = {name: i for i, name in enumerate(n for g in saved_groups for n in g["params"])}
    groups = []
    for saved, current in zip(saved_groups, optimizer.param_groups):
        # JSON has no tuples: give hyperparameters back the type the optimizer uses.
        restored = {k: (tuple(v) if isinstance(current.get(k), tuple) and isinstance(v, list) else v) for k, v in saved.items()}
        groups.append({**restored, "params": [index[n] for n in saved["params"]]})
    optimizer.load_state_dict({"state": {index[n]: s for n, s in state["state"].items()}, "param_groups": groups})


def _named_parameters(params: ParamStore, keys: Sequence[str]) -> list[tuple[str, nn.Parameter, str, nn.Module]]:
    """``(name, parameter, key, module)`` of every parameter of ``keys``, each tensor once."""
    seen: set[int] = set()
    out = []
    for key in keys:
        module = params[key]
        for pname, parameter in module.named_parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                out.append((f"{key}/{pname}", parameter, key, module))
    return out


# ---------------------------------------------------------------------------
# Progress display


def model_label(graph: MTGraph, num_blocks: int) -> str:
    """What kind of network ``graph`` is, for progress lines: ``STN``, ``One-Net``, ``tree`` or ``gated``.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.train.loop import model_label
        >>> model_label(mtgraph.stn(3, ["seg", "depth"]), 3), model_label(mtgraph.one_net(3, ["seg", "depth"]), 3)
        ('STN', 'One-Net')
        >>> model_label(mtgraph.from_groups(2, ["a", "b"], [[["a", "b"]], [["a"], ["b"]]]), 2)
        'tree'
    """
    from mtgraph.ir.builders import one_net, stn

    tasks = list(graph.tasks)
    if len(tasks) > 1 and graph == stn(num_blocks, tasks):
        return "STN"
    if graph == one_net(num_blocks, tasks):
        return "One-Net"
    return "gated" if any(isinstance(n, (Skip, Gate)) for n in graph.nodes) else "tree"


#: Columns the bar itself takes (its cells) and the count and time columns around it, at most.
_BAR_WIDTH = 16


def progress_fields(phase: str, label: str, epoch: int, epochs: int | None, losses: Mapping[str, float],
                    room: int) -> tuple[str, str]:
    """The description and loss text of one progress line, the loss text cut to ``room`` characters.

    The description names the phase and the network (``mtsl · tree``) and,
    when the run is counted in epochs, ``epoch k/n`` (1-based); a run
    counted in steps shows no epoch (the count column shows the steps).
    Losses are per task when they fit, else their mean, else nothing.

    Examples:
        >>> from mtgraph.train.loop import progress_fields
        >>> progress_fields("train", "STN", 0, 2, {"seg": 1.25, "depth": 0.5}, room=40)
        ('train · STN epoch 1/2', 'seg 1.25  depth 0.5')
        >>> progress_fields("train", "One-Net", 3, None, {"seg": 1.25, "depth": 0.5}, room=12)
        ('train · One-Net', 'loss 0.875')
    """
    description = f"{phase} · {label}" + (f" epoch {epoch + 1}/{epochs}" if epochs else "")
    text = "  ".join(f"{t} {v:.3g}" for t, v in losses.items())
    if len(text) > room and losses:
        text = f"loss {sum(losses.values()) / len(losses):.3g}"
    return description, text if len(text) <= room else ""


class _Progress:
    """A rich progress bar that fits the terminal (80 columns at least), shown only when enabled (TTY, rank 0).

    One line: the phase and the network being trained, the bar, steps done
    of all, the time left, and the losses that fit in what is left of the line.
    """

    def __init__(self, enabled: bool, total: int | None, phase: str, label: str = "", epochs: int | None = None,
                 console: Any = None) -> None:
        self._bar: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._console = console if console is not None else Console(stderr=True)
        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=_BAR_WIDTH), MofNCompleteColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[losses]}"), console=self._console,
        )
        self._phase, self._label, self._epochs, self._total = phase, label, epochs, total
        description, _ = progress_fields(phase, label, 0, epochs, {}, 0)
        self._task = self._bar.add_task(description, total=total, losses="")
        self._bar.start()

    def update(self, step: int, epoch: int, losses: Mapping[str, float]) -> None:
        if self._bar is not None:
            description, _ = progress_fields(self._phase, self._label, epoch, self._epochs, {}, 0)
            count = len(f"{step}/{self._total}") if self._total else 8
            # rich separates the five columns with one space each; the time column is 7 characters ("0:01:23").
            used = len(description) + _BAR_WIDTH + count + 7 + 4
            room = max(0, min(self._console.width, 200) - used - 1)
            description, text = progress_fields(self._phase, self._label, epoch, self._epochs, losses, room)
            self._bar.update(self._task, completed=step, description=description, losses=text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# ---------------------------------------------------------------------------
# The loop


@dataclass
class _Group:
    spec: OptimizerGroup
    stream: _Stream
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None

    @property
    def turn(self) -> int:
        return self.spec.steps or self.stream.batches_per_epoch


class _Loop:
    """The mutable state of one :func:`fit` call and the operations on it."""

    def __init__(self, *, graph: MTGraph, params: ParamStore, tasks: Mapping[str, Task], groups: list[_Group],
                 weights: dict[str, float], hooks: Sequence[Hook], ctx: DistContext, phase: str, seed: int,
                 ckpt: CheckpointConfig | None, eval_data: DataLoader | Dataset | None, eval_every: int,
                 grad_clip: float | None, owners: Mapping[str, Sequence[str]] | None = None,
                 torch_compile: bool = False) -> None:
        self.tasks, self.groups, self.weights, self.hooks, self.ctx = tasks, groups, weights, list(hooks), ctx
        self.torch_compile = torch_compile
        self.phase, self.seed, self.ckpt, self.grad_clip = phase, seed, ckpt, grad_clip
        self.eval_data, self.eval_every = eval_data, eval_every
        self.history = History()
        self.step = self.epoch = 0
        self.in_epoch = False
        self.cycle = 0  # index of the group whose turn it is
        self.turn_steps = 0  # steps that group has taken in this turn
        self.epoch_start = 0  # step at which the current epoch began
        self.last_checkpoint: Path | None = None
        self.metrics: MetricsTable | None = None
        self.hook_names = self._hook_names()
        self.graph, self.params = graph, params
        self._build_module()
        chosen = self._owners_by_select(self.entries) if owners is None else self._owners_by_name(owners)
        for group in self.groups:
            self._build_optimizer(group, chosen[group.spec.name])
        self.state = TrainState(phase=phase, step=0, epoch=0, group=groups[0].spec.name, graph=graph, params=params,
                                module=self.module, optimizers=self._optimizers(), tasks=tasks, history=self.history, ctx=ctx)

    def _hook_names(self) -> list[str]:
        names: list[str] = []
        for hook in self.hooks:
            name, k = hook.name, 1
            while name in names:
                k += 1
                name = f"{hook.name}_{k}"
            names.append(name)
        return names

    # -- building ---------------------------------------------------------

    def _build_module(self) -> None:
        """Compile the current graph onto the device (and into DDP); name its parameters."""
        check_tasks(self.tasks, self.graph.tasks)
        self.module = compile(self.graph, self.params).to(self.ctx.device)
        self.module.train()
        # Only skips and gates can leave parameters without gradient in a step;
        # DDP's search for unused parameters costs a graph traversal per step.
        unused = any(isinstance(node, (Skip, Gate)) for node in self.graph.nodes)
        self.model = wrap_module(self.module, self.ctx, find_unused_parameters=unused)
        if self.torch_compile:
            # Only the training forward is compiled; hooks and evaluation see the plain module, with the
            # same parameters. A rewrite rebuilds the module and so compiles again.
            from mtgraph.exporters.inductor import torch_compile

            self.model = torch_compile(self.model)
        self.entries = _named_parameters(self.params, self.graph.weight_keys())
        self.names: dict[int, str] = {id(p): name for name, p, _, _ in self.entries}

    def _owners_by_select(self, entries: Sequence[tuple[str, nn.Parameter, str, nn.Module]]) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Each group's parameters among ``entries``, by the groups' ``select`` rules."""
        owned: dict[str, list[tuple[str, nn.Parameter]]] = {g.spec.name: [] for g in self.groups}
        explicit = [g.spec for g in self.groups if g.spec.select is not None]
        default = next((g.spec.name for g in self.groups if g.spec.select is None), None)
        for name, parameter, key, module in entries:
            owner = next((spec.name for spec in explicit if spec.select(key, module)), default)  # type: ignore[misc]
            if owner is not None:
                owned[owner].append((name, parameter))
        return owned

    def _owners_by_name(self, owners: Mapping[str, Sequence[str]]) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Each group's parameters as a checkpoint recorded them."""
        by_name = {name: p for name, p, _, _ in self.entries}
        unknown = sorted(n for names in owners.values() for n in names if n not in by_name)
        if unknown:
            raise CheckpointError(f"the checkpoint's optimizers train parameters {unknown[:5]} that its graph does not have")
        return {g.spec.name: [(n, by_name[n]) for n in owners.get(g.spec.name, ())] for g in self.groups}

    def _build_optimizer(self, group: _Group, named: Sequence[tuple[str, nn.Parameter]]) -> None:
        group.optimizer = group.spec.optimizer(list(named)) if named else None
        group.scheduler = group.spec.scheduler(group.optimizer) if group.optimizer and group.spec.scheduler else None

    def _optimizers(self) -> dict[str, torch.optim.Optimizer | None]:
        return {g.spec.name: g.optimizer for g in self.groups}

    @staticmethod
    def _active(group: _Group) -> bool:
        return group.optimizer is not None and any(pg["params"] for pg in group.optimizer.param_groups)

    def _first_active(self, start: int) -> int:
        """Index of the first group from ``start`` on that has parameters (len(groups) if none)."""
        k = start
        while k < len(self.groups) and not self._active(self.groups[k]):
            k += 1
        return k

    # -- rewriting --------------------------------------------------------

    def apply_rewrite(self, rewrite: Rewrite) -> None:
        """Continue with ``rewrite``'s graph and params, carrying optimizer state through its lineage.

        Each optimizer is edited in place by :func:`mtgraph.passes.remap_optimizer`
        (so its schedulers and learning rates carry on): unchanged weights keep
        their state, copies get their source's, averages the mean of their
        sources'. Fresh weights join the group whose ``select`` takes them.
        """
        if not isinstance(rewrite, Rewrite):
            raise TrainError(f"on_epoch_end must return a Rewrite or None, got {type(rewrite).__name__}")
        if rewrite.graph.tasks != self.graph.tasks:
            raise TrainError(f"a rewrite must keep the tasks {list(self.graph.tasks)}; it has {list(rewrite.graph.tasks)}")
        old_used = self.params.restricted(self.graph)
        self.graph, self.params = rewrite.graph, rewrite.params
        self._build_module()
        new_used = self.params.restricted(self.graph)
        lineage = as_lineage(rewrite.lineage, old_used, new_used)
        for group in self.groups:
            if group.optimizer is not None:
                remap_optimizer(group.optimizer, lineage, old_used, new_used, fresh_group=None)
        held = {id(p) for g in self.groups if g.optimizer for pg in g.optimizer.param_groups for p in pg["params"]}
        unheld = [entry for entry in self.entries if id(entry[1]) not in held]
        for group in self.groups:
            joining = self._owners_by_select(unheld)[group.spec.name]
            if not joining:
                continue
            if group.optimizer is None:
                self._build_optimizer(group, joining)
            else:
                group.optimizer.param_groups[0]["params"].extend(p for _, p in joining)
        for group in self.groups:
            if group.optimizer is not None:
                for pg in group.optimizer.param_groups:
                    if "param_names" in pg:
                        pg["param_names"] = [self.names[id(p)] for p in pg["params"]]
        self.state.graph, self.state.params, self.state.module = self.graph, self.params, self.module
        self.state.optimizers = self._optimizers()

    # -- one step ---------------------------------------------------------

    def train_step(self, group: _Group) -> None:
        state = self.state
        state.step, state.epoch, state.group = self.step, self.epoch, group.spec.name
        for hook in self.hooks:
            hook.on_step_start(state)
        images, targets = group.stream.next()
        images = images.to(self.ctx.device, non_blocking=True)
        targets = task_targets(self.tasks, targets, self.ctx.device)
        self.module.zero_grad(set_to_none=True)
        outputs = self.model(images)
        losses = {name: task.loss(outputs[name], targets[name]) for name, task in self.tasks.items()}
        extras: dict[str, torch.Tensor] = {}
        for hook, name in zip(self.hooks, self.hook_names):
            term = hook.extra_loss(state, outputs, (images, targets))
            if term is not None:
                extras[name] = term
        total = sum((self.weights[t] * loss for t, loss in losses.items()), torch.zeros((), device=self.ctx.device))
        total = total + sum(extras.values(), torch.zeros((), device=self.ctx.device))
        # One all-reduce: every rank sees the same values, so all stop together on a NaN.
        values = all_reduce_mean(torch.stack([v.detach().float().reshape(()) for v in [*losses.values(), *extras.values(), total]]), self.ctx)
        numbers = values.tolist()
        task_values = dict(zip(losses, numbers))
        extra_values = dict(zip(extras, numbers[len(losses):]))
        self._check_finite(group, task_values, extra_values)
        total.backward()
        assert group.optimizer is not None  # only groups with parameters take turns
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_([p for g in group.optimizer.param_groups for p in g["params"]], self.grad_clip)
        group.optimizer.step()
        if group.scheduler is not None:
            group.scheduler.step()
        self.history.record_step(group.spec.name, task_values, extra_values, numbers[-1])
        self.step += 1
        state.step, state.losses = self.step, task_values
        for hook in self.hooks:
            hook.on_step_end(state)

    def _check_finite(self, group: _Group, losses: Mapping[str, float], extras: Mapping[str, float]) -> None:
        bad_tasks = {t: v for t, v in losses.items() if not math.isfinite(v)}
        bad_hooks = {h: v for h, v in extras.items() if not math.isfinite(v)}
        if not bad_tasks and not bad_hooks:
            return
        parts = []
        if bad_tasks:
            parts.append(f"task(s) {sorted(bad_tasks)} ({', '.join(f'{t}={v}' for t, v in bad_tasks.items())})")
        if bad_hooks:
            parts.append(f"hook loss(es) {sorted(bad_hooks)} ({', '.join(f'{h}={v}' for h, v in bad_hooks.items())})")
        last = f"the last good checkpoint is {str(self.last_checkpoint)!r}" if self.last_checkpoint else "no checkpoint was written"
        raise TrainError(
            f"non-finite loss at step {self.step} (phase {self.phase!r}, epoch {self.epoch}, group {group.spec.name!r}): "
            f"{' and '.join(parts)}; the weights were not updated by this step, {last}"
        )

    # -- epochs -----------------------------------------------------------

    def end_epoch(self) -> None:
        state = self.state
        state.step, state.epoch = self.step, self.epoch
        evaluated = None
        if self.eval_data is not None and (self.epoch + 1) % self.eval_every == 0:
            # Evaluation must not move the RNG streams training draws from.
            with torch.random.fork_rng(devices=[self.ctx.device] if self.ctx.device.type == "cuda" else []):
                label = model_label(self.graph, self.params.backbone.num_blocks)
                self.metrics = evaluate_module(self.module, self.tasks, self.eval_data, device=self.ctx.device,
                                               network=f"the {label}" if label in ("STN", "One-Net") else f"a {label} network")
            evaluated = state.metrics = dict(self.metrics)
        record: dict[str, Any] = {"epoch": self.epoch, "step": self.step, "loss": self.history.mean_losses(self.epoch_start),
                                  "metrics": evaluated, "rewrites": []}
        self.history.epochs.append(record)
        for hook in self.hooks:
            rewrite = hook.on_epoch_end(state)
            if rewrite is not None:
                self.apply_rewrite(rewrite)
                record["rewrites"].append(rewrite.note or type(hook).__name__)
        self.epoch += 1
        self.in_epoch = False
        self.epoch_start = self.step
        state.epoch = self.epoch

    def run(self, epochs: int | None, steps: int | None, progress: _Progress) -> None:
        def done() -> bool:
            return (steps is not None and self.step >= steps) or (epochs is not None and self.epoch >= epochs)

        every = self.ckpt.every if self.ckpt else None
        while not done():
            if not self.in_epoch:
                self.in_epoch, self.cycle, self.turn_steps = True, self._first_active(0), 0
                if self.cycle == len(self.groups):
                    raise TrainError("no optimizer group has parameters to train")
                self.state.epoch = self.epoch
                for hook in self.hooks:
                    hook.on_epoch_start(self.state)
            group = self.groups[self.cycle]
            self.train_step(group)
            self.turn_steps += 1
            if self.turn_steps >= group.turn:
                self.cycle, self.turn_steps = self._first_active(self.cycle + 1), 0
            progress.update(self.step, self.epoch, self.state.losses)
            if self.cycle >= len(self.groups):
                self.end_epoch()
                if self.ckpt and (self.ckpt.at_epoch_end or (every and self.step % every == 0)):
                    self.save()
            elif every and self.step % every == 0:
                self.save()

    # -- checkpoints ------------------------------------------------------

    def save(self, finished: bool = False) -> None:
        """Write a checkpoint (rank 0) and keep the newest ``keep`` of this phase."""
        assert self.ckpt is not None
        path = checkpoint_path(self.ckpt.folder, self.phase, self.step)
        if self.ctx.is_main:
            tensors: dict[str, torch.Tensor] = {}
            state = weights_state(self.graph, self.params, tensors)
            state.update({
                "phase": self.phase, "step": self.step, "epoch": self.epoch, "finished": finished,
                "seed": self.seed, "world_size": self.ctx.world_size, "in_epoch": self.in_epoch,
                "cycle": self.cycle, "turn_steps": self.turn_steps, "epoch_start": self.epoch_start,
                "streams": [s.state() for s in self._streams()],
                "optimizers": {g.spec.name: flatten_state(_named_optimizer_state(g.optimizer, self.names), f"optimizer/{g.spec.name}", tensors)
                               for g in self.groups if g.optimizer is not None},
                "schedulers": {g.spec.name: flatten_state(g.scheduler.state_dict(), f"scheduler/{g.spec.name}", tensors)
                               for g in self.groups if g.scheduler is not None},
                "rng": flatten_state(_rng_state(), "rng", tensors),
                "hooks": [{"name": name, "state": flatten_state(hook.state_dict(), f"hook/{name}", tensors)}
                          for hook, name in zip(self.hooks, self.hook_names)],
                "history": flatten_state(self.history.to_state(), "history", tensors),
                "metrics": flatten_state(dict(self.metrics) if self.metrics is not None else None, "metrics", tensors),
            })
            write_checkpoint(path, state, tensors)
            for old in list_checkpoints(self.ckpt.folder, self.phase)[:-self.ckpt.keep]:
                old.unlink(missing_ok=True)
        barrier(self.ctx)
        self.last_checkpoint = path

    def _streams(self) -> list[_Stream]:
        streams: list[_Stream] = []
        for group in self.groups:
            if all(group.stream is not s for s in streams):
                streams.append(group.stream)
        return streams

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from ``ckpt`` (its graph and params are already in place)."""
        origin = str(ckpt.path)
        state = ckpt.state
        if int(state["seed"]) != self.seed:
            raise CheckpointError(f"{origin} was written by a run with seed {state['seed']}, not {self.seed}; pass the same seed to resume")
        for group in self.groups:
            name = group.spec.name
            if group.optimizer is not None:
                _load_named_optimizer_state(group.optimizer, state["optimizers"][name], self.names, origin)
            if group.scheduler is not None:
                if name not in state["schedulers"]:
                    raise CheckpointError(f"{origin} has no scheduler state for group {name!r}")
                group.scheduler.load_state_dict(state["schedulers"][name])
        streams = self._streams()
        if len(streams) != len(state["streams"]):
            raise CheckpointError(f"{origin} has {len(state['streams'])} data streams; this run has {len(streams)}")
        for stream, position in zip(streams, state["streams"]):
            stream.restore(position)
        saved_hooks = {h["name"]: h["state"] for h in state["hooks"]}
        lost = sorted(name for name, saved in saved_hooks.items() if saved and name not in self.hook_names)
        if lost:
            raise CheckpointError(f"{origin} holds the state of hooks {lost}, which this run does not have (hooks: {self.hook_names})")
        for hook, name in zip(self.hooks, self.hook_names):
            if name in saved_hooks:
                hook.load_state_dict(saved_hooks[name])
        self.step, self.epoch = ckpt.step, ckpt.epoch
        self.in_epoch, self.cycle = bool(state["in_epoch"]), int(state["cycle"])
        self.turn_steps, self.epoch_start = int(state["turn_steps"]), int(state["epoch_start"])
        self.history = self.state.history = History.from_state(state["history"])
        self.metrics = MetricsTable(state["metrics"], {n: dict(t.higher_is_better) for n, t in self.tasks.items()}) if state["metrics"] else None
        self.state.metrics = dict(self.metrics) if self.metrics is not None else None
        self.state.step, self.state.epoch = self.step, self.epoch
        self.last_checkpoint = ckpt.path
        _restore_rng(state["rng"])


def _make_groups(
    groups: Sequence[OptimizerGroup] | None,
    optimizer: OptimizerFactory | None,
    scheduler: SchedulerFactory | None,
    data: DataLoader | Dataset,
    batch_size: int | None,
    seed: int,
    ctx: DistContext,
) -> list[_Group]:
    if groups is None:
        groups = [OptimizerGroup("main", None, optimizer or adam(), scheduler)]
    elif optimizer is not None or scheduler is not None:
        raise ConfigError("pass optimizer and scheduler inside each OptimizerGroup when giving groups")
    groups = list(groups)
    if not groups:
        raise ConfigError("groups is empty; give at least one OptimizerGroup (or leave groups=None)")
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ConfigError(f"optimizer group names must be unique, got {names}")
    if sum(g.select is None for g in groups) > 1:
        raise ConfigError("at most one optimizer group may leave select=None (it takes every key no other group selects)")
    for g in groups:
        if g.steps is not None and g.steps < 1:
            raise ConfigError(f"optimizer group {g.name!r}: steps per turn must be >= 1, got {g.steps}")
    main = _Stream(data, batch_size, seed, 0, ctx)
    out: list[_Group] = []
    for g in groups:
        if g.data is None:
            out.append(_Group(g, main))
            continue
        # A group's DataLoader brings its own batch size; a Dataset falls back on fit's.
        size = g.batch_size if g.batch_size is not None or isinstance(g.data, DataLoader) else batch_size
        out.append(_Group(g, _Stream(g.data, size, seed, len(out) + 1, ctx)))
    return out


def _loss_weights(tasks: Mapping[str, Any], weights: Mapping[str, float] | None) -> dict[str, float]:
    if weights is None:
        return {t: 1.0 / len(tasks) for t in tasks}
    unknown = sorted(set(weights) - set(tasks))
    missing = [t for t in tasks if t not in weights]
    if unknown or missing:
        raise ConfigError(f"loss_weights must give one weight per task {list(tasks)}; missing {missing}, unknown {unknown}")
    for t, w in weights.items():
        if not math.isfinite(float(w)) or w < 0:
            raise ConfigError(f"loss weight of task {t!r} must be a finite number >= 0, got {w}")
    return {t: float(weights[t]) for t in tasks}


def fit(
    graph: MTGraph,
    params: ParamStore,
    tasks: Mapping[str, Task],
    data: DataLoader | Dataset,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    optimizer: OptimizerFactory | None = None,
    scheduler: SchedulerFactory | None = None,
    groups: Sequence[OptimizerGroup] | None = None,
    loss_weights: Mapping[str, float] | None = None,
    hooks: Sequence[Hook] = (),
    seed: int = 0,
    checkpoint: CheckpointConfig | str | os.PathLike[str] | None = None,
    resume: bool = False,
    phase: str = "train",
    eval_data: DataLoader | Dataset | None = None,
    eval_every: int = 1,
    grad_clip: float | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    torch_compile: bool = False,
) -> FitResult:
    """Train ``graph`` with ``params`` on ``tasks``; return the final graph, params and history.

    Args:
        graph: the architecture to train (rewritten by hooks as training goes).
        params: its weights; trained in place (a rewrite's new store is in the result).
        tasks: task name -> :class:`~mtgraph.tasks.Task`, one per task of ``graph``.
        data: map-style Dataset or DataLoader yielding ``(image, {target: tensor})``.
            A DataLoader gives the batch size, collate function and workers;
            its order is replaced by the seed-determined one.
        epochs: stop after this many epochs (an epoch cycles once through the
            groups); with ``steps`` too, whichever comes first (give at least one).
        steps: stop after this many optimizer steps.
        batch_size: the *global* batch size when ``data`` is a Dataset.
        optimizer: factory of the optimizer (default :func:`adam`, lr 1e-3).
        scheduler: factory of an LR scheduler, stepped after every step.
        groups: optimizer groups taking turns (replaces optimizer/scheduler).
        loss_weights: task -> weight (default: 1 / number of tasks, the mean).
        hooks: :class:`~mtgraph.train.Hook` objects, called in order.
        seed: seeds torch, numpy and python RNGs at the start of a fresh run
            and determines every epoch's data order.
        checkpoint: a folder or :class:`CheckpointConfig` (a bare folder
            checkpoints at every epoch end and at the end). None inside a
            :func:`~mtgraph.train.checkpointing` block: the session's folder,
            ``resume`` and a numbered phase name.
        resume: continue from this phase's latest checkpoint in the folder,
            if any (a finished phase returns at once). Without it, a folder
            that already holds this phase's checkpoints is refused.
        phase: names this call's checkpoints (one per strategy phase).
        eval_data: evaluated every ``eval_every`` epochs; metrics go into the
            history and ``TrainState.metrics`` before ``on_epoch_end``.
        grad_clip: clip the active group's gradient norm to this.
        device: where to train (default: CUDA if available, else CPU; under
            torchrun, the local rank's GPU). ``params`` are moved there.
        progress: show a progress bar (default: only when stderr is a terminal).
        torch_compile: run the training forward under ``torch.compile``
            (:func:`mtgraph.exporters.inductor`): the first step compiles
            (seconds to minutes), later ones may be faster; where torch.compile
            is unavailable or fails, training runs eagerly after one
            ``TorchCompileWarning``. Results agree with eager training up to
            float rounding (kernels are fused differently). Measured on CPU in
            ``bench/bench_torch_compile.py`` (BENCHMARKS.md).

    Returns:
        A :class:`FitResult`: the final graph and params, the history, the
        steps and epochs done, the last evaluation and the final checkpoint.

    Raises:
        TrainError: a NaN or infinite loss (naming the step and tasks; the
            last checkpoint stays the last good one).
        ConfigError: inconsistent options (neither ``epochs`` nor ``steps``,
            a negative count, a hook that is not a Hook, ...).
        CheckpointError: an unusable checkpoint, or a folder that already
            holds this phase's checkpoints without ``resume``.

    Examples:
        >>> import torch
        >>> import mtgraph
        >>> from mtgraph import tasks as T
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.train import fit
        >>> from mtgraph.zoo import resnet_tiny
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=4), torch.randn(2, 3, 32, 32))
        >>> tasks = {"seg": T.segmentation(5, hidden=8), "depth": T.depth(hidden=8)}
        >>> heads = {n: t.make_head(backbone.output_shape[0], (32, 32)) for n, t in tasks.items()}
        >>> graph = mtgraph.one_net(backbone.num_blocks, list(tasks))
        >>> params = mtgraph.ParamStore.create(graph, backbone, heads)
        >>> data = SceneDataset(8, size=32, seed=0, num_classes=4)
        >>> result = fit(graph, params, tasks, data, steps=2, batch_size=4, progress=False)
        >>> result.step, sorted(result.history.losses)
        (2, ['depth', 'seg'])
        >>> fit(graph, params, tasks, data, batch_size=4)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: give epochs or steps (or both) to say when training stops
    """
    if epochs is None and steps is None:
        raise ConfigError("give epochs or steps (or both) to say when training stops")
    for label, value in (("epochs", epochs), ("steps", steps)):
        if value is not None and value < 0:
            raise ConfigError(f"{label} must be >= 0, got {value}")
    if eval_every < 1:
        raise ConfigError(f"eval_every must be >= 1, got {eval_every}")
    check_flag("fit", "torch_compile", torch_compile)
    if not isinstance(params, ParamStore):
        raise ConfigError(f"params must be a ParamStore, got {type(params).__name__}")
    for hook in hooks:
        if not isinstance(hook, Hook):
            raise ConfigError(f"hooks must derive from mtgraph.train.Hook, got {type(hook).__name__}")
    # Inside a checkpointing() block a call without its own checkpoint= gets the session's folder and phase.
    checkpoint, resume, phase = session_arguments(checkpoint, resume, phase)
    ckpt = CheckpointConfig(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    ctx = init_distributed(device)
    check_tasks(tasks, graph.tasks)
    weights = _loss_weights(tasks, loss_weights)

    found: Checkpoint | None = None
    if ckpt is not None:
        checkpoint_path(ckpt.folder, phase, 0)  # checks the phase name
        latest = latest_checkpoint(ckpt.folder, phase)
        if latest is not None and not resume:
            raise CheckpointError(
                f"{str(ckpt.folder)!r} already holds checkpoints of phase {phase!r} (latest {latest.name}); "
                "pass resume=True to continue that run, or use another folder or phase name"
            )
        if latest is not None:
            # The newest readable one: a damaged newer checkpoint is skipped (warned, renamed, kept).
            found = resume_checkpoint(ckpt.folder, phase)
        if found is not None:
            graph, params = found.graph, found.params(params)
    if found is None:
        _seed_everything(seed)

    made = _make_groups(groups, optimizer, scheduler, data, batch_size, seed, ctx)
    owners = None
    if found is not None:
        saved = found.state["optimizers"]
        unknown = sorted(set(saved) - {g.spec.name for g in made})
        if unknown:
            raise CheckpointError(f"{found.path} has optimizer groups {unknown} that this run does not define")
        owners = {name: [n for g in opt["param_groups"] for n in g["params"]] for name, opt in saved.items()}
    loop = _Loop(graph=graph, params=params, tasks=tasks, groups=made, weights=weights, hooks=hooks, ctx=ctx, phase=phase,
                 seed=seed, ckpt=ckpt, eval_data=eval_data, eval_every=eval_every, grad_clip=grad_clip, owners=owners,
                 torch_compile=torch_compile)
    if found is not None and found.finished:
        loop.restore(found)
        return FitResult(loop.graph, loop.params, loop.history, loop.step, loop.epoch, loop.metrics, found.path, resumed=True)
    for hook in loop.hooks:
        hook.on_fit_start(loop.state)
    if found is not None:
        loop.restore(found)

    cycle = sum(g.turn for g in loop.groups if loop._active(g))
    total = min(x for x in (steps, epochs * cycle if epochs is not None else None) if x is not None)
    show = ctx.is_main and (progress if progress is not None else sys.stderr.isatty())
    bar = _Progress(show, total, phase, model_label(graph, params.backbone.num_blocks),
                    epochs if steps is None or (epochs is not None and epochs * cycle <= steps) else None)
    try:
        loop.run(epochs, steps, bar)
        for hook in loop.hooks:
            hook.on_fit_end(loop.state)
        if ckpt is not None:
            loop.save(finished=True)
    finally:
        bar.close()
        for stream in loop._streams():
            stream.close()
    return FitResult(loop.graph, loop.params, loop.history, loop.step, loop.epoch, loop.metrics, loop.last_checkpoint,
                     resumed=found is not None)
