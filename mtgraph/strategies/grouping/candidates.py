"""Candidate networks of task grouping (papers/003 §5.1): one network per task subset, trained as independent jobs.

A candidate is a One-Net over a subset of the tasks: every block of the
traced backbone shared by the subset's heads, trained with the subset's
unweighted mean loss (the paper's protocol). A candidate with a *label* is
built on another backbone of the same blocks and input, a *variant* of the
setup (:attr:`TrainingSetup.variants`): the paper's half-size single-task
networks are label ``"small"``. Each
candidate yields a :class:`CandidateRecord`: its per-task validation loss
(the task's own training loss, averaged over the validation samples), its
cost (MACs of its trunk, MACs of each head, optionally a measured
onnxruntime latency) and where its trained weights are.

Jobs and what crosses a process boundary
----------------------------------------
Candidates are independent, so they can be trained one after the other
(``"sequential"``, the default), in local processes (``"process"``:
:class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start
method) or on a Ray cluster (``"ray"``; the optional package ``ray``).
What a job needs is one :class:`TrainingSetup` (the traced backbones,
heads, tasks, datasets, options, run folder); it is pickled *once* and sent
to each worker when it starts, not with every job. A job is then only a
:class:`CandidateSpec` (task names, backbone size, phase). Nothing with
weights comes back: a job writes its trained network (``mtgraph.save``:
IR text + safetensors) and a small JSON record into the run folder, and
returns the record. The folder must therefore be visible to every worker
(on a multi-node Ray cluster: a shared file system).

Every candidate starts from a copy of the traced blocks and heads (the same
initial weights for every candidate) and trains with the same seed, so the
data order is the same too: the losses do not depend on which worker ran a
job or in what order (with equal torch thread counts).

Reruns
------
Each job writes ``candidates/<name>/<phase>.json`` atomically once it is
done; a rerun with the same folder reads it instead of training again. A
job killed half way resumes from its last checkpoint (``fit``'s
checkpoint/phase/resume). A fingerprint of everything that determines the
result (options, seed, initial weights, data size) is stored with each job;
a folder holding a job with another fingerprint is refused, not silently
reused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtgraph.analysis.cost import cost
from mtgraph.analysis.macs import evaluation_mode
from mtgraph.compile import compile as compile_graph
from mtgraph.errors import CheckpointError, ConfigError
from mtgraph.executors import EXECUTORS, check_executor, run_jobs
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.builders import one_net
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Head
from mtgraph.options import check_choice, check_flag, check_number
from mtgraph.params import ParamStore
from mtgraph.persist import atomic_write_bytes, load, load_state_tensors, save, state_tensors
from mtgraph.strategies.grouping.config import KEEP, OPTIMIZERS
from mtgraph.strategies.grouping.selection import Candidate
from mtgraph.train import CheckpointConfig, Hook, TrainState, adam, fit, sgd
from mtgraph.train.evaluate import task_targets
from mtgraph.train.loop import OptimizerFactory

if TYPE_CHECKING:
    from mtgraph.tasks import Task

__all__ = [
    "SMALL",
    "PHASES",
    "EXECUTORS",
    "KEEP",
    "CandidateSpec",
    "TrainOptions",
    "CandidateRecord",
    "TrainingSetup",
    "CandidateRun",
    "candidate_specs",
    "validation_losses",
    "network_costs",
    "run_candidate",
    "train_candidates",
    "load_candidate",
]

#: Label of candidates built on the second, smaller backbone (the paper's half-size networks).
SMALL = "small"
#: What a label may be made of (it names files, folders and checkpoint phases).
_LABEL = re.compile(r"[A-Za-z0-9_]+")
#: ``full``: trained for the whole schedule; ``early``: the early-stopping approximation's short run.
PHASES = ("full", "early")

RECORD_FORMAT = "mtgraph-grouping-candidate-2"


# --------------------------------------------------------------------------- #
# Specs and options
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class CandidateSpec:
    """One job: train the One-Net over ``tasks`` (on the variant backbone ``label``, if given) for ``phase``.

    ``name`` matches :attr:`Candidate.name` of the selection records
    (sorted task names joined by ``+``, then ``[label]``); ``phase_name``
    names the job's training phase (its checkpoint files), uniquely per network
    and phase.

    Raises:
        ConfigError: no tasks, repeated tasks, a label that is not letters,
            digits and ``_``, or an unknown phase.

    Examples:
        >>> from mtgraph.strategies.grouping import CandidateSpec
        >>> CandidateSpec(("seg", "depth")).name, CandidateSpec(("seg",), "small").name
        ('depth+seg', 'seg[small]')
        >>> CandidateSpec(("seg", "depth"), phase="early").phase_name, CandidateSpec(("seg",), "small").phase_name
        ('grouping-early-depth-seg', 'grouping-full-seg--small')
        >>> CandidateSpec(("seg",), phase="warmup")
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: candidate phase must be one of ['full', 'early'], got 'warmup'
    """

    tasks: tuple[str, ...]
    label: str | None = None
    phase: str = "full"

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str) or not self.tasks:
            raise ConfigError(f"a candidate needs a non-empty tuple of task names, got {self.tasks!r}")
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"candidate tasks must be distinct, got {self.tasks}")
        if self.label is not None and (not isinstance(self.label, str) or not _LABEL.fullmatch(self.label)):
            raise ConfigError(f"a candidate label must be letters, digits or '_' (it names files), got {self.label!r}")
        if self.phase not in PHASES:
            raise ConfigError(f"candidate phase must be one of {list(PHASES)}, got {self.phase!r}")

    @property
    def name(self) -> str:
        """``"depth+seg"`` or ``"seg[small]"``."""
        base = "+".join(sorted(self.tasks))
        return f"{base}[{self.label}]" if self.label else base

    @property
    def phase_name(self) -> str:
        """``grouping-<phase>-<tasks>`` (then ``--<label>``): task names are identifiers, so ``-`` cannot occur
        in them and the name is unique per network and phase."""
        base = f"grouping-{self.phase}-{'-'.join(sorted(self.tasks))}"
        return f"{base}--{self.label}" if self.label else base

    @property
    def folder_name(self) -> str:
        """The job's folder under ``candidates/`` (task names are identifiers, so this is a safe file name)."""
        base = "+".join(sorted(self.tasks))
        return f"{base}-{self.label}" if self.label else base

    def with_phase(self, phase: str) -> CandidateSpec:
        """The same network for another phase."""
        return CandidateSpec(self.tasks, self.label, phase)


@dataclass(frozen=True)
class TrainOptions:
    """How every candidate is trained and measured (the part of a config a candidate's result depends on).

    Attributes:
        epochs: length of a full run, in epochs (a fraction is rounded to
            whole optimizer steps, at least one).
        early_fraction: an ``early`` run is one pass over this fraction of
            the training data (papers/003 §5.3.1: 20%), whatever ``epochs``
            is: ``round(early_fraction × batches per epoch)`` steps, at least one.
        batch_size: training batch size.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``), at ``lr``
            with ``weight_decay``, on the unweighted mean loss of the
            network's tasks.
        halve_lr_on_plateau: halve the learning rate after every epoch whose
            mean training loss is not below the best epoch's so far.
        keep: ``"best"`` keeps the epoch with the lowest mean validation
            loss over the network's tasks (the paper's protocol; evaluated
            at every epoch end and at the end); ``"last"`` the final weights.
            Early runs always keep the last weights (their losses are the
            proxy of papers/003 §5.3.1).
        eval_batch_size: batch size of the validation passes.
        latency: also measure each candidate's onnxruntime latency (batch
            1, one thread, median of ``latency_repeats`` runs).

    Raises:
        ConfigError: a value out of its range.

    Examples:
        >>> from mtgraph.strategies.grouping import TrainOptions
        >>> options = TrainOptions(epochs=10, early_fraction=0.2)
        >>> options.steps("full", batches_per_epoch=5), options.steps("early", batches_per_epoch=5)
        (50, 1)
        >>> TrainOptions(keep="first")
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: TrainOptions.keep must be one of ['best', 'last'], got 'first'
    """

    epochs: float = 10.0
    early_fraction: float = 0.2
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    halve_lr_on_plateau: bool = False
    keep: str = "best"
    eval_batch_size: int = 64
    latency: bool = False
    latency_repeats: int = 50

    def __post_init__(self) -> None:
        owner = "TrainOptions"
        for name in ("epochs", "early_fraction", "lr"):
            check_number(owner, name, getattr(self, name), low=0, strict_low=True)
        check_number(owner, "momentum", self.momentum, low=0, high=1, strict_high=True)
        check_number(owner, "weight_decay", self.weight_decay, low=0)
        for name in ("batch_size", "eval_batch_size", "latency_repeats"):
            check_number(owner, name, getattr(self, name), low=1, integer=True)
        check_choice(owner, "optimizer", self.optimizer, OPTIMIZERS)
        check_choice(owner, "keep", self.keep, KEEP)
        check_flag(owner, "halve_lr_on_plateau", self.halve_lr_on_plateau)
        check_flag(owner, "latency", self.latency)

    def steps(self, phase: str, batches_per_epoch: int) -> int:
        """Optimizer steps of a ``phase`` run (at least one)."""
        epochs = self.early_fraction if phase == "early" else self.epochs
        return max(1, round(epochs * batches_per_epoch))

    def make_optimizer(self) -> OptimizerFactory:
        """The optimizer factory these options describe."""
        if self.optimizer == "sgd":
            return sgd(self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return adam(self.lr, weight_decay=self.weight_decay)


# --------------------------------------------------------------------------- #
# Records
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class CandidateRecord:
    """What training one candidate produced (JSON-serialisable; no weights).

    Attributes:
        name, tasks, label, phase: the job (see :class:`CandidateSpec`).
        val_losses: per-task validation loss of the kept weights.
        evaluations: every validation pass: ``{"epoch", "step", "losses"}``
            (``epoch`` None for a pass after a run that ended mid-epoch).
        kept_step: optimizer step of the kept weights.
        steps: optimizer steps of the run.
        macs: MACs per image of the trunk (every backbone block once).
        head_macs: MACs per image of each head.
        params: parameters of the whole network.
        latency_ms: measured onnxruntime latency of the whole network, or None.
        seconds: wall time of the job (training, evaluation, measuring).
        model: folder of the saved network, relative to the run folder.
        fingerprint: identifies everything the result depends on.
        reused: True when this record was read from an earlier run instead of trained (not stored).

    Examples:
        >>> import tempfile, torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.grouping import CandidateSpec, TrainingSetup, TrainOptions, run_candidate
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=2), torch.zeros(2, 3, 32, 32))
        >>> tasks = {"seg": segmentation(5, hidden=4), "depth": depth(hidden=4)}
        >>> heads = {name: task.make_head(backbone.output_shape[0], (32, 32)) for name, task in tasks.items()}
        >>> folder = tempfile.TemporaryDirectory()
        >>> setup = TrainingSetup(backbone, heads, tasks, SceneDataset(4, 32, seed=0), SceneDataset(4, 32, seed=1),
        ...                       TrainOptions(epochs=1, batch_size=4, eval_batch_size=4), folder.name)
        >>> record = run_candidate(setup, CandidateSpec(("depth",)))
        >>> record.name, record.steps, list(record.val_losses), record.model
        ('depth', 1, ['depth'], 'candidates/depth/full-model')
        >>> record.candidate(cost=1.0).name
        'depth'
        >>> folder.cleanup()
    """

    name: str
    tasks: tuple[str, ...]
    label: str | None
    phase: str
    val_losses: dict[str, float]
    evaluations: tuple[dict[str, Any], ...]
    kept_step: int
    steps: int
    macs: int
    head_macs: dict[str, int]
    params: int
    latency_ms: float | None
    seconds: float
    model: str
    fingerprint: str
    reused: bool = False

    @property
    def spec(self) -> CandidateSpec:
        """The job this record is the result of."""
        return CandidateSpec(self.tasks, self.label, self.phase)

    def candidate(self, cost: float) -> Candidate:
        """The selection record: these validation losses with cost ``cost``."""
        return Candidate(dict(self.val_losses), cost, label=self.label)

    def to_json(self) -> str:
        """The record as JSON text (``reused`` left out)."""
        data = dataclasses.asdict(self)
        del data["reused"]
        data["format"] = RECORD_FORMAT
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, origin: str) -> CandidateRecord:
        """Parse :meth:`to_json` output; CheckpointError naming ``origin`` when it is malformed."""
        try:
            data = json.loads(text)
            if data.pop("format", None) != RECORD_FORMAT:
                raise ValueError(f"not a {RECORD_FORMAT} record")
            data["tasks"] = tuple(data["tasks"])
            data["evaluations"] = tuple(data["evaluations"])
            return cls(**data, reused=True)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{origin} is not a valid candidate record ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- #
# The setup every job shares
# --------------------------------------------------------------------------- #


def _task_fields(task: Task) -> dict[str, Any]:
    fields = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}
    fields["higher_is_better"] = dict(fields["higher_is_better"])  # a read-only view does not pickle
    return fields


def _data_description(data: Any) -> dict[str, Any]:
    # Contents are not hashed (datasets may be large or generated on the fly);
    # type, size and, for generated scenes, their config and seed are.
    described: dict[str, Any] = {"type": type(data).__qualname__, "len": len(data)}
    for attribute in ("config", "seed"):
        if hasattr(data, attribute):
            described[attribute] = repr(getattr(data, attribute))
    return described


def _callable_name(fn: Any) -> str:
    # Stable across processes (a plain repr holds memory addresses).
    if isinstance(fn, functools.partial):
        return f"partial({_callable_name(fn.func)}, {fn.args!r}, {sorted(fn.keywords.items())!r})"
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _weights_digest(modules: Sequence[nn.Module]) -> str:
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class TrainingSetup:
    """Everything a candidate job needs, shared by all jobs of a run (picklable).

    Attributes:
        backbone: the traced backbone of the full-size candidates.
        heads: task -> head module for ``backbone`` (copied into every candidate).
        tasks: task name -> :class:`~mtgraph.tasks.Task`, in task order.
        train_data: map-style Dataset or DataLoader of ``(image, {target: tensor})``.
        val_data: where validation losses are measured (the selection
            losses; the paper selects on validation, not test).
        options: :class:`TrainOptions`.
        folder: the run folder (results, saved networks, checkpoints).
        seed: training seed of every candidate (data order; same for all).
        variants: label -> (backbone, heads) of the candidates with that label
            (``"small"``: the paper's half-size networks); each backbone must
            read the same input through the same number of blocks.
        device: where jobs train (None: :func:`~mtgraph.train.fit`'s choice); not part of the fingerprint.
        digest: fingerprint of the setup (filled in by :meth:`__post_init__`).

    Raises:
        ConfigError: a variant with a bad label, or a backbone of other blocks or input.

    Examples:
        >>> import tempfile, torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.grouping import CandidateSpec, TrainingSetup, TrainOptions, run_candidate
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=2), torch.zeros(2, 3, 32, 32))
        >>> tasks = {"seg": segmentation(5, hidden=4), "depth": depth(hidden=4)}
        >>> heads = {name: task.make_head(backbone.output_shape[0], (32, 32)) for name, task in tasks.items()}
        >>> folder = tempfile.TemporaryDirectory()
        >>> setup = TrainingSetup(backbone, heads, tasks, SceneDataset(4, 32, seed=0), SceneDataset(4, 32, seed=1),
        ...                       TrainOptions(epochs=1, batch_size=4, eval_batch_size=4), folder.name)
        >>> setup.batches_per_epoch(), setup.record_path(CandidateSpec(("seg",))).relative_to(folder.name).as_posix()
        (1, 'candidates/seg/full.json')
        >>> folder.cleanup()
    """

    backbone: Backbone
    heads: Mapping[str, nn.Module]
    tasks: Mapping[str, Task]
    train_data: Dataset | DataLoader
    val_data: Dataset | DataLoader
    options: TrainOptions
    folder: Path
    seed: int = 0
    variants: Mapping[str, tuple[Backbone, Mapping[str, nn.Module]]] = field(default_factory=dict)
    device: str | torch.device | None = None
    digest: str = ""

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        for label, (backbone, _) in self.variants.items():
            CandidateSpec(tuple(self.tasks)[:1], label)  # checks the label
            if backbone.num_blocks != self.backbone.num_blocks or tuple(backbone.input_shape) != tuple(
                    self.backbone.input_shape):
                raise ConfigError(
                    f"the {label!r} backbone must read the same input through the same number of blocks as the "
                    f"backbone: it has {backbone.num_blocks} blocks and input {list(backbone.input_shape)}, the "
                    f"backbone {self.backbone.num_blocks} blocks and input {list(self.backbone.input_shape)} (trace "
                    "the other model with the same input and cuts)"
                )
        if not self.digest:
            self.digest = self._digest()

    def _digest(self) -> str:
        modules = [b.module for b in self.backbone.blocks] + [self.heads[t] for t in self.tasks]
        for label in sorted(self.variants):
            backbone, heads = self.variants[label]
            modules += [b.module for b in backbone.blocks] + [heads[t] for t in self.tasks]
        described = {
            "weights": _weights_digest(modules),
            "backbone": self.backbone.describe(),
            "variants": {label: self.variants[label][0].describe() for label in sorted(self.variants)},
            "tasks": {name: [task.target, _callable_name(task.loss), task.primary] for name, task in self.tasks.items()},
            "train": _data_description(self.train_data),
            "val": _data_description(self.val_data),
            "options": dataclasses.asdict(self.options),
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def fingerprint(self, spec: CandidateSpec) -> str:
        """Identifies the result of ``spec`` under this setup."""
        return hashlib.sha256(f"{self.digest}|{spec.name}|{spec.phase}".encode()).hexdigest()[:20]

    def backbone_of(self, spec: CandidateSpec) -> tuple[Backbone, Mapping[str, nn.Module]]:
        """The backbone and heads ``spec``'s network is built from."""
        if spec.label is None:
            return self.backbone, self.heads
        if spec.label not in self.variants:
            raise ConfigError(f"candidate {spec.name} needs the {spec.label!r} backbone; the setup has "
                              f"{sorted(self.variants) or 'none'}")
        return self.variants[spec.label]

    def job_folder(self, spec: CandidateSpec) -> Path:
        """``<folder>/candidates/<name>``."""
        return self.folder / "candidates" / spec.folder_name

    def record_path(self, spec: CandidateSpec) -> Path:
        """The JSON record a finished job leaves."""
        return self.job_folder(spec) / f"{spec.phase}.json"

    def batches_per_epoch(self) -> int:
        """Optimizer steps in one pass over the training data (what ``fit`` calls an epoch)."""
        if isinstance(self.train_data, DataLoader):
            return max(1, len(self.train_data))
        return max(1, math.ceil(len(self.train_data) / self.options.batch_size))  # type: ignore[arg-type]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # Task values hold a read-only mapping, which pickle refuses; send their fields instead.
        state["tasks"] = {name: _task_fields(task) for name, task in self.tasks.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from mtgraph.tasks import Task

        state = dict(state)
        state["tasks"] = {name: Task(**fields) for name, fields in state["tasks"].items()}
        self.__dict__.update(state)


# --------------------------------------------------------------------------- #
# Building, measuring and evaluating one network
# --------------------------------------------------------------------------- #


def candidate_specs(
    tasks: Sequence[str], *, max_order: int | None = None, small: bool = False, phase: str = "full"
) -> list[CandidateSpec]:
    """The candidate networks: every subset of ``tasks`` with at most ``max_order`` tasks, plus small singles.

    All ``2^k - 1`` subsets by default (the exact method); ``max_order=2``
    gives the singles and pairs the higher-order approximation trains. With
    ``small`` each task also gets a single-task network on the small
    backbone (the paper's half-size networks). Order: by size, then by the
    order of ``tasks``; small singles last.

    Args:
        tasks: the task names.
        max_order: largest subset (None: all tasks).
        small: add a small single-task network per task.
        phase: the phase of every spec.

    Returns:
        The specs.

    Raises:
        ConfigError: no or repeated task names, or a bad ``max_order``.

    Examples:
        >>> from mtgraph.strategies.grouping import candidate_specs
        >>> [spec.name for spec in candidate_specs(["seg", "depth", "normals"])]
        ['seg', 'depth', 'normals', 'depth+seg', 'normals+seg', 'depth+normals', 'depth+normals+seg']
        >>> [spec.name for spec in candidate_specs(["seg", "depth"], max_order=1, small=True)]
        ['seg', 'depth', 'seg[small]', 'depth[small]']
    """
    names = tuple(tasks)
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"tasks must be distinct task names, at least one, got {names!r}")
    top = len(names) if max_order is None else max_order
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConfigError(f"max_order must be an integer >= 1, got {max_order!r}")
    specs = [
        CandidateSpec(subset, None, phase)
        for size in range(1, min(top, len(names)) + 1)
        for subset in itertools.combinations(names, size)
    ]
    if small:
        specs += [CandidateSpec((t,), SMALL, phase) for t in names]
    return specs


def _loader(data: Dataset | DataLoader, batch_size: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    # An own generator: iterating must not draw from the global RNG of a training run.
    return DataLoader(data, batch_size=batch_size, shuffle=False, generator=torch.Generator().manual_seed(0))


def _module_losses(
    module: nn.Module, tasks: Mapping[str, Task], data: Dataset | DataLoader, batch_size: int
) -> dict[str, float]:
    """Each task's loss over ``data``: per-batch losses weighted by batch size (the per-sample mean)."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    sums = dict.fromkeys(tasks, 0.0)
    count = 0
    with evaluation_mode(module):
        for images, targets in _loader(data, batch_size):
            outputs = module(images.to(device))
            n = int(images.shape[0])
            for name, target in task_targets(tasks, targets, device).items():
                sums[name] += float(tasks[name].loss(outputs[name], target)) * n
            count += n
    if not count:
        raise ConfigError("the validation data is empty; candidate losses need at least one sample")
    return {name: total / count for name, total in sums.items()}


def validation_losses(
    graph: MTGraph, params: ParamStore, tasks: Mapping[str, Task], data: Dataset | DataLoader, *, batch_size: int = 64
) -> dict[str, float]:
    """Each task's loss (its own training loss) of ``graph`` with ``params`` over ``data``.

    The mean over samples of the task's loss (each batch's loss weighted by
    its size), in eval mode, without gradients. These are the losses
    network selection compares (papers/003 §5: ``L(n, t)``).

    Args:
        graph: the network.
        params: its weights.
        tasks: task name -> Task (at least the graph's tasks).
        data: Dataset or DataLoader of ``(image, {target: tensor})``.
        batch_size: batch size when ``data`` is a Dataset.

    Returns:
        Mean loss per task of the graph.

    Raises:
        ConfigError: ``data`` is empty.
        DataError: a batch without a task's target.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.grouping import validation_losses
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=2), torch.zeros(2, 3, 32, 32))
        >>> tasks = {"seg": segmentation(5, hidden=4), "depth": depth(hidden=4)}
        >>> graph = mtgraph.one_net(backbone.num_blocks, list(tasks))
        >>> heads = {name: task.make_head(backbone.output_shape[0], (32, 32)) for name, task in tasks.items()}
        >>> params = mtgraph.ParamStore.create(graph, backbone, heads)
        >>> losses = validation_losses(graph, params, tasks, SceneDataset(4, 32, seed=1), batch_size=2)
        >>> list(losses), all(value > 0 for value in losses.values())
        (['seg', 'depth'], True)
    """
    return _module_losses(compile_graph(graph, params), {t: tasks[t] for t in graph.tasks}, data, batch_size)


def network_costs(graph: MTGraph, params: ParamStore) -> tuple[int, dict[str, int], int]:
    """``(trunk MACs, {task: head MACs}, parameters)`` of a network, per image (:func:`mtgraph.cost`).

    The trunk is every node but the heads; a compiled solution costs the sum
    of its networks' trunks plus the heads it keeps.

    Args:
        graph: the network.
        params: its weights.

    Returns:
        ``(trunk MACs, {task: head MACs}, parameter count)``.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.grouping import network_costs
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=2), torch.zeros(2, 3, 32, 32))
        >>> tasks = {"seg": segmentation(5, hidden=4), "depth": depth(hidden=4)}
        >>> graph = mtgraph.one_net(backbone.num_blocks, list(tasks))
        >>> heads = {name: task.make_head(backbone.output_shape[0], (32, 32)) for name, task in tasks.items()}
        >>> params = mtgraph.ParamStore.create(graph, backbone, heads)
        >>> trunk, heads, count = network_costs(graph, params)
        >>> trunk == backbone.macs, sorted(heads), count == mtgraph.cost(graph, params).total_params
        (True, ['depth', 'seg'], True)
    """
    report = cost(graph, params)
    heads: dict[str, int] = {}
    trunk = 0
    for node in report.nodes:
        item = graph.nodes[node.node]
        if isinstance(item, Head):
            heads[item.task] = node.macs
        else:
            trunk += node.macs
    return trunk, heads, report.total_params


def _latency_ms(graph: MTGraph, params: ParamStore, folder: Path, repeats: int) -> float:
    from mtgraph.exporters.onnx import export_onnx
    from mtgraph.exporters.runtime import open_session

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = export_onnx(graph, params, Path(tmp) / "network.onnx").path
        session = open_session(path, providers="CPUExecutionProvider", threads=1)
        x = params.backbone.example_input(1).numpy()
        for _ in range(3):
            session.run(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


class _ValidationTracker(Hook):
    """Measures validation losses at every epoch end and keeps the best weights (in checkpoints too)."""

    name = "grouping-validation"

    def __init__(self, tasks: Mapping[str, Task], data: Dataset | DataLoader, batch_size: int, keep_best: bool) -> None:
        self.tasks = dict(tasks)
        self.data = data
        self.batch_size = batch_size
        self.keep_best = keep_best
        self.evaluations: list[dict[str, Any]] = []
        self.best_mean = math.inf
        self.best_step = -1
        self.best: dict[str, torch.Tensor] = {}
        self.aliases: dict[str, str] = {}

    def consider(self, losses: Mapping[str, float], step: int, params: ParamStore) -> None:
        """Keep ``params`` if their mean loss is the lowest so far (and ``keep_best``)."""
        mean = math.fsum(losses.values()) / len(losses)
        if self.keep_best and mean < self.best_mean:
            self.best_mean, self.best_step = mean, step
            self.best, self.aliases = state_tensors(params)

    def on_epoch_end(self, state: TrainState) -> None:
        losses = _module_losses(state.module, self.tasks, self.data, self.batch_size)
        self.evaluations.append({"epoch": state.epoch, "step": state.step, "losses": losses})
        self.consider(losses, state.step, state.params)

    def state_dict(self) -> dict[str, Any]:
        return {
            "evaluations": self.evaluations,
            "best_mean": self.best_mean,
            "best_step": self.best_step,
            "best": dict(self.best),
            "aliases": dict(self.aliases),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.evaluations = [dict(e) for e in state.get("evaluations", [])]
        self.best_mean = float(state.get("best_mean", math.inf))
        self.best_step = int(state.get("best_step", -1))
        self.best = dict(state.get("best", {}))
        self.aliases = dict(state.get("aliases", {}))


class _HalveOnPlateau(Hook):
    """Halves every learning rate after an epoch whose mean training loss is not below the best so far (papers/003 §3).

    The training loss is the unweighted mean over the network's tasks, as
    the network is trained on. The paper halves the rate "every time the
    training loss stopped decreasing"; its authors' code decides that with a
    t-test over windows of 0.5-2 M examples, far more than a run here sees,
    so the test is simplified to epoch means.
    """

    name = "grouping-halve-lr"

    def __init__(self) -> None:
        self.best = math.inf
        self.total = 0.0
        self.count = 0
        self.halved_at: list[int] = []

    def on_step_end(self, state: TrainState) -> None:
        if state.losses:
            self.total += math.fsum(state.losses.values()) / len(state.losses)
            self.count += 1

    def on_epoch_end(self, state: TrainState) -> None:
        if self.count:
            mean = self.total / self.count
            if mean < self.best:
                self.best = mean
            else:
                for optimizer in state.optimizers.values():
                    for group in optimizer.param_groups if optimizer is not None else ():
                        group["lr"] *= 0.5
                self.halved_at.append(state.epoch)
        self.total, self.count = 0.0, 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "total": self.total, "count": self.count, "halved_at": list(self.halved_at)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = float(state.get("best", math.inf))
        self.total = float(state.get("total", 0.0))
        self.count = int(state.get("count", 0))
        self.halved_at = [int(e) for e in state.get("halved_at", [])]


def _finished_record(setup: TrainingSetup, spec: CandidateSpec) -> CandidateRecord | None:
    """The record of an earlier run of ``spec`` in the folder, or None; ConfigError if it belongs to another setup."""
    path = setup.record_path(spec)
    if not path.is_file():
        return None
    record = CandidateRecord.from_json(path.read_text(encoding="utf-8"), origin=str(path))
    wanted = setup.fingerprint(spec)
    if record.fingerprint != wanted:
        raise ConfigError(
            f"{str(path)!r} holds candidate {spec.name} ({spec.phase}) of a different run (fingerprint "
            f"{record.fingerprint} != {wanted}: other options, seed, data or initial weights); use another folder "
            "or delete that one"
        )
    return record


def _claim_job(setup: TrainingSetup, spec: CandidateSpec) -> Path:
    """Create the job folder and its ``<phase>.job.json``; refuse a folder left by another setup."""
    folder = setup.job_folder(spec)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"{spec.phase}.job.json"
    wanted = setup.fingerprint(spec)
    if marker.is_file():
        try:
            found = json.loads(marker.read_text(encoding="utf-8")).get("fingerprint")
        except json.JSONDecodeError:
            found = None
        if found != wanted:
            raise ConfigError(
                f"{str(folder)!r} holds checkpoints of candidate {spec.name} ({spec.phase}) from a different run "
                f"(fingerprint {found} != {wanted}); use another folder or delete that one"
            )
    else:
        atomic_write_bytes(marker, json.dumps({"name": spec.name, "phase": spec.phase, "fingerprint": wanted}).encode())
    return folder


def run_candidate(setup: TrainingSetup, spec: CandidateSpec) -> CandidateRecord:
    """Train (or, if already done in the folder, read) candidate ``spec``; return its record.

    Builds the One-Net over ``spec.tasks`` from copies of the backbone's
    blocks and the tasks' heads, trains it with :func:`mtgraph.train.fit`
    (checkpointed under the job folder, phase ``spec.phase_name``, resumed if a
    checkpoint is there), measures validation losses at every epoch end,
    keeps the weights ``setup.options.keep`` says, saves the network
    (``<job>/<phase>-model``), costs it and writes the JSON record last
    (atomically), so a record exists only for a finished job.

    Args:
        setup: the shared setup (folder, data, options, ...).
        spec: the job.

    Returns:
        The job's :class:`CandidateRecord` (``reused`` when read from the folder).

    Raises:
        ConfigError: the folder holds this job from a different setup, or
            the spec needs a variant backbone the setup does not have.
        CheckpointError: a malformed record or checkpoint in the folder.

    Examples:
        >>> import tempfile, torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.grouping import CandidateSpec, TrainingSetup, TrainOptions, run_candidate
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=2), torch.zeros(2, 3, 32, 32))
        >>> tasks = {"seg": segmentation(5, hidden=4), "depth": depth(hidden=4)}
        >>> heads = {name: task.make_head(backbone.output_shape[0], (32, 32)) for name, task in tasks.items()}
        >>> folder = tempfile.TemporaryDirectory()
        >>> setup = TrainingSetup(backbone, heads, tasks, SceneDataset(4, 32, seed=0), SceneDataset(4, 32, seed=1),
        ...                       TrainOptions(epochs=1, batch_size=4, eval_batch_size=4), folder.name)
        >>> record = run_candidate(setup, CandidateSpec(("seg", "depth")))
        >>> record.name, record.reused, sorted(record.val_losses)
        ('depth+seg', False, ['depth', 'seg'])
        >>> run_candidate(setup, CandidateSpec(("seg", "depth"))).reused  # a rerun reads the record
        True
        >>> folder.cleanup()
    """
    done = _finished_record(setup, spec)
    if done is not None:
        return done
    start = time.perf_counter()
    folder = _claim_job(setup, spec)
    backbone, heads = setup.backbone_of(spec)
    tasks = {t: setup.tasks[t] for t in setup.tasks if t in spec.tasks}
    graph = one_net(backbone.num_blocks, tuple(tasks))
    params = ParamStore.create(graph, backbone, {t: heads[t] for t in tasks})
    options = setup.options
    keep_best = options.keep == "best" and spec.phase == "full"
    tracker = _ValidationTracker(tasks, setup.val_data, options.eval_batch_size, keep_best)
    steps = options.steps(spec.phase, setup.batches_per_epoch())
    hooks: list[Hook] = [tracker]
    if options.halve_lr_on_plateau:
        hooks.append(_HalveOnPlateau())
    fitted = fit(
        graph,
        params,
        tasks,
        setup.train_data,
        steps=steps,
        epochs=math.ceil(steps / setup.batches_per_epoch()),
        batch_size=options.batch_size,
        optimizer=options.make_optimizer(),
        hooks=hooks,
        seed=setup.seed,
        checkpoint=CheckpointConfig(folder / "checkpoints", keep=1),
        phase=spec.phase_name,
        resume=True,
        device=setup.device,
        progress=False,
    )
    graph, params = fitted.graph, fitted.params
    evaluations = list(tracker.evaluations)
    if not evaluations or evaluations[-1]["step"] != fitted.step:
        # The run ended mid-epoch: measure the final weights too.
        losses = validation_losses(graph, params, tasks, setup.val_data, batch_size=options.eval_batch_size)
        evaluations.append({"epoch": None, "step": fitted.step, "losses": losses})
        tracker.consider(losses, fitted.step, params)
    if keep_best and tracker.best_step != fitted.step:
        load_state_tensors(params, tracker.best, tracker.aliases, origin=f"best weights of candidate {spec.name}")
    kept_step = tracker.best_step if keep_best else fitted.step
    kept = next(e for e in evaluations if e["step"] == kept_step)
    model = folder.relative_to(setup.folder) / f"{spec.phase}-model"
    save(graph, params, setup.folder / model)
    macs, head_macs, count = network_costs(graph, params)
    latency = _latency_ms(graph, params, folder, options.latency_repeats) if options.latency else None
    record = CandidateRecord(
        name=spec.name,
        tasks=tuple(tasks),
        label=spec.label,
        phase=spec.phase,
        val_losses={t: float(v) for t, v in kept["losses"].items()},
        evaluations=tuple(evaluations),
        kept_step=int(kept_step),
        steps=int(fitted.step),
        macs=int(macs),
        head_macs=head_macs,
        params=int(count),
        latency_ms=latency,
        seconds=time.perf_counter() - start,
        model=model.as_posix(),
        fingerprint=setup.fingerprint(spec),
    )
    atomic_write_bytes(setup.record_path(spec), record.to_json().encode())
    return record


def load_candidate(setup: TrainingSetup, record: CandidateRecord) -> tuple[MTGraph, ParamStore]:
    """The trained network of ``record``, rebuilt from its saved files (``mtgraph.load``).

    Args:
        setup: the setup the record was trained under.
        record: the candidate's record.

    Returns:
        ``(graph, params)``.

    Raises:
        CheckpointError: the saved files are missing or do not fit the backbone.

    Examples:
        >>> import tempfile, torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.grouping import CandidateSpec, TrainingSetup, TrainOptions, load_candidate, run_candidate
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=2), torch.zeros(2, 3, 32, 32))
        >>> tasks = {"seg": segmentation(5, hidden=4), "depth": depth(hidden=4)}
        >>> heads = {name: task.make_head(backbone.output_shape[0], (32, 32)) for name, task in tasks.items()}
        >>> folder = tempfile.TemporaryDirectory()
        >>> setup = TrainingSetup(backbone, heads, tasks, SceneDataset(4, 32, seed=0), SceneDataset(4, 32, seed=1),
        ...                       TrainOptions(epochs=1, batch_size=4, eval_batch_size=4), folder.name)
        >>> graph, params = load_candidate(setup, run_candidate(setup, CandidateSpec(("depth",))))
        >>> graph.tasks, sorted(params.keys())[-1]
        (('depth',), 'head.depth')
        >>> folder.cleanup()
    """
    backbone, heads = setup.backbone_of(record.spec)
    return load(setup.folder / record.model, backbone, {t: heads[t] for t in record.tasks})


# --------------------------------------------------------------------------- #
# Running many jobs
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class CandidateRun:
    """Records of a batch of jobs, by candidate name, and which were trained now or read from the folder.

    Attributes:
        records: candidate name -> record, in the order of the specs.
        trained: names trained by this call.
        reused: names read from the folder.

    Examples:
        >>> import tempfile, torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.grouping import CandidateSpec, TrainingSetup, TrainOptions, train_candidates
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=2), torch.zeros(2, 3, 32, 32))
        >>> tasks = {"seg": segmentation(5, hidden=4), "depth": depth(hidden=4)}
        >>> heads = {name: task.make_head(backbone.output_shape[0], (32, 32)) for name, task in tasks.items()}
        >>> folder = tempfile.TemporaryDirectory()
        >>> setup = TrainingSetup(backbone, heads, tasks, SceneDataset(4, 32, seed=0), SceneDataset(4, 32, seed=1),
        ...                       TrainOptions(epochs=1, batch_size=4, eval_batch_size=4), folder.name)
        >>> run = train_candidates(setup, [CandidateSpec(("depth",))])
        >>> list(run.records), run.trained, run.reused
        (['depth'], ('depth',), ())
        >>> folder.cleanup()
    """

    records: dict[str, CandidateRecord]
    trained: tuple[str, ...] = field(default=())
    reused: tuple[str, ...] = field(default=())


def _workers(workers: int | None, jobs: int) -> int:
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer or None, got {workers!r}")
    return max(1, min(workers, jobs))


def _report(progress: bool, index: int, total: int, record: CandidateRecord) -> None:
    if progress:
        verb = "reused" if record.reused else f"trained in {record.seconds:.1f} s"
        losses = ", ".join(f"{t}={v:.4g}" for t, v in record.val_losses.items())
        sys.stderr.write(f"candidate {index}/{total} {record.name} ({record.phase}) {verb}: {losses}\n")


def train_candidates(
    setup: TrainingSetup,
    specs: Sequence[CandidateSpec],
    *,
    executor: str = "sequential",
    workers: int | None = None,
    progress: bool = False,
) -> CandidateRun:
    """Run every job of ``specs`` (skipping those finished in the folder); return their records.

    ``executor``: ``"sequential"`` (in this process, in order),
    ``"process"`` (a pool of ``workers`` spawned local processes, default
    one per CPU; torch threads are divided among them) or ``"ray"`` (tasks
    on the Ray cluster ``ray.init()`` connects to; needs ``pip install
    ray``). Every executor runs the same :func:`run_candidate`, so the
    records are the same whichever ran them.

    With ``"process"`` the workers are started with ``spawn``: a script
    calling this must guard its entry point with ``if __name__ ==
    "__main__":``, and the models, datasets and task functions must be
    importable (module-level), since the setup is pickled to each worker
    (ConfigError otherwise, before any worker starts).

    Args:
        setup: the shared setup.
        specs: the jobs (each network once).
        executor: ``"sequential"``, ``"process"`` or ``"ray"``.
        workers: processes for ``"process"`` (None: one per CPU).
        progress: one line per candidate on stderr.

    Returns:
        A :class:`CandidateRun`.

    Raises:
        ConfigError: an unknown executor, a network listed twice, ray not
            installed, an unpicklable setup, or a folder of another run.

    Examples:
        >>> import tempfile, torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.grouping import CandidateSpec, TrainingSetup, TrainOptions, train_candidates
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=2), torch.zeros(2, 3, 32, 32))
        >>> tasks = {"seg": segmentation(5, hidden=4), "depth": depth(hidden=4)}
        >>> heads = {name: task.make_head(backbone.output_shape[0], (32, 32)) for name, task in tasks.items()}
        >>> folder = tempfile.TemporaryDirectory()
        >>> setup = TrainingSetup(backbone, heads, tasks, SceneDataset(4, 32, seed=0), SceneDataset(4, 32, seed=1),
        ...                       TrainOptions(epochs=1, batch_size=4, eval_batch_size=4), folder.name)
        >>> specs = [CandidateSpec(("seg",)), CandidateSpec(("depth",))]
        >>> train_candidates(setup, specs[:1]).trained
        ('seg',)
        >>> run = train_candidates(setup, specs)  # seg is already done
        >>> run.trained, run.reused
        (('depth',), ('seg',))
        >>> folder.cleanup()
    """
    check_executor(executor, 1)  # fails before any work on an unknown executor or a missing ray
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        # Records are returned by network name: one job per network per call (run phases in separate calls).
        raise ConfigError(f"network(s) {sorted({n for n in names if names.count(n) > 1})} are listed twice; "
                          "give each network once per call (one phase per call)")
    records: dict[str, CandidateRecord] = {}
    todo: list[CandidateSpec] = []
    for spec in specs:
        found = _finished_record(setup, spec)
        if found is None:
            todo.append(spec)
        else:
            records[spec.name] = found
            _report(progress, len(records), len(specs), found)

    def finished(spec: CandidateSpec, record: CandidateRecord) -> None:
        records[spec.name] = record
        _report(progress, len(records), len(specs), record)

    if todo:
        pool = _workers(workers, len(todo)) if executor == "process" else 1
        # torch threads are divided among the pool's processes; a Ray task gets one (num_cpus=1 on the cluster).
        run_jobs(run_candidate, setup, todo, executor=executor, workers=pool,
                 threads=_threads_per_worker(pool) if executor == "process" else 1, on_result=finished)
    ordered = {s.name: records[s.name] for s in specs}
    return CandidateRun(
        records=ordered,
        trained=tuple(n for n, r in ordered.items() if not r.reused),
        reused=tuple(n for n, r in ordered.items() if r.reused),
    )


def _threads_per_worker(workers: int) -> int:
    return max(1, torch.get_num_threads() // workers)
