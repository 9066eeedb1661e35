"""Training checkpoints: one safetensors file per checkpoint, written atomically, never pickled.

A checkpoint holds everything a run needs to continue exactly where it
stopped: the IR text of the current graph, every weight, the optimizer and
LR-scheduler states, the RNG states (torch, CUDA, numpy, python), the step,
the epoch, the position of every data stream, the hooks' (strategy) state and
the history so far. Tensors go into the safetensors body; everything else is
one JSON document in the file's metadata, where each tensor is referenced by
name. Loading parses JSON and reads tensors: nothing in the file is executed,
and no pickle is involved (optimizer state dicts are flattened into tensors
plus JSON by :func:`flatten_state`).

Files are named ``<phase>.step-<step>.safetensors`` (step = optimizer steps
done), written through a temporary file and a rename, so a killed run leaves
only complete checkpoints. A folder may hold several phases (a strategy's
warm-up, search and retraining), each resumed separately.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from mtgraph.errors import CheckpointError, ConfigError, MTGraphError
from mtgraph.ir.graph import MTGraph
from mtgraph.ir.nodes import Gate, head_weights
from mtgraph.ir.text import parse_graph, print_graph
from mtgraph.modules import MixGate, gate_from_spec
from mtgraph.params import ParamStore
from mtgraph.persist import atomic_write_bytes, load_state_tensors, state_tensors

__all__ = [
    "CheckpointConfig",
    "Checkpoint",
    "FORMAT",
    "checkpoint_path",
    "list_checkpoints",
    "latest_checkpoint",
    "resume_checkpoint",
    "CheckpointWarning",
    "write_checkpoint",
    "load_checkpoint",
    "flatten_state",
    "unflatten_state",
    "weights_state",
]

FORMAT = "mtgraph-checkpoint-1"
_WEIGHTS = "weights/"
_PHASE = re.compile(r"[A-Za-z0-9_\-]+")
_NAME = re.compile(r"(?P<phase>[A-Za-z0-9_\-]+)\.step-(?P<step>\d+)\.safetensors")


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and when :func:`~mtgraph.train.fit` writes checkpoints.

    Attributes:
        folder: the checkpoint folder (created if needed).
        every: write a checkpoint every this many optimizer steps
            (None: only at epoch ends and at the end of the run).
        at_epoch_end: also write one at the end of every epoch (after the
            hooks' ``on_epoch_end`` and any rewrite), and always at the end.
        keep: how many of a phase's most recent checkpoints to keep (>= 1).

    Raises:
        ConfigError: ``every`` or ``keep`` is below 1.

    Examples:
        >>> from mtgraph.train import CheckpointConfig
        >>> config = CheckpointConfig("runs/ckpt", every=100)
        >>> config.every, config.keep, config.at_epoch_end
        (100, 2, True)
        >>> CheckpointConfig("runs/ckpt", keep=0)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: checkpoint 'keep' must be >= 1, got 0
    """

    folder: str | os.PathLike[str]
    every: int | None = None
    at_epoch_end: bool = True
    keep: int = 2

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise ConfigError(f"checkpoint interval 'every' must be >= 1 steps, got {self.every}")
        if self.keep < 1:
            raise ConfigError(f"checkpoint 'keep' must be >= 1, got {self.keep}")


def _check_phase(phase: str) -> str:
    if not isinstance(phase, str) or not _PHASE.fullmatch(phase):
        raise ConfigError(f"phase name {phase!r} must be letters, digits, '_' or '-' (it names checkpoint files)")
    return phase


def checkpoint_path(folder: str | os.PathLike[str], phase: str, step: int) -> Path:
    """The file a checkpoint of ``phase`` after ``step`` optimizer steps is written to.

    Args:
        folder: the checkpoint folder.
        phase: the phase name (letters, digits, ``_`` or ``-``).
        step: optimizer steps done.

    Returns:
        ``folder / "<phase>.step-<step, 9 digits>.safetensors"``.

    Raises:
        ConfigError: ``phase`` cannot name a file.

    Examples:
        >>> from mtgraph.train import checkpoint_path
        >>> checkpoint_path("runs", "warmup", 12).as_posix()
        'runs/warmup.step-000000012.safetensors'
        >>> checkpoint_path("runs", "warm up", 12)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: phase name 'warm up' must be letters, digits, '_' or '-' (it names checkpoint files)
    """
    return Path(folder) / f"{_check_phase(phase)}.step-{step:09d}.safetensors"


def list_checkpoints(folder: str | os.PathLike[str], phase: str | None = None) -> list[Path]:
    """Checkpoint files in ``folder`` (of ``phase`` only, if given), oldest step first.

    Args:
        folder: the checkpoint folder (a missing folder has none).
        phase: only this phase's checkpoints (default: every phase).

    Returns:
        The paths, by step (then phase).

    Examples:
        >>> import tempfile
        >>> from mtgraph.train import checkpoint_path, list_checkpoints
        >>> folder = tempfile.TemporaryDirectory()
        >>> for phase, step in (("train", 20), ("warmup", 5)):
        ...     _ = checkpoint_path(folder.name, phase, step).write_bytes(b"")  # empty stand-ins; only names count
        >>> [path.name for path in list_checkpoints(folder.name)]
        ['warmup.step-000000005.safetensors', 'train.step-000000020.safetensors']
        >>> [path.name for path in list_checkpoints(folder.name, "train")]
        ['train.step-000000020.safetensors']
        >>> folder.cleanup()
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    found: list[tuple[str, int, Path]] = []
    for path in root.iterdir():
        match = _NAME.fullmatch(path.name)
        if match and (phase is None or match["phase"] == phase):
            found.append((match["phase"], int(match["step"]), path))
    return [p for _, _, p in sorted(found, key=lambda item: (item[1], item[0]))]


def latest_checkpoint(folder: str | os.PathLike[str], phase: str | None = None) -> Path | None:
    """The most advanced checkpoint of ``phase`` in ``folder``, or None.

    Args:
        folder: the checkpoint folder.
        phase: only this phase's checkpoints (default: every phase).

    Returns:
        The path of the checkpoint with the most steps, or None if there is none.

    Examples:
        >>> import tempfile
        >>> from mtgraph.train import checkpoint_path, latest_checkpoint
        >>> folder = tempfile.TemporaryDirectory()
        >>> for step in (5, 20, 10): _ = checkpoint_path(folder.name, "train", step).write_bytes(b"")
        >>> latest_checkpoint(folder.name, "train").name
        'train.step-000000020.safetensors'
        >>> latest_checkpoint(folder.name, "search") is None
        True
        >>> folder.cleanup()
    """
    found = list_checkpoints(folder, phase)
    return found[-1] if found else None


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped when resuming (it could not be read); training resumes from an older one.

    Examples:
        >>> from mtgraph.train import CheckpointWarning
        >>> issubclass(CheckpointWarning, UserWarning)
        True
    """


#: Suffix given to a checkpoint file that could not be read when resuming: it no longer counts as a checkpoint
#: (so a resumed run never picks it up again, nor deletes a good checkpoint in its favour), but it is kept.
UNREADABLE_SUFFIX = ".unreadable"


def resume_checkpoint(folder: str | os.PathLike[str], phase: str) -> Checkpoint | None:
    """The newest *readable* checkpoint of ``phase`` in ``folder``, or None when the phase has none.

    A checkpoint that cannot be read (truncated by a full disk, damaged by a
    copy) is skipped with a :class:`CheckpointWarning` naming it, and renamed
    with the suffix :data:`UNREADABLE_SUFFIX` (kept for inspection, never
    deleted), so the run resumes from the newest one that is whole.

    Args:
        folder: the checkpoint folder.
        phase: the phase to resume.

    Returns:
        The loaded checkpoint, or None if ``phase`` has no checkpoint at all.

    Raises:
        CheckpointError: every checkpoint of the phase is unreadable (each is
            named with its reason; delete or move them to start the phase over).

    Examples:
        >>> import tempfile, warnings
        >>> from mtgraph.train import checkpoint_path, resume_checkpoint
        >>> folder = tempfile.TemporaryDirectory()
        >>> _ = checkpoint_path(folder.name, "train", 4).write_bytes(b"truncated")
        >>> resume_checkpoint(folder.name, "search") is None  # no checkpoint of that phase
        True
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     resume_checkpoint(folder.name, "train")
        Traceback (most recent call last):
        ...
        mtgraph.errors.CheckpointError: no readable checkpoint of phase 'train' in ...
        >>> folder.cleanup()
    """
    candidates = list_checkpoints(folder, phase)
    skipped: list[str] = []
    for path in reversed(candidates):
        try:
            found = load_checkpoint(path)
        except CheckpointError as exc:
            aside = path.with_name(path.name + UNREADABLE_SUFFIX)
            try:
                path.rename(aside)
                kept = f"renamed to {aside.name!r}"
            except OSError as rename_error:
                kept = f"left in place (renaming failed: {rename_error.strerror or rename_error})"
            skipped.append(f"{path.name} ({exc}; {kept})")
            warnings.warn(f"skipping unreadable checkpoint {str(path)!r} ({exc}); it was {kept}",
                          CheckpointWarning, stacklevel=2)
            continue
        return found
    if skipped:
        raise CheckpointError(
            f"no readable checkpoint of phase {phase!r} in {str(folder)!r}: {'; '.join(skipped)}. "
            "Remove these files to start the phase over"
        )
    return None


# ---------------------------------------------------------------------------
# Nested state <-> (JSON, tensors)


def flatten_state(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-compatible copy of ``value`` whose tensors are moved into ``tensors`` under ``prefix``.

    ``value`` may nest dicts, lists, tuples, tensors, numbers, strings, bools
    and None (what optimizer and scheduler ``state_dict()`` return). Tensors
    become ``{"$tensor": name}``, tuples ``{"$tuple": [...]}``, dicts with
    non-string keys ``{"$items": [[key, value], ...]}``. Anything else (a
    function, an arbitrary object) raises CheckpointError naming where it is.
    """
    if isinstance(value, torch.Tensor):
        name = prefix
        if name in tensors:
            raise CheckpointError(f"two tensors of the checkpoint state are both named {name!r}")
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        return {"$tensor": name}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # JSON has no NaN/inf; keep them exact as strings.
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, tuple):
        return {"$tuple": [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: flatten_state(v, f"{prefix}/{k}", tensors) for k, v in value.items()}
        items = []
        for k, v in value.items():
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise CheckpointError(f"checkpoint state {prefix!r} has a key of type {type(k).__name__}")
            items.append([k, flatten_state(v, f"{prefix}/{k}", tensors)])
        return {"$items": items}
    raise CheckpointError(
        f"checkpoint state {prefix!r} holds a {type(value).__name__}, which cannot be saved without pickling; "
        "state must be tensors, numbers, strings, bools, None, lists, tuples and dicts"
    )


def unflatten_state(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Invert :func:`flatten_state`, taking tensors from ``tensors``."""
    if isinstance(value, list):
        return [unflatten_state(v, tensors) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$tensor"}:
            name = value["$tensor"]
            if name not in tensors:
                raise CheckpointError(f"the checkpoint refers to tensor {name!r}, which it does not contain")
            return tensors[name]
        if set(value) == {"$tuple"}:
            return tuple(unflatten_state(v, tensors) for v in value["$tuple"])
        if set(value) == {"$float"}:
            return float(value["$float"])
        if set(value) == {"$items"}:
            return {k: unflatten_state(v, tensors) for k, v in value["$items"]}
        return {k: unflatten_state(v, tensors) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------
# Writing and reading


def weights_state(graph: MTGraph, params: ParamStore, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Put the weights ``graph`` uses into ``tensors``; return the JSON describing them (IR text, gates, aliases)."""
    used = params.restricted(graph)
    weights, aliases = state_tensors(used)
    for name, tensor in weights.items():
        tensors[_WEIGHTS + name] = tensor
    gates = {key: module.spec() for key, module in used.items() if isinstance(module, MixGate)}
    return {"graph": print_graph(graph), "gates": gates, "aliases": aliases}


def write_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Path:
    """Write one checkpoint file atomically: ``tensors`` plus the JSON ``state`` in its metadata."""
    target = Path(path)
    try:
        text = json.dumps(state, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint state for {str(target)!r} is not JSON: {exc}") from exc
    try:
        data = save_bytes(dict(tensors), metadata={"format": FORMAT, "state": text})
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot serialise checkpoint tensors for {str(target)!r}: {exc}") from exc
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {str(target)!r}: {exc.strerror or exc}") from exc
    return target


@dataclass
class Checkpoint:
    """A checkpoint as read from disk.

    Attributes:
        path: the file it was read from.
        phase: the phase (one :func:`~mtgraph.train.fit` call) it belongs to.
        step: optimizer steps done when it was written.
        epoch: epochs (cycles) completed when it was written.
        finished: True for the checkpoint written when the phase ended.
        graph: the graph being trained at that point (rewrites included).
        state: the whole JSON state, tensors resolved (optimizer, RNG, streams, hooks, history, ...).
        tensors: every tensor of the file by name (weights under ``weights/``).

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth
        >>> from mtgraph.train import fit, load_checkpoint
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()),
        ...                          torch.zeros(2, 3, 32, 32))
        >>> tasks = {"depth": depth(hidden=4)}
        >>> graph = mtgraph.one_net(backbone.num_blocks, ["depth"])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"depth": tasks["depth"].make_head(4, (32, 32))})
        >>> import tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> result = fit(graph, params, tasks, SceneDataset(4, 32, seed=0), steps=2, batch_size=2,
        ...              checkpoint=folder.name, progress=False)
        >>> checkpoint = load_checkpoint(result.checkpoint)
        >>> checkpoint.phase, checkpoint.step, checkpoint.finished, sorted(checkpoint.weights)[:2]
        ('train', 2, True, ['b0.depth/0.bias', 'b0.depth/0.weight'])
        >>> checkpoint.params(params) is params  # same graph: the weights are loaded into the template
        True
        >>> folder.cleanup()
    """

    path: Path
    phase: str
    step: int
    epoch: int
    finished: bool
    graph: MTGraph
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(repr=False)

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """Every saved weight as ``"key/name"`` -> tensor (tied tensors once; see ``state['aliases']``)."""
        return {k[len(_WEIGHTS):]: v for k, v in self.tensors.items() if k.startswith(_WEIGHTS)}

    def load_weights(self, params: ParamStore) -> None:
        """Copy the saved weights into ``params``, which must hold exactly this checkpoint graph's keys."""
        used = set(params.restricted(self.graph).keys())
        load_state_tensors(params, self.weights, self.state["aliases"], origin=str(self.path), keys=used)

    def params(self, template: ParamStore) -> ParamStore:
        """A ParamStore for :attr:`graph` holding the saved weights.

        When ``template`` (the store training started from) already has every
        key of the graph, the weights are loaded into its modules. Otherwise
        (the graph was rewritten mid-training) fresh modules are built the way
        :meth:`ParamStore.create` does: blocks from ``template.backbone``,
        heads copied from ``template``'s heads, gates from their saved specs.
        """
        keys = set(self.graph.weight_keys()) | {head_weights(t) for t in self.graph.tasks}
        if keys <= set(template.keys()):
            store = template
        else:
            try:
                heads = {t: template[head_weights(t)] for t in self.graph.tasks}
            except KeyError:
                missing = [t for t in self.graph.tasks if head_weights(t) not in template]
                raise CheckpointError(
                    f"{str(self.path)!r}: the template ParamStore has no heads for tasks {missing}"
                ) from None
            try:
                gates = {key: gate_from_spec(spec) for key, spec in self.state["gates"].items()}
            except MTGraphError as exc:
                raise CheckpointError(f"{str(self.path)!r} has a malformed gate spec: {exc}") from exc
            missing_gates = sorted({n.weights for n in self.graph.nodes if isinstance(n, Gate)} - set(gates))
            if missing_gates:
                raise CheckpointError(f"{str(self.path)!r} has no spec for gates {missing_gates}")
            store = ParamStore.create(self.graph, template.backbone, heads, gates=gates)
        self.load_weights(store)
        return store


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint` (JSON and tensors only; nothing is executed).

    Args:
        path: the checkpoint file.

    Returns:
        The :class:`Checkpoint`.

    Raises:
        CheckpointError: a missing, truncated or foreign file, or malformed metadata.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth
        >>> from mtgraph.train import fit, latest_checkpoint, load_checkpoint
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()),
        ...                          torch.zeros(2, 3, 32, 32))
        >>> tasks = {"depth": depth(hidden=4)}
        >>> graph = mtgraph.one_net(backbone.num_blocks, ["depth"])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"depth": tasks["depth"].make_head(4, (32, 32))})
        >>> import tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> _ = fit(graph, params, tasks, SceneDataset(4, 32, seed=0), steps=2, batch_size=2, checkpoint=folder.name,
        ...         progress=False)
        >>> checkpoint = load_checkpoint(latest_checkpoint(folder.name, "train"))
        >>> checkpoint.step, checkpoint.graph.tasks
        (2, ('depth',))
        >>> load_checkpoint(folder.name + "/missing.safetensors")
        Traceback (most recent call last):
        ...
        mtgraph.errors.CheckpointError: checkpoint '...missing.safetensors' does not exist
        >>> folder.cleanup()
    """
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"checkpoint {str(source)!r} does not exist")
    try:
        with safe_open(str(source), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(source))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{str(source)!r} is not a valid checkpoint file ({exc}); it may be truncated") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{str(source)!r} is not an mtgraph checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})")
    try:
        raw = json.loads(metadata["state"])
        state = unflatten_state(raw, tensors)
        graph = parse_graph(state["graph"])
        return Checkpoint(
            path=source,
            phase=str(state["phase"]),
            step=int(state["step"]),
            epoch=int(state["epoch"]),
            finished=bool(state["finished"]),
            graph=graph,
            state=state,
            tensors=tensors,
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{str(source)!r} has malformed checkpoint metadata: {type(exc).__name__}: {exc}") from exc
    except MTGraphError as exc:
        raise CheckpointError(f"{str(source)!r} holds an invalid graph: {exc}") from exc
