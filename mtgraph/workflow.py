"""End-to-end jobs behind the command line: ``demo``, ``learn`` and ``bench``.

The demo is the main job: generated scenes, the built-in ResNet-like
backbone, five dense tasks, a structural-learning strategy compared with
single-task networks (STN) and one shared network (One-Net); it writes the
learned architecture, ``model.onnx`` (parity-checked), the diagram and
``report.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtgraph.analysis.cost import cost
from mtgraph.compile import compile as compile_graph
from mtgraph.errors import ConfigError, MTGraphError
from mtgraph.frontend.backbone import Backbone
from mtgraph.ir.builders import one_net, stn
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore
from mtgraph.persist import atomic_write_bytes, save
from mtgraph.problem import Problem
from mtgraph.spec import ModelSpec, TaskSpec
from mtgraph.strategies.registry import get_strategy
from mtgraph.strategies.result import Heatmap, StrategyResult
from mtgraph.tasks import Task
from mtgraph.train.distributed import DistContext, all_reduce_mean, barrier, init_distributed
from mtgraph.train.session import checkpointing

__all__ = ["LearnOptions", "learn", "demo", "bench_architecture", "run_strategy"]

#: The five dense tasks of papers/000 with the kinds a ModelSpec records.
_DENSE_KINDS = {"seg": "segmentation", "depth": "depth", "edges": "edges", "normals": "normals", "autoencoder": "autoencoder"}


def run_strategy(name: str, problem: Problem, *, epochs: float, progress: bool, folder: Path | None = None) -> StrategyResult:
    """Run the registered strategy ``name`` on ``problem`` with a training budget of about ``epochs`` epochs.

    The configuration is the strategy's own :meth:`~mtgraph.strategies.Strategy.config_for`.
    ``folder``: the run folder of a strategy whose config has one (task
    grouping keeps its finished candidates there, so a rerun skips them);
    ignored by the others.

    Raises:
        ConfigError: no strategy is registered as ``name``.
    """
    strategy = get_strategy(name)
    config = strategy.config_for(problem, epochs)
    if folder is not None and "folder" in getattr(config, "__dataclass_fields__", {}) and config.folder is None:
        config = dataclasses.replace(config, folder=folder)
    return strategy.learn(problem, config, progress=progress)


_FLAG_DEFAULTS: dict[str, Any] = {
    "strategy": "mtsl", "data": "scenes", "model": "resnet_tiny",
    "tasks": "seg,depth,edges,normals,autoencoder", "size": 64, "out": "mtgraph-learn", "seed": 0, "resume": False,
}

#: The folder inside ``--out`` that ``learn`` checkpoints into (kept after a successful run).
CHECKPOINTS = "checkpoints"
#: The file in that folder recording the options of the run it belongs to (a resumed run must use the same).
RUN_OPTIONS = "learn-options.json"


@dataclass(frozen=True)
class LearnOptions:
    """Options of ``mtgraph learn`` (from flags or a TOML file; flags win).

    ``resume``: continue the run whose checkpoints are in ``out/checkpoints``
    (see :func:`learn`).
    """

    strategy: str = "mtsl"
    data: str = "scenes"
    model: str = "resnet_tiny"
    tasks: tuple[str, ...] = ("seg", "depth", "edges", "normals", "autoencoder")
    size: int = 64
    epochs: float = 4.0
    out: Path = Path("mtgraph-learn")
    seed: int = 0
    num_train: int = 512
    num_val: int = 128
    resume: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LearnOptions:
        """Merge a TOML ``--config`` file with command-line flags."""
        values: dict[str, Any] = {}
        if args.config:
            values.update(_read_toml(Path(args.config)))
        # A flag left at its default does not override the file; a flag the user set does.
        for key, default in _FLAG_DEFAULTS.items():
            flag = getattr(args, key)
            if key not in values or flag != default:
                values[key] = flag
        if args.epochs is not None:
            values["epochs"] = args.epochs
        tasks = values.get("tasks", cls.tasks)
        values["tasks"] = tuple(t for t in tasks.split(",") if t) if isinstance(tasks, str) else tuple(tasks)
        values["out"] = Path(values["out"])
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown options {unknown} in {args.config}; known: {sorted(known)}")
        return cls(**values)


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return dict(tomllib.loads(path.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc


def _datasets(data: str, size: int, num_train: int, num_val: int, seed: int) -> tuple[Any, Any, int]:
    """Train and validation datasets plus the number of segmentation classes."""
    from mtgraph.data import Cityscapes, NYUv2, SceneDataset

    if data == "scenes":
        train = SceneDataset(num_train, size=size, seed=seed)
        val = SceneDataset(num_val, size=size, seed=seed + 10_000)
        return train, val, train.config.seg_classes
    kind, _, folder = data.partition(":")
    if kind == "nyuv2" and folder:
        return NYUv2(folder, "train"), NYUv2(folder, "val"), 13
    if kind == "cityscapes" and folder:
        return Cityscapes(folder, "train"), Cityscapes(folder, "val"), 7
    raise ConfigError(f"--data {data!r}: use 'scenes', 'nyuv2:FOLDER' or 'cityscapes:FOLDER'")


def _model_spec(model: str, size: int, task_names: tuple[str, ...], seg_classes: int, seed: int) -> ModelSpec:
    unknown = [t for t in task_names if t not in _DENSE_KINDS]
    if unknown:
        raise ConfigError(f"unknown tasks {unknown}; the command line knows {', '.join(_DENSE_KINDS)}")
    specs = tuple(
        TaskSpec(t, _DENSE_KINDS[t], {"num_classes": seg_classes} if t == "seg" else {}) for t in task_names
    )
    return ModelSpec(backbone=model, input_shape=(3, size, size), tasks=specs, seed=seed)


def _train_baseline(
    graph: MTGraph, backbone: Backbone, heads: Mapping[str, nn.Module], tasks: Mapping[str, Task],
    train: Any, epochs: float, seed: int, progress: bool,
) -> tuple[MTGraph, ParamStore]:
    from mtgraph.train import fit

    params = ParamStore.create(graph, backbone, heads)
    steps = max(1, int(epochs * len(train) / 32))
    result = fit(graph, params, tasks, train, steps=steps, batch_size=32, seed=seed, progress=progress)
    return result.graph, result.params


def _delta_table(rows: Mapping[str, Any], tasks: Mapping[str, Task]) -> dict[str, float]:
    from mtgraph.tasks import delta_mtl

    directions = {name: dict(task.higher_is_better) for name, task in tasks.items()}
    reference = rows["STN"]
    return {name: delta_mtl(metrics, reference, directions) for name, metrics in rows.items()}


def _compare(
    strategy: str, backbone: Backbone, spec: ModelSpec, tasks: Mapping[str, Task], train: Any, val: Any,
    epochs: float, seed: int, progress: bool,
) -> tuple[StrategyResult, dict[str, Any], dict[str, Any], dict[str, float]]:
    """Train STN, One-Net and the strategy; return the strategy result, metrics, costs and Δ_MTL per network."""
    from mtgraph.train import evaluate

    heads = spec.build_heads(backbone, tasks)
    names = tuple(tasks)
    networks: dict[str, tuple[MTGraph, ParamStore]] = {}
    for label, graph in (("STN", stn(backbone.num_blocks, names)), ("One-Net", one_net(backbone.num_blocks, names))):
        networks[label] = _train_baseline(graph, backbone, heads, tasks, train, epochs, seed, progress)
    problem = Problem(backbone, heads, tasks, train, val, seed=seed)
    result = run_strategy(strategy, problem, epochs=epochs, progress=progress)
    networks[strategy] = (result.graph, result.params)
    metrics = {label: dict(evaluate(g, p, tasks, val)) for label, (g, p) in networks.items()}
    costs = {label: cost(g, p) for label, (g, p) in networks.items()}
    deltas = _delta_table(metrics, tasks)
    return result, metrics, costs, deltas


def _write_outputs(out: Path, result: StrategyResult, spec: ModelSpec, metrics: dict[str, Any],
                   costs: dict[str, Any], deltas: dict[str, float]) -> dict[str, Path]:
    from mtgraph.exporters import export_onnx, render, write_report

    arch = out / "architecture"
    save(result.graph, result.params, arch)
    spec.save(arch)
    written: dict[str, Path] = {"architecture": arch}
    onnx_result = export_onnx(result.graph, result.params, out / "model.onnx")
    written["onnx"] = onnx_result.path
    written["diagram"] = render(result.graph, result.params, out / "architecture.svg", format="svg")
    extras = _report_extras(result, costs, deltas)
    written["report"] = write_report(out, graph=result.graph, params=result.params,
                                     title=f"mtgraph demo: {result.strategy}", metrics=metrics, extras=extras)
    return written


def _square_heatmaps(figures: Mapping[str, Any]) -> dict[str, tuple[list[str], Any]]:
    """The (labels, square matrix) entries among a strategy's figures, for the report's heatmaps."""
    import numpy as np

    found: dict[str, tuple[list[str], Any]] = {}
    candidates: dict[str, Any] = dict(figures.get("similarity") or {}) if isinstance(figures.get("similarity"), Mapping) else {}
    candidates.update({k: v for k, v in figures.items() if k != "similarity"})
    for name, entry in candidates.items():
        if isinstance(entry, Heatmap):  # a typed figure (strategies moving to mtgraph.strategies.result's types)
            if entry.is_square:
                found[str(name)] = (list(entry.rows), np.asarray(entry.values, dtype=float))
            continue
        if isinstance(entry, (tuple, list)) and len(entry) == 2:
            labels, matrix = entry
            try:
                array = np.asarray(matrix, dtype=float)
            except (TypeError, ValueError):
                continue
            if array.ndim == 2 and array.shape[0] == array.shape[1] == len(labels):
                found[str(name)] = ([str(label) for label in labels], array)
    return found


def _report_extras(result: StrategyResult, costs: Mapping[str, Any], deltas: Mapping[str, float]) -> dict[str, Any]:
    """Turn a strategy's evidence into the report's extras: heatmaps, the Pareto plot and notes."""
    lines = ["| network | GMac | params (M) | Δ_MTL (%) |", "|---|---|---|---|"]
    for label, report in costs.items():
        lines.append(f"| {label} | {report.gmac:.4f} | {report.total_params / 1e6:.3f} | {deltas[label]:+.2f} |")
    if result.pipeline:
        lines += ["", f"Pipeline that reproduces the learned structure: `{result.pipeline}`"]
    if result.decisions:
        lines += ["", "Structural decisions:", ""]
        lines += [f"- {d.where}: {d.what}: {'applied' if d.accepted else 'declined'} ({d.reason})" for d in result.decisions]
    return {
        "similarity": _square_heatmaps(result.figures),
        "pareto": [(label, costs[label].gmac, deltas[label]) for label in costs],
        "pareto_metric": "Δ_MTL (%) vs STN",
        "higher_is_better": True,
        "notes": "\n".join(lines),
    }


def demo(*, strategy: str = "mtsl", out: Path = Path("mtgraph-demo"), quick: bool = False, seed: int = 0,
         progress: bool = True) -> dict[str, Path]:
    """Run the main job and return what it wrote (label -> path)."""
    from mtgraph.data import SceneDataset

    torch.manual_seed(seed)
    # Sized for 2 CPU cores: the quick run in under 2 minutes, the default one in under 10.
    size, num_train, num_val, epochs, width = (32, 192, 64, 2.0, 4) if quick else (32, 512, 128, 4.0, 8)
    train = SceneDataset(num_train, size=size, seed=seed)
    val = SceneDataset(num_val, size=size, seed=seed + 10_000)
    spec = _model_spec(f"resnet_tiny_w{width}", size, tuple(_DENSE_KINDS), train.config.seg_classes, seed)
    backbone = spec.build_backbone()
    tasks = spec.build_tasks()
    result, metrics, costs, deltas = _compare(strategy, backbone, spec, tasks, train, val, epochs, seed, progress)
    out.mkdir(parents=True, exist_ok=True)
    return _write_outputs(out, result, spec, metrics, costs, deltas)


def _run_options(options: LearnOptions) -> dict[str, Any]:
    """The options that decide what a run trains (not where it writes, nor whether it resumes), as JSON values."""
    values = dataclasses.asdict(options)
    del values["out"], values["resume"]
    return dict(json.loads(json.dumps(values)))  # tuples become lists, as they come back from the file


def _check_checkpoints(folder: Path, options: LearnOptions) -> bool:
    """Refuse to mix two runs in one checkpoint folder (nothing is deleted or overwritten); True if it holds none.

    Without ``resume`` the folder must hold no checkpoints; with it, the
    options recorded there must be this run's: fit's checkpoints would
    otherwise hand back phases trained with another budget, tasks or data.
    The options file alone (a run that failed before training) does not count.
    """
    if not folder.is_dir() or all(p.name == RUN_OPTIONS for p in folder.iterdir()):
        return True
    if not options.resume:
        raise ConfigError(
            f"{str(folder)!r} already holds the checkpoints of an earlier run; pass --resume to continue it, "
            "or choose another --out folder"
        )
    record = folder / RUN_OPTIONS
    if not record.is_file():
        return False
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{str(record)!r} is not valid JSON ({exc}); choose another --out folder") from exc
    wanted = _run_options(options)
    changed = sorted(k for k in set(wanted) | set(saved) if wanted.get(k) != saved.get(k))
    if changed:
        differences = "; ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in changed)
        raise ConfigError(
            f"{str(folder)!r} holds a run with other options ({differences}); resume with the same options, "
            "or choose another --out folder"
        )
    return False


def _record_options(folder: Path, options: LearnOptions) -> None:
    """Write the run's options into its checkpoint folder, for a later ``--resume`` to compare with."""
    record = folder / RUN_OPTIONS
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(record, json.dumps(_run_options(options), indent=2, sort_keys=True).encode())
    except OSError as exc:
        raise ConfigError(f"cannot write {str(record)!r}: {exc.strerror or exc}") from exc


def _write_on_main(ctx: DistContext, write: Callable[[], None], what: str) -> None:
    """Run ``write`` on rank 0 only; every rank returns once it is done, and fails if it failed.

    The all-reduce doubles as the barrier that keeps the other ranks from
    exiting (and tearing the process group down) while rank 0 still writes;
    carrying rank 0's success keeps them from waiting forever when it fails.
    """
    failure: Exception | None = None
    if ctx.is_main:
        try:
            write()
        except Exception as exc:  # re-raised below, after the other ranks were told
            failure = exc
    if ctx.distributed:
        ok = all_reduce_mean(torch.tensor([0.0 if failure else 1.0], device=ctx.device), ctx)
        if failure is None and float(ok.item()) < 1.0:
            raise MTGraphError(f"rank 0 failed to write {what}; see its error message")
    if failure is not None:
        raise failure


def learn(options: LearnOptions, *, progress: bool = True) -> Path:
    """Run ``options.strategy`` on ``options.data`` and save the result into ``options.out``.

    Every training phase checkpoints into ``out/checkpoints`` (see
    :func:`mtgraph.train.checkpointing`); the checkpoints are kept after a
    successful run (delete the folder to reclaim the space; task grouping
    also keeps its trained candidates in ``out/checkpoints/grouping``). With
    ``options.resume`` a rerun continues from them: finished phases are
    read back, the interrupted one resumes, and the saved weights equal an
    uninterrupted run's. Without it, an ``out`` whose checkpoint folder is
    not empty is refused (ConfigError) before anything is trained or written;
    with it, so is a folder whose recorded options (:data:`RUN_OPTIONS`)
    differ from ``options`` (other than ``out`` and ``resume``).

    Under ``torchrun`` every rank trains (data-parallel) and rank 0 alone
    writes the architecture; every rank returns its path once it is written.
    """
    ctx = init_distributed()
    checkpoints = options.out / CHECKPOINTS
    fresh = _check_checkpoints(checkpoints, options)
    train, val, seg_classes = _datasets(options.data, options.size, options.num_train, options.num_val, options.seed)
    spec = _model_spec(options.model, options.size, options.tasks, seg_classes, options.seed)
    backbone = spec.build_backbone()
    tasks = spec.build_tasks()
    heads = spec.build_heads(backbone, tasks)
    barrier(ctx)  # every rank has looked into the folder before rank 0 writes there
    if fresh:
        _write_on_main(ctx, lambda: _record_options(checkpoints, options), f"the run's options into {str(checkpoints)!r}")
    problem = Problem(backbone, heads, tasks, train, val, seed=options.seed)
    with checkpointing(checkpoints, resume=options.resume):
        result = run_strategy(options.strategy, problem, epochs=options.epochs, progress=progress,
                              folder=checkpoints / options.strategy)
    arch = options.out / "architecture"

    def write() -> None:
        save(result.graph, result.params, arch)
        spec.save(arch)

    _write_on_main(ctx, write, f"the architecture into {str(arch)!r}")
    return arch


def bench_architecture(graph: MTGraph, params: ParamStore, *, repeats: int = 20) -> str:
    """Median latency at batch 1 of the compiled module in torch eager and in onnxruntime (CPU)."""
    import tempfile

    from mtgraph.exporters import export_onnx
    from mtgraph.exporters.runtime import open_session

    module = compile_graph(graph, params).eval()
    x = params.backbone.example_input(1)

    def median_ms(fn: Callable[[], object]) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    with torch.no_grad():
        eager = median_ms(lambda: module(x))
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(graph, params, Path(tmp) / "model.onnx").path
        session = open_session(path, providers="auto")
        array = x.numpy()
        ort = median_ms(lambda: session.run(array))
    return (f"batch 1, median of {repeats}: torch eager {eager:.3f} ms, onnxruntime ({', '.join(session.providers)}) "
            f"{ort:.3f} ms, ratio eager/onnxruntime {eager / ort:.2f}x")
