"""Units of an evaluation: one (architecture, seed) training run each, checkpointed and never run twice.

An evaluation folder holds, per seed, the strategy's search and one folder
per compared architecture::

    DIR/evaluation.json                 what the run is (a rerun must match it)
    DIR/search/seed-0/                  the strategy run: checkpoints/, record.json, result/ (as trained)
    DIR/plan/seed-0.json                the units of seed 0 (read back on a rerun, never redrawn)
    DIR/units/seed-0/<unit>/init/       the architecture with its fresh weights (mtgraph.save)
    DIR/units/seed-0/<unit>/checkpoints the unit's training checkpoints
    DIR/units/seed-0/<unit>/result.json the finished unit: metrics, steps, seconds

A unit is finished when its ``result.json`` exists (written atomically, last):
a rerun reads it back instead of training again; an interrupted unit
resumes from its last checkpoint. :func:`run_unit` is the job every executor
runs; it needs only the :class:`UnitSetup` (sent once per worker) and the
:class:`Unit` (a few strings), and writes its result into the folder, which
therefore must be visible to every worker.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mtgraph.errors import CheckpointError, ConfigError, TrainError
from mtgraph.evaluation.schedule import Schedule, retrain
from mtgraph.persist import atomic_write_bytes, load, save
from mtgraph.problem import Problem
from mtgraph.threads import CpuMonitor, ThreadChoice, apply_threads, available_cores, choose_threads

__all__ = ["KINDS", "Unit", "UnitRecord", "UnitSetup", "run_unit", "read_json", "write_json", "unit_slug"]

#: What a compared architecture is: the learned one, the two trivial ones, One-Net at the learned cost, a random draw.
KINDS = ("strategy", "stn", "one_net", "width_matched", "random")

RECORD_FORMAT = "mtgraph-evaluation-unit-1"
ARCH_INFO = "architecture.json"


def write_json(path: Path, data: Any, *, sort_keys: bool = True) -> None:
    """Write ``data`` as JSON to ``path`` atomically (folders created); ``sort_keys=False`` keeps the mappings' order.

    Raises:
        CheckpointError: the file cannot be written.

    Examples:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from mtgraph.evaluation.units import write_json
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     write_json(Path(folder) / "a" / "b.json", {"x": 1})
        ...     json.loads((Path(folder) / "a" / "b.json").read_text())
        {'x': 1}
    """
    try:
        text = json.dumps(data, indent=1, sort_keys=sort_keys, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot write {str(path)!r}: the data is not JSON ({exc})") from exc
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (text + "\n").encode())
    except OSError as exc:
        raise CheckpointError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc


def read_json(path: Path) -> Any:
    """Read a JSON file written by :func:`write_json`.

    Raises:
        CheckpointError: the file is missing, not UTF-8 or not JSON.

    Examples:
        >>> from pathlib import Path
        >>> from mtgraph.evaluation.units import read_json
        >>> read_json(Path("no-such-file.json"))
        Traceback (most recent call last):
        ...
        mtgraph.errors.CheckpointError: 'no-such-file.json' does not exist
    """
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable JSON file ({type(exc).__name__}: {exc})") from exc


def unit_slug(name: str) -> str:
    """A unit's folder name from its display name ("One-Net (width-matched)" -> "one-net-width-matched").

    Examples:
        >>> from mtgraph.evaluation.units import unit_slug
        >>> unit_slug("One-Net (width-matched)"), unit_slug("random 3")
        ('one-net-width-matched', 'random-3')
    """
    out = "".join(c.lower() if c.isalnum() else "-" for c in name)
    return "-".join(part for part in out.split("-") if part) or "unit"


@dataclass(frozen=True)
class Unit:
    """One architecture trained from scratch with one seed.

    Attributes:
        name: the architecture's name in the results (``"learned"``, ``"STN"``, ``"random 2"``).
        kind: one of :data:`KINDS`.
        seed: the run's seed.
        folder: the unit's folder, relative to the evaluation folder.
        multiplier: the width multiplier of ``problem.rescale`` the
            architecture is built on (None: the problem's own backbone).

    Examples:
        >>> from mtgraph.evaluation.units import Unit
        >>> Unit("STN", "stn", 0, "units/seed-0/stn").kind
        'stn'
        >>> Unit("STN", "baseline", 0, "units/seed-0/stn")
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: unit kind must be one of ['strategy', 'stn', 'one_net', 'width_matched', 'random'], got 'baseline'
    """

    name: str
    kind: str
    seed: int
    folder: str
    multiplier: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unit kind must be one of {list(KINDS)}, got {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        """The unit as JSON values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str) -> Unit:
        """Parse :meth:`to_dict` output (CheckpointError naming ``origin`` when malformed)."""
        try:
            multiplier = data.get("multiplier")
            return cls(str(data["name"]), str(data["kind"]), int(data["seed"]), str(data["folder"]),
                       None if multiplier is None else float(multiplier))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise CheckpointError(f"{origin} holds a malformed unit ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class UnitRecord:
    """A finished unit: what it measured and what it cost to train.

    Attributes:
        unit: the unit.
        metrics: task -> metric -> value on the validation data.
        steps: optimiser steps trained.
        seconds: wall time of the training and evaluation.
        reused: read back from an earlier run instead of trained (not stored).

    Examples:
        >>> from mtgraph.evaluation.units import Unit, UnitRecord
        >>> record = UnitRecord(Unit("STN", "stn", 0, "units/seed-0/stn"), {"depth": {"rmse": 0.5}}, 10, 1.5)
        >>> UnitRecord.from_json(record.to_json(), origin="result.json").metrics
        {'depth': {'rmse': 0.5}}
    """

    unit: Unit
    metrics: dict[str, dict[str, float]]
    steps: int
    seconds: float
    reused: bool = field(default=False, compare=False)

    def to_json(self) -> str:
        """The record as JSON text (``reused`` left out)."""
        data = {"format": RECORD_FORMAT, "unit": self.unit.to_dict(), "metrics": self.metrics, "steps": self.steps,
                "seconds": self.seconds}
        # Keys in their order (tasks and metrics as measured): a record read back sums them in the same order.
        return json.dumps(data, indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, origin: str) -> UnitRecord:
        """Parse :meth:`to_json` output; CheckpointError naming ``origin`` when it is malformed."""
        try:
            data = json.loads(text)
            if data.get("format") != RECORD_FORMAT:
                raise ValueError(f"not a {RECORD_FORMAT} record")
            metrics = {str(t): {str(m): float(v) for m, v in values.items()} for t, values in data["metrics"].items()}
            unit = Unit.from_dict(data["unit"], origin=origin)
            return cls(unit, metrics, int(data["steps"]), float(data["seconds"]), reused=True)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{origin} is not a valid unit record ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class UnitSetup:
    """What every unit of an evaluation shares (pickled once per worker process).

    Attributes:
        problem: the problem (its seed is replaced by each unit's).
        schedule: the training recipe.
        root: the evaluation folder (absolute, visible to every worker).
        threads: torch threads per unit (None: leave the process's setting).
        monitor: choose the threads again before every unit from the load
            this monitor saw since the last unit (in-process runs only;
            ``threads`` is then ignored).
    """

    problem: Problem
    schedule: Schedule
    root: str
    threads: int | None = None
    monitor: CpuMonitor | None = None


def result_path(root: str | os.PathLike[str], unit: Unit) -> Path:
    """Where a unit's finished record is."""
    return Path(root) / unit.folder / "result.json"


def finished(root: str | os.PathLike[str], unit: Unit) -> UnitRecord | None:
    """The unit's record if it finished in an earlier run, else None.

    Raises:
        CheckpointError: the record exists but is malformed or belongs to another unit.
    """
    path = result_path(root, unit)
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(path)!r} cannot be read ({exc})") from exc
    record = UnitRecord.from_json(text, origin=str(path))
    if record.unit != unit:
        raise CheckpointError(f"{str(path)!r} records unit {record.unit} where {unit} was planned; "
                              "the folder was changed by hand: choose another output folder")
    return record


def save_architecture(folder: Path, graph: Any, params: Any, info: Mapping[str, Any]) -> None:
    """Save an architecture's fresh weights and its description (label, start, pipeline, frozen keys, details)."""
    save(graph, params, folder)
    write_json(folder / ARCH_INFO, dict(info))


def load_architecture(problem: Problem, folder: Path, multiplier: float | None) -> tuple[Any, Any, dict[str, Any]]:
    """The graph, fresh weights and description saved by :func:`save_architecture` (on the rescaled backbone if any)."""
    if multiplier is None:
        backbone, heads = problem.backbone, problem.heads
    else:
        from mtgraph.evaluation.width import _rescaled

        backbone, heads = _rescaled(problem, multiplier)
    graph, params = load(folder, backbone, heads)
    return graph, params, dict(read_json(folder / ARCH_INFO))


def run_unit(setup: UnitSetup, unit: Unit) -> UnitRecord:
    """Train ``unit``'s architecture from its saved fresh weights and measure it (or read back its finished record).

    Returns:
        The :class:`UnitRecord`, also written to the unit's ``result.json``.

    Raises:
        CheckpointError: the unit's saved architecture is missing or malformed.
    """
    done = finished(setup.root, unit)
    if done is not None:
        return done
    if setup.monitor is not None:
        apply_threads(choose_threads(monitor=setup.monitor))
    elif setup.threads is not None:
        apply_threads(ThreadChoice(setup.threads, available_cores(), None, "asked for"))
    start = time.perf_counter()
    folder = Path(setup.root) / unit.folder
    graph, params, info = load_architecture(setup.problem, folder / "init", unit.multiplier)
    metrics, steps = retrain(setup.problem, graph, params, setup.schedule, seed=unit.seed,
                             frozen=frozenset(info.get("frozen", ())), checkpoint=folder / "checkpoints")
    values = {t: {m: float(v) for m, v in row.items()} for t, row in metrics.items()}
    bad = [f"{t}.{m}" for t, row in values.items() for m, v in row.items() if not math.isfinite(v)]
    if bad:
        raise TrainError(f"unit {unit.name!r} (seed {unit.seed}) measured non-finite metrics {bad}; its training "
                         "diverged: lower the schedule's learning rate")
    record = UnitRecord(unit, values, steps, time.perf_counter() - start)
    try:
        atomic_write_bytes(result_path(setup.root, unit), record.to_json().encode())
    except OSError as exc:
        raise CheckpointError(f"cannot write the result of unit {unit.name!r}: {exc.strerror or exc}") from exc
    # A finished unit is never trained again (its record is read back): its training checkpoints are dead weight.
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return record
