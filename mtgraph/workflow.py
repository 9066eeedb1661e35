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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from mtgraph.analysis.cost import cost, format_macs, format_params
from mtgraph.card import CardNotes
from mtgraph.compile import compile as compile_graph
from mtgraph.errors import ConfigError, MTGraphError
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore
from mtgraph.persist import atomic_write_bytes, save
from mtgraph.problem import Problem
from mtgraph.spec import ModelSpec, TaskSpec
from mtgraph.strategies.registry import get_strategy
from mtgraph.strategies.result import StrategyResult
from mtgraph.train.distributed import DistContext, all_reduce_mean, barrier, init_distributed
from mtgraph.train.session import checkpointing

__all__ = [
    "LearnOptions", "learn", "EvaluateOptions", "run_evaluation", "demo", "DemoSizes", "DEMO_SIZES", "QUICK_SIZES", "DEMO_SCENES", "scene_problem",
    "bench_architecture", "run_strategy",
]

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
    "weights": None,
}

#: The folder inside ``--out`` that ``learn`` checkpoints into (kept after a successful run).
CHECKPOINTS = "checkpoints"
#: The file in that folder recording the options of the run it belongs to (a resumed run must use the same).
RUN_OPTIONS = "learn-options.json"


@dataclass(frozen=True)
class LearnOptions:
    """Options of ``mtgraph learn`` (from flags or a TOML file; flags win).

    ``resume``: continue the run whose checkpoints are in ``out/checkpoints``
    (see :func:`learn`). ``weights``: pretrained backbone weights from a local
    file (see :func:`mtgraph.zoo.load_weights`); None: random.
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
    weights: Path | None = None

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
        if values.get("weights") is not None:
            values["weights"] = Path(values["weights"])
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


#: The scenes the demo runs on: ``"designed"`` (:meth:`mtgraph.data.SceneConfig.designed`: five tasks in the
#: known clusters {seg, edges}, {depth, normals}, {unrelated}, so the report scores structure recovery), or
#: ``"default"`` (the generator's defaults and the five dense tasks of papers/000, no designed clusters).
DEMO_SCENES = "designed"


@dataclass(frozen=True)
class DemoSizes:
    """How big the demo is: data, backbone width, training length, seeds and random draws.

    The retraining learning rate is the designed preset's measured one
    (``examples/designed_transfer.py``: Adam 5e-3), which learns in the few
    steps a demo can afford.

    Examples:
        >>> from mtgraph.workflow import DEMO_SIZES, QUICK_SIZES
        >>> QUICK_SIZES.seeds < DEMO_SIZES.seeds, QUICK_SIZES.randoms < DEMO_SIZES.randoms
        (True, True)
    """

    size: int = 32
    width: int = 4
    num_train: int = 192
    num_val: int = 64
    epochs: float = 2.0
    batch_size: int = 16
    lr: float = 5e-3
    seeds: int = 3
    randoms: int = 3


#: Config fields the demo sets over ``strategy.config_for(problem, epochs)``, per strategy (measured choices).
#: MTSL: at the demo's scale the task nodes of every block have CKA 0.96-0.9998, so the paper's γ = 0.8 (and
#: 0.9) fuses everything into One-Net; γ = 0.97 learned a tree in every run measured on the designed scenes
#: (quick sizes seed 0, full sizes seeds 0 and 1; 0.95 learned One-Net at the quick sizes). BENCHMARKS.md,
#: "Evaluation protocol".
DEMO_CONFIG: dict[str, dict[str, Any]] = {"mtsl": {"gamma": 0.97}}

#: ``mtgraph demo``: about 3 minutes on an idle 2-core CPU (BENCHMARKS.md, "Evaluation protocol").
DEMO_SIZES = DemoSizes()
#: ``mtgraph demo --quick``: under 45 seconds.
QUICK_SIZES = DemoSizes(num_train=64, num_val=32, epochs=1.0, seeds=2, randoms=2)


def scene_problem(
    tasks: tuple[str, ...] | None = None, *, size: int = 32, width: int = 4, num_train: int = 256,
    num_val: int = 64, seed: int = 0, preset: str = "default",
) -> Problem:
    """A Problem on generated scenes with the built-in ``resnet_tiny`` backbone, width-scalable (``rescale``).

    The backbone, tasks and heads come from a :class:`~mtgraph.spec.ModelSpec`
    (``resnet_tiny_w{width}``), so ``problem.rescale`` is
    :meth:`ModelSpec.rescaled <mtgraph.spec.ModelSpec.rescaled>` and pickles.

    Args:
        tasks: task names (None: every task of the preset): for ``"default"``
            scenes the dense tasks seg, depth, edges, normals, autoencoder; for
            ``"designed"`` ones :data:`mtgraph.data.DESIGNED_TASKS`.
        size: image size in pixels.
        width: the backbone's first-stage width (4, 8 or 16).
        num_train: training scenes (seed ``seed``).
        num_val: validation scenes (seed ``seed + 10000``; all labels kept).
        seed: seeds the scenes, the weights and the Problem.
        preset: ``"default"`` (the generator's defaults) or ``"designed"``
            (:meth:`mtgraph.data.SceneConfig.designed`, known task clusters).

    Raises:
        ConfigError: an unknown task, width or preset.

    Examples:
        >>> from mtgraph.workflow import scene_problem
        >>> problem = scene_problem(("seg", "depth"), num_train=4, num_val=4)
        >>> problem.task_names, problem.backbone.num_blocks, problem.rescale is not None
        (('seg', 'depth'), 9, True)
        >>> scene_problem(num_train=4, num_val=4, preset="designed").task_names
        ('seg', 'edges', 'depth', 'normals', 'unrelated')
    """
    if width not in (4, 8, 16):
        raise ConfigError(f"width must be 4, 8 or 16 (the built-in resnet_tiny widths), got {width!r}")
    model = "resnet_tiny" if width == 16 else f"resnet_tiny_w{width}"
    return _scene_problem_and_spec(tasks, size, model, num_train, num_val, seed, preset=preset)[0]


def _scene_problem_and_spec(
    tasks: tuple[str, ...] | None, size: int, model: str, num_train: int, num_val: int, seed: int,
    cache: Path | None = None, preset: str = "default",
) -> tuple[Problem, ModelSpec]:
    """Generated scenes (rendered once into ``cache`` when given) and the Problem and spec over them."""
    from mtgraph.data import DESIGNED_TASKS, SceneConfig, SceneDataset

    if preset == "designed":
        config = SceneConfig.designed(size=size)
        train = SceneDataset.from_config(num_train, config, seed=seed, cache=cache)  # labels hidden as designed
        val = SceneDataset.from_config(num_val, config.fully_labelled, seed=seed + 10_000, cache=cache)
        specs = tuple(TaskSpec(t, "designed", {"scene": {"size": size}}) for t in (tasks or DESIGNED_TASKS))
        spec = ModelSpec(backbone=model, input_shape=(3, size, size), tasks=specs, seed=seed)
    elif preset == "default":
        train = SceneDataset(num_train, size=size, seed=seed, cache=cache)
        val = SceneDataset(num_val, size=size, seed=seed + 10_000, cache=cache)
        spec = _model_spec(model, size, tuple(tasks or _DENSE_KINDS), train.config.seg_classes, seed)
    else:
        raise ConfigError(f"unknown scene preset {preset!r}; use 'default' or 'designed'")
    return _spec_problem(spec, train, val, seed), spec


def _spec_problem(spec: ModelSpec, train: Any, val: Any, seed: int) -> Problem:
    """The Problem a spec describes, on ``train`` and ``val``; width-scalable when the backbone is built in."""
    backbone = spec.build_backbone()
    tasks = spec.build_tasks()
    return Problem(backbone, spec.build_heads(backbone, tasks), tasks, train, val, seed=seed,
                   rescale=spec.rescaled if spec.rescalable else None)


def _designed_clusters(tasks: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The designed clusters restricted to ``tasks`` (empty groups dropped)."""
    from mtgraph.data import DESIGNED_CLUSTERS

    groups = (tuple(t for t in cluster if t in tasks) for cluster in DESIGNED_CLUSTERS)
    return tuple(g for g in groups if g)


def _demo_scenes(
    sizes: DemoSizes, seed: int, cache: Path
) -> tuple[Problem, ModelSpec, tuple[tuple[str, ...], ...] | None]:
    """The demo's problem, its spec and the designed task clusters (None for scenes without designed clusters).

    The scenes are rendered once into ``cache`` (every retraining reads them
    back instead of drawing them again, 5x faster).
    """
    problem, spec = _scene_problem_and_spec(None, sizes.size, f"resnet_tiny_w{sizes.width}", sizes.num_train,
                                            sizes.num_val, seed, cache, preset=DEMO_SCENES)
    clusters = _designed_clusters(problem.task_names) if DEMO_SCENES == "designed" else None
    return problem, spec, clusters


def _learned_section(out: Path, problem: Problem, spec: ModelSpec, evaluation: Any, seed: int) -> tuple[str, dict[str, Path]]:
    """Write the seed's learned architecture (as the strategy trained it), model.onnx and the diagram.

    The architecture is costed once and compiled once: the module and the
    cost report are handed to the exporters.
    """
    from mtgraph.exporters import export_onnx, render
    from mtgraph.exporters.graphviz import dot_available
    from mtgraph.ir.text import print_graph
    from mtgraph.persist import load

    graph, params = load(evaluation.folder / "search" / f"seed-{seed}" / "result", problem.backbone, problem.heads)
    module = compile_graph(graph, params)
    report = cost(graph, params)  # an interpreter over the IR: it does not compile
    arch = out / "architecture"
    learned = (f"By {evaluation.results.get('strategy', 'the strategy')} in `mtgraph demo`, seed "
               f"{seed}, on generated scenes ({spec.input_shape[-1]} px); the weights are as the strategy trained them "
               "(the evaluation protocol retrains it from scratch for its comparison: see the demo's report.md).")
    from mtgraph.train.evaluate import evaluate as evaluate_metrics

    # The card's metrics: this architecture with these weights on the validation scenes (the protocol's
    # numbers are of retrained copies; report.md has those, over seeds).
    metrics = evaluate_metrics(graph, params, problem.tasks, problem.val_data) if problem.val_data is not None else {}
    channels = spec.input_shape[0]  # generated scenes are fed as drawn, in [0, 1]: the identity normalisation
    save(graph, params, arch, spec=spec, notes=CardNotes(learned=learned, metrics=metrics, mean=(0.0,) * channels,
                                                         std=(1.0,) * channels))
    onnx_result = export_onnx(graph, params, out / "model.onnx", module=module, report=report)
    fmt = "svg" if dot_available() else "dot"
    diagram = render(graph, params, out / f"architecture.{fmt}", format=fmt, report=report, title=f"learned ({seed=})")
    atomic_write_bytes(out / "cost.json", json.dumps(report.to_dict(), indent=2).encode())
    lines = [f"## The learned architecture (seed {seed}, weights as the strategy trained them)", ""]
    if fmt == "svg":
        lines += [f"![the learned architecture]({diagram.name})", ""]
    else:
        lines += [f"Diagram source: [{diagram.name}]({diagram.name}) (Graphviz's `dot` was not found).", ""]
    lines += ["```text", print_graph(graph).rstrip(), "```", "",
              f"{format_macs(report.total_macs)} per image of input {list(report.input_shape)}, "
              f"{format_params(report.total_params)} ({format_macs(report.shared_macs)} in blocks shared by several "
              "tasks); per task:", "",
              "| task | MACs on its path | parameters on its path |", "|---|---:|---:|"]
    lines += [f"| {task} | {format_macs(t.macs)} | {t.params} |" for task, t in report.tasks.items()]
    lines += ["", "All numbers: [cost.json](cost.json). The saved architecture is in [architecture/](architecture/"
              "model.json); [model.onnx](model.onnx) has one output per task.", ""]
    written = {"architecture": arch, "onnx": onnx_result.path, "diagram": diagram}
    return "\n".join(lines), written


def demo(*, strategy: str = "mtsl", out: Path = Path("mtgraph-demo"), quick: bool = False, seed: int = 0,
         progress: bool = True, threads: int | Literal["auto"] | None = None, sizes: DemoSizes | None = None,
         ) -> dict[str, Path]:
    """Run the main job and return what it wrote (label -> path).

    Generated scenes, the built-in ResNet-like backbone, one strategy run
    through the evaluation protocol (:func:`mtgraph.evaluate`) over a few
    seeds: its learned architecture against STN, One-Net, the width-matched
    One-Net and random draws at the same GMac, all retrained with one
    schedule. Writes the evaluation (``results.json``, ``report.md``
    leading with the learned architecture against the matched-compute
    baselines, ``pareto.png``) and the learned architecture of seed
    ``seed`` (``architecture/``, ``model.onnx``, the diagram). A rerun with
    the same ``out`` continues an interrupted demo.

    Args:
        strategy: a registry name.
        out: the output folder.
        quick: :data:`QUICK_SIZES` instead of :data:`DEMO_SIZES`.
        seed: the first seed (the others follow it).
        progress: a progress bar over the protocol's units.
        threads: torch threads (see :func:`mtgraph.evaluate`).
        sizes: the sizes to use instead (tests use tiny ones).
    """
    from mtgraph.evaluation import Schedule, evaluate
    from mtgraph.evaluation.report import write_report

    sizes = sizes if sizes is not None else (QUICK_SIZES if quick else DEMO_SIZES)
    problem, spec, clusters = _demo_scenes(sizes, seed, out / "scenes")
    schedule = Schedule(epochs=sizes.epochs, batch_size=sizes.batch_size, lr=sizes.lr)
    chosen = get_strategy(strategy)
    config = dataclasses.replace(chosen.config_for(problem, sizes.epochs), **DEMO_CONFIG.get(strategy, {}))
    out.mkdir(parents=True, exist_ok=True)
    evaluation = evaluate(chosen, problem, config, out=out, seeds=sizes.seeds, randoms=sizes.randoms,
                          schedule=schedule, clusters=clusters, threads=threads, progress=progress, report=False)
    section, written = _learned_section(out, problem, spec, evaluation, seed)
    written["report"] = write_report(out, evaluation.results, extra=section)
    written["results"] = out / "results.json"
    if (out / "pareto.png").is_file():
        written["figure"] = out / "pareto.png"
    return written


#: ``mtgraph evaluate --quick``: these sizes unless a flag or the config file sets them.
_QUICK_EVALUATE = {"size": 32, "num_train": 96, "num_val": 32, "epochs": 1.0}


@dataclass(frozen=True)
class EvaluateOptions:
    """Options of ``mtgraph evaluate`` (from flags or a TOML ``--config`` file; flags win).

    The file holds these fields at its top level and, in a ``[config]``
    table, fields of the strategy's own config (``gamma = 0.9`` for MTSL),
    applied over ``strategy.config_for(problem, epochs)``. ``data`` is
    ``"scenes"``, ``"designed"`` (the designed preset; its tasks and clusters
    by default), ``"nyuv2:FOLDER"`` or ``"cityscapes:FOLDER"``; ``tasks``
    None means the data's tasks.

    Examples:
        >>> from mtgraph.workflow import EvaluateOptions
        >>> options = EvaluateOptions(clusters=(("seg", "edges"), ("depth",)))
        >>> options.seeds, options.randoms, options.clusters[0]
        (3, 5, ('seg', 'edges'))
    """

    strategy: str = "mtsl"
    data: str = "scenes"
    model: str = "resnet_tiny_w4"
    tasks: tuple[str, ...] | None = None
    size: int = 32
    epochs: float = 4.0
    batch_size: int = 16
    lr: float = 1e-3
    num_train: int = 256
    num_val: int = 64
    seed: int = 0
    seeds: int = 3
    randoms: int = 5
    out: Path = Path("mtgraph-evaluation")
    clusters: tuple[tuple[str, ...], ...] | None = None
    executor: str = "sequential"
    workers: int = 1
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvaluateOptions:
        """Merge the ``--config`` file, the flags (each None unless given) and ``--quick``'s sizes."""
        values: dict[str, Any] = dict(_read_toml(Path(args.config))) if args.config else {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown options {unknown} in {args.config}; known: {sorted(known)}")
        if "config" in values and not isinstance(values["config"], dict):
            raise ConfigError(f"'config' in {args.config} must be a table of the strategy's config fields")
        for name in known - {"config"}:
            flag = getattr(args, name, None)
            if flag is not None:
                values[name] = flag
        if args.quick:
            values = {**_QUICK_EVALUATE, **values}
        if isinstance(values.get("tasks"), str):
            values["tasks"] = tuple(t for t in values["tasks"].split(",") if t)
        if values.get("tasks") is not None:
            values["tasks"] = tuple(values["tasks"])
        if isinstance(values.get("clusters"), str):
            values["clusters"] = tuple(tuple(t for t in group.split("+") if t) for group in values["clusters"].split(","))
        elif values.get("clusters") is not None:
            values["clusters"] = tuple(tuple(group) for group in values["clusters"])
        if "out" in values:
            values["out"] = Path(values["out"])
        return cls(**values)


def run_evaluation(options: EvaluateOptions, *, progress: bool = True, threads: int | Literal["auto"] | None = None) -> Any:
    """Run the evaluation protocol as ``options`` describe (``mtgraph evaluate``); return the :class:`~mtgraph.evaluation.Evaluation`.

    Raises:
        ConfigError: an unknown strategy, task or data, or a ``[config]``
            field the strategy's config does not have.
    """
    from mtgraph.evaluation import Schedule, evaluate

    clusters = options.clusters
    if options.data in ("scenes", "designed"):
        preset = "designed" if options.data == "designed" else "default"
        problem, _ = _scene_problem_and_spec(options.tasks, options.size, options.model, options.num_train,
                                             options.num_val, options.seed, preset=preset)
        if preset == "designed" and clusters is None:
            clusters = _designed_clusters(problem.task_names)
    else:
        train, val, seg_classes = _datasets(options.data, options.size, options.num_train, options.num_val,
                                            options.seed)
        spec = _model_spec(options.model, options.size, options.tasks or tuple(_DENSE_KINDS), seg_classes,
                           options.seed)
        problem = _spec_problem(spec, train, val, options.seed)
    strategy = get_strategy(options.strategy)
    config = strategy.config_for(problem, options.epochs)
    if options.config:
        fields = {f.name for f in dataclasses.fields(config)}
        unknown = sorted(set(options.config) - fields)
        if unknown:
            raise ConfigError(f"{strategy.config_type.__name__} has no fields {unknown}; its fields: {sorted(fields)}")
        config = dataclasses.replace(config, **options.config)
    schedule = Schedule(epochs=options.epochs, batch_size=options.batch_size, lr=options.lr)
    return evaluate(strategy, problem, config, out=options.out, seeds=options.seeds, randoms=options.randoms,
                    schedule=schedule, clusters=clusters, executor=options.executor, workers=options.workers,
                    threads=threads, progress=progress)


def _run_options(options: LearnOptions) -> dict[str, Any]:
    """The options that decide what a run trains (not where it writes, nor whether it resumes), as JSON values."""
    values = dataclasses.asdict(options)
    del values["out"], values["resume"]
    if values["weights"] is None:
        del values["weights"]  # as recorded before --weights existed, so those runs still resume
    else:
        values["weights"] = str(values["weights"])
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
    backbone = spec.build_backbone(weights=options.weights)
    tasks = spec.build_tasks()
    heads = spec.build_heads(backbone, tasks)
    barrier(ctx)  # every rank has looked into the folder before rank 0 writes there
    if fresh:
        _write_on_main(ctx, lambda: _record_options(checkpoints, options), f"the run's options into {str(checkpoints)!r}")
    problem = Problem(backbone, heads, tasks, train, val, seed=options.seed,
                      rescale=spec.rescaled if spec.rescalable else None)
    with checkpointing(checkpoints, resume=options.resume):
        result = run_strategy(options.strategy, problem, epochs=options.epochs, progress=progress,
                              folder=checkpoints / options.strategy)
    arch = options.out / "architecture"

    def write() -> None:
        learned = (f"By `mtgraph learn --strategy {options.strategy}` on {options.data} "
                   f"({options.size} px, {options.num_train} training images), epochs "
                   f"{'the strategy default' if options.epochs is None else options.epochs}, seed {options.seed}.")
        scenes = options.data == "scenes"  # generated scenes are fed as drawn, in [0, 1]; other data: not recorded
        notes = CardNotes(learned=learned, mean=(0.0, 0.0, 0.0) if scenes else (), std=(1.0, 1.0, 1.0) if scenes else ())
        save(result.graph, result.params, arch, spec=spec, notes=notes)

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
