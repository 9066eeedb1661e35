"""The evaluation protocol's driver: :func:`evaluate`.

For each seed it runs the strategy (the *search*), then plans the units that
retrain, from scratch and with one :class:`~mtgraph.evaluation.Schedule`,
every architecture compared: the learned one, STN, One-Net, One-Net
width-scaled to the learned GMac, and random draws of the strategy's own
search space at the learned GMac. Then it trains the units (one after
another, in a process pool or on Ray), computes the statistics and writes
``results.json``, ``report.md`` and the Pareto figure.

Everything is kept in the output folder (see :mod:`mtgraph.evaluation.units`
for its layout): calling :func:`evaluate` again with the same folder reads
finished searches and units back and continues the interrupted ones; a folder
holding another evaluation is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mtgraph.analysis.cost import cost
from mtgraph.analysis.partition import check_partition, task_partitions
from mtgraph.budget import Budget
from mtgraph.errors import BudgetError, CheckpointError, ConfigError
from mtgraph.evaluation.report import write_report
from mtgraph.evaluation.results import (
    NAMES,
    RESULTS_FORMAT,
    add_deltas,
    structure_recovery,
    summarise,
    validate_results,
)
from mtgraph.evaluation.schedule import Schedule
from mtgraph.evaluation.units import (
    Unit,
    UnitRecord,
    UnitSetup,
    finished,
    read_json,
    run_unit,
    save_architecture,
    unit_slug,
    write_json,
)
from mtgraph.evaluation.width import WidthMatch, _rescaled, match_width
from mtgraph.executors import check_executor, run_jobs
from mtgraph.ir.builders import one_net, stn
from mtgraph.ir.nodes import Gate, Skip
from mtgraph.ir.text import print_graph
from mtgraph.options import check_number
from mtgraph.params import ParamStore
from mtgraph.persist import save
from mtgraph.problem import Problem
from mtgraph.strategies.protocol import Architecture, Strategy
from mtgraph.strategies.registry import get_strategy
from mtgraph.threads import CpuMonitor, apply_threads, choose_threads
from mtgraph.train.session import checkpointing

__all__ = ["Evaluation", "evaluate", "IDENTITY_FILE", "RESULTS_FILE"]

IDENTITY_FILE = "evaluation.json"
RESULTS_FILE = "results.json"
IDENTITY_FORMAT = "mtgraph-evaluation-run-1"
#: Random draws stop after this many draws in a row repeated an earlier one: the space at this cost is (nearly)
#: exhausted, and each draw builds an architecture.
_REPEATS = 5


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` did and found.

    Attributes:
        folder: the output folder.
        results: the content of ``results.json``.
        trained: the units trained by this call (``"seed 0: STN"``).
        reused: the units read back from an earlier, interrupted call.
        searched: the seeds whose strategy run ran (or resumed) in this call.

    Examples:
        >>> from pathlib import Path
        >>> from mtgraph.evaluation import Evaluation
        >>> done = Evaluation(Path("run"), {"summary": {"STN": {"n": 3}}}, (), ("seed 0: STN",), ())
        >>> done.report.as_posix(), done.summary["STN"]["n"]
        ('run/report.md', 3)
    """

    folder: Path
    results: dict[str, Any]
    trained: tuple[str, ...]
    reused: tuple[str, ...]
    searched: tuple[int, ...]

    @property
    def report(self) -> Path:
        """The path of ``report.md``."""
        return self.folder / "report.md"

    @property
    def summary(self) -> dict[str, dict[str, Any]]:
        """Architecture name -> its summary (mean Δ_MTL, interval, paired differences)."""
        return dict(self.results["summary"])


class _Bar:
    """A rich progress bar over units on stderr, or nothing."""

    def __init__(self, show: bool, total: int, description: str) -> None:
        self._progress: Any = None
        if show:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=Console(stderr=True))
            self._progress.start()
            self._task = self._progress.add_task(description, total=total)

    def advance(self, label: str, total: int | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, total=total, description=label)

    def grow(self, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _jsonable(value: Any) -> Any:
    """A strategy config (a dataclass) as JSON values; paths and other objects as their text."""
    data = dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value
    return json.loads(json.dumps(data, default=str))


def _weights_digest(problem: Problem) -> str:
    digest = hashlib.sha256()
    for block in problem.backbone.blocks:
        for name, tensor in sorted(block.module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _data_description(data: Any) -> dict[str, Any]:
    dataset = getattr(data, "dataset", data)
    described: dict[str, Any] = {"type": type(dataset).__qualname__, "len": len(dataset)}
    for attribute in ("config", "seed"):
        if hasattr(dataset, attribute):
            described[attribute] = repr(getattr(dataset, attribute))
    return described


def _identity(strategy: Strategy, problem: Problem, config: Any, schedule: Schedule, randoms: int, tolerance: float,
              budget: Budget | None, clusters: Any) -> dict[str, Any]:
    costs = problem.reference_costs
    return {
        "format": IDENTITY_FORMAT,
        "strategy": strategy.name,
        "config": _jsonable(config),
        "schedule": schedule.to_dict(),
        "randoms": randoms,
        "tolerance": tolerance,
        "budget": None if budget is None else budget.describe(),
        "clusters": None if clusters is None else [list(g) for g in clusters],
        "problem": {
            "tasks": list(problem.task_names),
            "blocks": problem.backbone.num_blocks,
            "input_shape": list(problem.backbone.input_shape),
            "stn_gmac": costs.stn_gmac,
            "one_net_gmac": costs.one_net_gmac,
            "weights": _weights_digest(problem),
            "train": _data_description(problem.train_data),
            "val": _data_description(problem.val_data),
            "rescale": problem.rescale is not None,
        },
    }


def _check_identity(root: Path, identity: dict[str, Any]) -> None:
    path = root / IDENTITY_FILE
    if not path.is_file():
        leftovers = [p.name for p in (root / "search", root / "units", root / "plan") if p.exists()]
        if leftovers:
            raise ConfigError(f"{str(root)!r} holds evaluation files ({', '.join(leftovers)}) but no {IDENTITY_FILE}; "
                              "choose another output folder")
        write_json(path, identity)
        return
    saved = read_json(path)
    if not isinstance(saved, dict):
        raise CheckpointError(f"{str(path)!r} holds a JSON {type(saved).__name__}, not an evaluation's settings; "
                              "restore the file or choose another output folder")
    saved_json, wanted = json.loads(json.dumps(saved)), json.loads(json.dumps(identity))
    changed = sorted(k for k in set(saved_json) | set(wanted) if saved_json.get(k) != wanted.get(k))
    if changed:
        raise ConfigError(
            f"{str(root)!r} holds an evaluation with other settings ({', '.join(changed)} differ); rerun with the same "
            "strategy, config, schedule, data and options to continue it, or choose another output folder"
        )


def _structure(problem: Problem, graph: Any) -> str:
    if graph == one_net(problem.backbone.num_blocks, problem.task_names):
        return "one_net"
    if graph == stn(problem.backbone.num_blocks, problem.task_names):
        return "stn"
    return "other" if any(isinstance(n, (Skip, Gate)) for n in graph.nodes) else "tree"


def _partitions(graph: Any) -> list[list[list[str]]]:
    return [[list(group) for group in partition] for partition in task_partitions(graph)]


def _with_run_folder(config: Any, folder: Path) -> Any:
    # A strategy whose config has a run folder (task grouping keeps finished candidates there) gets one per seed.
    fields = getattr(config, "__dataclass_fields__", {})
    if "folder" in fields and getattr(config, "folder", None) is None:
        return dataclasses.replace(config, folder=folder)
    return config


def _architecture_info(arch: Architecture, report: Any, **extra: Any) -> dict[str, Any]:
    info = {"label": arch.label, "start": arch.start, "pipeline": arch.pipeline, "frozen": sorted(arch.frozen),
            "details": _jsonable(arch.details), "gmac": report.gmac, "params": report.total_params}
    info.update(extra)
    return info


def _search(strategy: Strategy, problem: Problem, config: Any, budget: Budget | None, root: Path) -> tuple[dict[str, Any], bool]:
    """Run (or resume, or read back) the strategy on ``problem``; save the learned architecture. Returns (record, ran)."""
    seed = problem.seed
    folder = root / "search" / f"seed-{seed}"
    record_path = folder / "record.json"
    if record_path.is_file():
        return dict(read_json(record_path)), False
    start = time.perf_counter()
    with checkpointing(folder / "checkpoints", resume=True):
        result = strategy.learn(problem, _with_run_folder(config, folder / "run"), budget, progress=False)
    seconds = time.perf_counter() - start
    arch = strategy.architecture(problem, result)
    report = cost(arch.graph, arch.params)
    save(result.graph, result.params, folder / "result")
    unit_folder = f"units/seed-{seed}/{unit_slug(NAMES['strategy'])}"
    save_architecture(root / unit_folder / "init", arch.graph, arch.params, _architecture_info(arch, report))
    record = {
        "seed": seed,
        "seconds": seconds,
        "learned": {
            **_architecture_info(arch, report),
            "folder": unit_folder,
            "structure": _structure(problem, arch.graph),
            "partitions": _partitions(arch.graph),
            "ir": print_graph(arch.graph),
        },
        # ``data`` keeps each decision's numbers (e.g. AdaShare's task, block and execute) for analyses of the run.
        "decisions": [{"where": d.where, "what": d.what, "accepted": d.accepted, "reason": d.reason,
                       "data": _jsonable(d.data)} for d in result.decisions],
    }
    write_json(record_path, record)
    return record, True


def _draw_randoms(strategy: Strategy, problem: Problem, target: float, count: int, tolerance: float
                  ) -> tuple[list[Architecture], str]:
    """``count`` distinct random architectures of the strategy's space at ``target`` GMac, and a note if fewer."""
    if count == 0:
        return [], ""
    rng = random.Random(f"mtgraph-evaluation-random-draws-{problem.seed}")
    budget = Budget.gmac(target)
    draws: list[Architecture] = []
    seen: set[str] = set()
    attempts = repeats = 0
    while len(draws) < count and repeats < _REPEATS:
        attempts += 1
        try:
            arch = strategy.sample_random(problem, rng, budget)
        except NotImplementedError as exc:
            return [], f"{strategy.name} cannot draw random architectures yet ({exc}): no random baseline"
        except BudgetError as exc:
            return draws, f"no further random architecture of {strategy.name}'s space at {target:.4g} GMac: {exc}"
        details = {k: v for k, v in arch.details.items() if k != "gmac"}
        key = json.dumps([print_graph(arch.graph), sorted(arch.frozen), _jsonable(details)], sort_keys=True)
        if key in seen:
            repeats += 1
        else:
            seen.add(key)
            draws.append(arch)
            repeats = 0
    note = "" if len(draws) == count else (
        f"only {len(draws)} distinct random architectures of {strategy.name}'s space within ±{tolerance:.0%} of "
        f"{target:.4g} GMac were found ({attempts} draws, the last {_REPEATS} repeating earlier ones; asked for {count})"
    )
    return draws, note


def _plan(strategy: Strategy, problem: Problem, search: dict[str, Any], randoms: int, tolerance: float, root: Path,
          widths: dict[float, WidthMatch]) -> dict[str, Any]:
    """The units of one seed (saved with their fresh weights); read back when planned before."""
    seed = problem.seed
    path = root / "plan" / f"seed-{seed}.json"
    if path.is_file():
        return dict(read_json(path))
    target = float(search["learned"]["gmac"])
    learned_info = {k: v for k, v in search["learned"].items() if k not in ("folder", "ir", "structure")}
    entries: list[dict[str, Any]] = [{"unit": Unit(NAMES["strategy"], "strategy", seed, search["learned"]["folder"]).to_dict(),
                                      **learned_info, "within": True}]
    notes: list[str] = []

    def add(name: str, kind: str, arch: Architecture, multiplier: float | None = None, report: Any = None,
            **extra: Any) -> None:
        unit = Unit(name, kind, seed, f"units/seed-{seed}/{unit_slug(name)}", multiplier)
        report = report if report is not None else cost(arch.graph, arch.params)
        info = _architecture_info(arch, report, **extra)
        save_architecture(root / unit.folder / "init", arch.graph, arch.params, info)
        entries.append({"unit": unit.to_dict(), **info, "partitions": _partitions(arch.graph)})

    for name, kind, start in ((NAMES["stn"], "stn", "stn"), (NAMES["one_net"], "one_net", "one_net")):
        add(name, kind, Architecture.build(problem, start, "", label=name), within=None)  # type: ignore[arg-type]

    match = widths.get(target)
    if match is None:
        match = widths[target] = match_width(problem, target, tolerance=tolerance)
    if match.multiplier is not None:
        backbone, heads = _rescaled(problem, match.multiplier)
        graph = one_net(backbone.num_blocks, problem.task_names)
        arch = Architecture(NAMES["width_matched"], graph, ParamStore.create(graph, backbone, heads), "one_net", "",
                            details={"multiplier": match.multiplier})
        add(NAMES["width_matched"], "width_matched", arch, match.multiplier, within=match.within, note=match.note)
    if match.note:
        notes.append(f"seed {seed}: {match.note}")

    structure = search["learned"]["structure"]
    draws: list[Architecture]
    if structure in ("one_net", "stn") and randoms:
        # At exactly One-Net's (STN's) cost a search space holds One-Net (STN) and at most near-copies of it: the
        # random baseline would repeat a trivial baseline, and rejection sampling for it can take very long.
        name = NAMES[structure]
        draws, note = [], (f"the strategy learned {name}; at its GMac a random architecture of the search space is "
                           f"{name} or a near-copy of it, so no random draws were made (compare with the {name} row)")
    else:
        draws, note = _draw_randoms(strategy, problem, target, randoms, tolerance)
    for k, arch in enumerate(draws, start=1):
        report = cost(arch.graph, arch.params)
        add(f"random {k}", "random", arch, report=report, within=abs(report.gmac - target) <= tolerance * target)
    if note:
        notes.append(f"seed {seed}: {note}")
    plan = {"seed": seed, "target_gmac": target, "units": entries, "notes": notes,
            "width": dataclasses.asdict(match), "random_draws": {"asked": randoms, "drawn": len(draws)}}
    write_json(path, plan)
    return plan


def _rows(plans: Sequence[dict[str, Any]], records: dict[Unit, UnitRecord], tasks: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for plan in plans:
        for entry in plan["units"]:
            unit = Unit.from_dict(entry["unit"], origin=f"plan of seed {plan['seed']}")
            record = records.get(unit)
            if record is None:
                continue
            rows.append({
                "name": unit.name, "kind": unit.kind, "seed": unit.seed, "gmac": entry["gmac"],
                "params": entry["params"], "metrics": {t: record.metrics[t] for t in tasks}, "steps": record.steps,
                "seconds": record.seconds, "label": entry.get("label"), "start": entry.get("start"),
                "pipeline": entry.get("pipeline"), "details": entry.get("details", {}),
                "gmac_within_tolerance": entry.get("within"), "multiplier": unit.multiplier,
                "note": entry.get("note", ""),
            })
    return rows


def evaluate(
    strategy: str | Strategy,
    problem: Problem,
    config: Any = None,
    *,
    out: str | Path,
    seeds: int | Sequence[int] = 3,
    randoms: int = 5,
    schedule: Schedule | None = None,
    budget: Budget | None = None,
    clusters: Sequence[Sequence[str]] | None = None,
    tolerance: float = 0.05,
    executor: str = "sequential",
    workers: int = 1,
    threads: int | Literal["auto"] | None = None,
    progress: bool = False,
    report: bool = True,
) -> Evaluation:
    """Compare a strategy's learned architecture with STN, One-Net and matched-compute baselines over seeds.

    For each seed ``s``: ``strategy.learn(problem.with_seed(s), config, budget)``;
    then, each trained from scratch with ``schedule`` and seed ``s`` and
    measured on ``problem.val_data``: the learned architecture
    (``strategy.architecture``), STN, One-Net, One-Net width-scaled to the
    learned GMac (``problem.rescale``; ±``tolerance``) and ``randoms``
    distinct ``strategy.sample_random`` draws at the learned GMac. Δ_MTL of
    every run is against the same seed's STN. Writes ``results.json``,
    ``report.md`` and ``pareto.png`` (with matplotlib) into ``out``.

    Args:
        strategy: a registry name (``"mtsl"``) or a strategy.
        problem: the problem (``val_data`` required).
        config: the strategy's config (None: ``strategy.config_for(problem, schedule.epochs)``).
        out: the output folder; an interrupted evaluation in it continues.
        seeds: how many seeds (``problem.seed``, ``problem.seed + 1``, ...), or the seeds themselves.
        randoms: random draws per seed (the protocol asks for at least 5; 0 skips them).
        schedule: the training recipe of every retrained architecture (default :class:`Schedule`).
        budget: passed to ``learn`` for strategies with a budget.
        clusters: designed task clusters (a partition of the task names):
            adds the structure-recovery score (adjusted Rand index per depth).
        tolerance: the relative GMac tolerance of the matched baselines.
        executor: how units run: ``"sequential"``, ``"process"`` or ``"ray"``.
        workers: processes of the ``"process"`` executor.
        threads: torch threads per unit: a number; ``"auto"``: chosen by
            :func:`mtgraph.threads.choose_threads` before every search and
            every unit from the load other processes put on the machine
            (the process pool divides the cores among its workers); None:
            the process's current setting (divided among ``workers``).
        progress: show a progress bar over units.
        report: write ``report.md`` and the figure (False: only ``results.json``;
            :func:`mtgraph.evaluation.report.write_report` writes them later).

    Returns:
        An :class:`Evaluation`.

    Raises:
        ConfigError: bad arguments, no validation data, a budget for a
            strategy without one, or a folder holding another evaluation.
        MTGraphError: whatever the strategy or training raises.

    Examples:
        >>> import tempfile
        >>> import mtgraph
        >>> from mtgraph.evaluation import Schedule
        >>> problem = mtgraph.toy_problem(("seg", "depth", "edges"), blocks=3, samples=4)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     result = mtgraph.evaluate("mtsl", problem, out=folder, seeds=2, randoms=1,
        ...                               schedule=Schedule(epochs=1, batch_size=4))
        ...     names = list(result.summary)
        >>> names[0], "STN" in names, "One-Net" in names
        ('learned', True, True)
        >>> len(result.trained), result.results["search"]["learned"]["0"]["structure"]  # 2 seeds x 3 units
        (6, 'one_net')

        On this toy problem MTSL fuses everything (One-Net), so no random
        draws are made (the report says why), and the toy problem has no
        ``rescale``, so there is no width-matched One-Net either.
    """
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    if not isinstance(strat, Strategy):
        raise ConfigError(f"strategy must be a registry name or a Strategy, got {type(strategy).__name__}")
    if not isinstance(problem, Problem):
        raise ConfigError(f"problem must be an mtgraph.Problem, got {type(problem).__name__}")
    if problem.val_data is None:
        raise ConfigError("the evaluation protocol measures every architecture on validation data; give the Problem "
                          "val_data")
    schedule = schedule if schedule is not None else Schedule()
    if not isinstance(schedule, Schedule):
        raise ConfigError(f"schedule must be an mtgraph.evaluation.Schedule, got {type(schedule).__name__}")
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        check_number("evaluate", "seeds", seeds, low=1, integer=True)
        seed_list = [problem.seed + k for k in range(seeds)]
    else:
        seed_list = list(seeds)  # type: ignore[arg-type]
        for s in seed_list:
            check_number("evaluate", "seed", s, low=0, integer=True)
        if not seed_list or len(set(seed_list)) != len(seed_list):
            raise ConfigError(f"seeds must be distinct and at least one, got {seed_list}")
    check_number("evaluate", "randoms", randoms, low=0, integer=True)
    check_number("evaluate", "tolerance", tolerance, low=0, high=1, strict_low=True)
    check_executor(executor, workers)
    if threads is not None and threads != "auto":
        check_number("evaluate", "threads", threads, low=1, integer=True)
    monitor = CpuMonitor() if threads == "auto" and executor == "sequential" else None
    if budget is not None and not strat.uses_budget:
        raise ConfigError(f"{strat.name} has no cost budget; pass budget=None")
    partition = None if clusters is None else check_partition(clusters, problem.task_names)
    config = config if config is not None else strat.config_for(problem, schedule.epochs)

    root = Path(out).resolve()
    _check_identity(root, _identity(strat, problem, config, schedule, randoms, tolerance, budget, partition))
    bar = _Bar(progress, len(seed_list) * (5 + randoms), f"{strat.name}: searching")
    trained: list[str] = []
    reused: list[str] = []
    searched: list[int] = []
    try:
        searches, plans = [], []
        widths: dict[float, WidthMatch] = {}
        for seed in seed_list:
            seeded = problem.with_seed(seed)
            if monitor is not None:
                apply_threads(choose_threads(monitor=monitor))
            search, ran = _search(strat, seeded, config, budget, root)
            if ran:
                searched.append(seed)
            searches.append(search)
            plan = _plan(strat, seeded, search, randoms, tolerance, root, widths)
            plans.append(plan)
            bar.advance(f"{strat.name}: seed {seed} searched")
        units = [Unit.from_dict(e["unit"], origin=f"plan of seed {p['seed']}") for p in plans for e in p["units"]]
        bar.grow(len(seed_list) + len(units))
        records: dict[Unit, UnitRecord] = {}
        todo = []
        for unit in units:
            done = finished(root, unit)
            if done is None:
                todo.append(unit)
            else:
                records[unit] = done
                reused.append(f"seed {unit.seed}: {unit.name}")
                bar.advance(f"seed {unit.seed}: {unit.name} (read back)")

        def finish(unit: Unit, record: UnitRecord) -> None:
            records[unit] = record
            trained.append(f"seed {unit.seed}: {unit.name}")
            bar.advance(f"seed {unit.seed}: {unit.name}")

        import torch

        if isinstance(threads, int):
            per_worker = threads
        elif threads == "auto":
            per_worker = max(1, choose_threads().threads // workers)
        else:
            per_worker = max(1, torch.get_num_threads() // workers)
        setup = UnitSetup(problem, schedule, str(root), per_worker if executor == "sequential" and monitor is None
                          else None, monitor)
        run_jobs(run_unit, setup, todo, executor=executor, workers=workers, threads=per_worker, on_result=finish)
    finally:
        bar.close()

    results = _results(strat, config, schedule, problem, seed_list, randoms, tolerance, budget, partition, searches,
                       plans, records)
    validate_results(results)
    write_json(root / RESULTS_FILE, results, sort_keys=False)  # summaries in reading order: learned first
    if report:
        write_report(root, results)
    return Evaluation(root, results, tuple(trained), tuple(reused), tuple(searched))


def _results(strategy: Strategy, config: Any, schedule: Schedule, problem: Problem, seeds: Sequence[int], randoms: int,
             tolerance: float, budget: Budget | None, partition: Any, searches: Sequence[dict[str, Any]],
             plans: Sequence[dict[str, Any]], records: dict[Unit, UnitRecord]) -> dict[str, Any]:
    directions = {name: dict(task.higher_is_better) for name, task in problem.tasks.items()}
    rows, delta_notes = add_deltas(_rows(plans, records, problem.task_names), directions)
    notes = [note for plan in plans for note in plan["notes"]] + delta_notes
    recovery = None
    if partition is not None:
        learned = {s["seed"]: s["learned"]["partitions"] for s in searches}
        drawn = {plan["seed"]: [e["partitions"] for e in plan["units"] if e["unit"]["kind"] == "random"] for plan in plans}
        recovery = structure_recovery(partition, learned, drawn)
    search_seconds = {str(s["seed"]): s["seconds"] for s in searches}
    retrain_seconds = sum(r["seconds"] for r in rows)
    return {
        "format": RESULTS_FORMAT,
        "strategy": strategy.name,
        "paper": strategy.paper,
        "config": _jsonable(config),
        "protocol": {
            "seeds": list(seeds), "randoms": randoms, "tolerance": tolerance, "schedule": schedule.to_dict(),
            "budget": None if budget is None else budget.describe(), "tasks": list(problem.task_names),
            "train_size": len(problem.train_dataset),  # type: ignore[arg-type]
            "val_size": len(getattr(problem.val_data, "dataset", problem.val_data)),  # type: ignore[arg-type]
            "reference": dataclasses.asdict(problem.reference_costs),
        },
        "search": {
            "seconds": search_seconds,
            "retrain_seconds": retrain_seconds,
            "gmac_steps": None,
            "note": "wall time of the strategy run that finished each seed's search (a resumed search counts only "
                    "its last part); GMac·steps are not counted: strategies do not report their training steps",
            "learned": {str(s["seed"]): {"structure": s["learned"]["structure"], "gmac": s["learned"]["gmac"],
                                         "pipeline": s["learned"]["pipeline"], "partitions": s["learned"]["partitions"],
                                         "ir": s["learned"]["ir"]} for s in searches},
            "decisions": {str(s["seed"]): s["decisions"] for s in searches},
        },
        "rows": rows,
        "summary": summarise(rows),
        "structure_recovery": recovery,
        "notes": notes,
    }

