"""The task-grouping driver (papers/003): train candidates, select networks under a budget, compile the choice.

:func:`learn_grouping` runs the whole method:

1. **Candidates** (:mod:`.candidates`): a One-Net per task subset, built
   from the traced backbone and trained with the shared loop; per-task
   validation losses and costs.
2. **Selection** (:mod:`.selection`): the exact branch and bound, or one of
   the paper's approximations (``config.method``):

   * ``"exact"``: train all ``2^k − 1`` subsets (plus the small singles);
   * ``"higher_order"``: train only singles and pairs, predict every larger
     network's losses from its pairs, select, then train the chosen
     predicted networks;
   * ``"early_stopping"``: train every candidate for
     ``early_fraction`` of the schedule, select on those early losses, then
     train the chosen networks fully.

3. **Solution** (:mod:`.solution`): the chosen networks as one graph split
   at the input, with the trained candidates' weights.

Costs and budgets are in *networks*: a candidate's cost is its trunk MACs
(every backbone block once; the heads are left out as in the paper, where a
multi-task network costs 1 SNT however many decoders it has) divided by the
trunk MACs of one full-size network, so every full-size candidate costs
exactly 1 and a budget of 2 buys two of them. With ``cost="latency"`` the
measured onnxruntime latency of each candidate (heads included) divided by
the median over full-size candidates is used instead.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtgraph.analysis.cost import cost as cost_report
from mtgraph.errors import BudgetError, ConfigError
from mtgraph.frontend.backbone import Backbone
from mtgraph.strategies.grouping.candidates import (
    EXECUTORS,
    KEEP,
    CandidateRecord,
    CandidateSpec,
    TrainingSetup,
    TrainOptions,
    candidate_specs,
    load_candidate,
    train_candidates,
)
from mtgraph.strategies.grouping.selection import (
    Candidate,
    Solution,
    budget_sweep,
    cheapest_cover,
    early_stopping_approximation,
    higher_order_approximation,
    higher_order_candidates,
    random_baseline,
    select_networks,
)
from mtgraph.strategies.grouping.solution import CompiledSolution, build_solution
from mtgraph.strategies.result import Decision, StrategyResult
from mtgraph.train import evaluate

__all__ = ["METHODS", "COSTS", "GroupingConfig", "config_for_budget", "learn_grouping", "solution_dict"]

#: Selection methods: exact, and the paper's two approximations.
METHODS = ("exact", "higher_order", "early_stopping")
#: What a candidate's cost measures.
COSTS = ("macs", "latency")


def _positive(name: str, value: Any, *, integer: bool = False, optional: bool = False, zero: bool = False) -> None:
    if value is None and optional:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ConfigError(f"GroupingConfig.{name} must be a finite {'integer' if integer else 'number'} "
                          f"{'>= 0' if zero else '> 0'}, got {value!r}")


@dataclass(frozen=True)
class GroupingConfig:
    """Options of :func:`learn_grouping`.

    Selection:
        method: ``"exact"``, ``"higher_order"`` or ``"early_stopping"`` (module docstring).
        budget: inference budget of the returned network, in full-size
            networks (see the module docstring).
        sweep: budgets of the loss-vs-budget curve in ``figures`` (None:
            1 to k networks in steps of 1/2, plus ``budget``; budgets below
            the cheapest feasible set are left out).
        cost: ``"macs"`` (default) or ``"latency"`` (measured; slow, noisy on a busy machine).
        random_draws: draws of the Random baseline per budget (0: none).

    Training every candidate (Adam on the unweighted mean of its tasks' losses, as in the paper):
        epochs: epochs of one candidate's full run (fractions become whole steps).
        total_epochs: if set, overrides ``epochs``: about this many epochs
            in total over all candidate trainings the method plans
            (:func:`config_for_budget`).
        early_fraction: length of the early runs of ``"early_stopping"``.
        batch_size, lr, weight_decay, keep (``"best"``: the epoch with the
        lowest mean validation loss, the paper's checkpoint choice;
        ``"last"``), eval_batch_size, latency_repeats.

    Running the jobs:
        executor: ``"sequential"``, ``"process"`` (local processes) or ``"ray"``.
        workers: processes for ``"process"`` (None: one per CPU).
        folder: run folder for records, saved candidates and checkpoints; a
            rerun with the same folder skips finished candidates (None: a
            temporary folder, deleted at the end).

    Raises:
        ConfigError: an unknown method, cost, keep or executor, or a value out of its range.

    Examples:
        >>> from mtgraph.strategies.grouping import GroupingConfig
        >>> config = GroupingConfig(method="higher_order", budget=1.5, epochs=2)
        >>> config.planned_trainings(num_tasks=3, small=False)  # 3 singles, 3 pairs, 1 predicted network
        7.0
        >>> GroupingConfig(method="greedy")
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: GroupingConfig.method must be one of ['exact', 'higher_order', 'early_stopping'], ...
    """

    method: str = "exact"
    budget: float = 2.0
    sweep: tuple[float, ...] | None = None
    cost: str = "macs"
    random_draws: int = 1000
    epochs: float = 10.0
    total_epochs: float | None = None
    early_fraction: float = 0.2
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    keep: str = "best"
    eval_batch_size: int = 64
    latency_repeats: int = 50
    executor: str = "sequential"
    workers: int | None = None
    folder: str | Path | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"GroupingConfig.method must be one of {list(METHODS)}, got {self.method!r}")
        if self.cost not in COSTS:
            raise ConfigError(f"GroupingConfig.cost must be one of {list(COSTS)}, got {self.cost!r}")
        if self.keep not in KEEP:
            raise ConfigError(f"GroupingConfig.keep must be one of {list(KEEP)}, got {self.keep!r}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"GroupingConfig.executor must be one of {list(EXECUTORS)}, got {self.executor!r}")
        _positive("budget", self.budget)
        _positive("epochs", self.epochs)
        _positive("total_epochs", self.total_epochs, optional=True)
        _positive("lr", self.lr)
        _positive("weight_decay", self.weight_decay, zero=True)
        _positive("random_draws", self.random_draws, integer=True, zero=True)
        for name in ("batch_size", "eval_batch_size", "latency_repeats"):
            _positive(name, getattr(self, name), integer=True)
        _positive("workers", self.workers, integer=True, optional=True)
        if not isinstance(self.early_fraction, (int, float)) or not 0 < self.early_fraction <= 1:
            raise ConfigError(f"GroupingConfig.early_fraction must be in (0, 1], got {self.early_fraction!r}")
        if self.sweep is not None:
            sweep = tuple(self.sweep)
            for b in sweep:
                _positive("sweep", b)
            object.__setattr__(self, "sweep", sweep)
        if self.folder is not None and not isinstance(self.folder, (str, Path)):
            raise ConfigError(f"GroupingConfig.folder must be a path or None, got {self.folder!r}")

    def planned_trainings(self, num_tasks: int, small: bool) -> float:
        """How many full-run equivalents the method trains (chosen networks estimated by the budget)."""
        k = num_tasks
        singles = k if small else 0
        if self.method == "exact":
            return float(2**k - 1 + singles)
        if self.method == "higher_order":
            return float(k + k * (k - 1) // 2 + singles + (1 if k >= 3 else 0))
        return (2**k - 1 + singles) * self.early_fraction + max(1.0, self.budget)

    def per_candidate_epochs(self, num_tasks: int, small: bool) -> float:
        """Epochs of one candidate's full run (``epochs``, or ``total_epochs`` spread over the plan)."""
        if self.total_epochs is None:
            return float(self.epochs)
        return self.total_epochs / self.planned_trainings(num_tasks, small)


def config_for_budget(epochs: float) -> GroupingConfig:
    """A config training about ``epochs`` epochs in total, spread over every candidate (exact method).

    Args:
        epochs: the total training budget in epochs (> 0).

    Returns:
        A :class:`GroupingConfig` with ``total_epochs=epochs``.

    Raises:
        ConfigError: ``epochs`` is not a positive number.

    Examples:
        >>> from mtgraph.strategies.grouping import config_for_budget
        >>> config = config_for_budget(60)
        >>> config.total_epochs, config.per_candidate_epochs(num_tasks=2, small=False)  # 3 candidates
        (60.0, 20.0)
    """
    _positive("total_epochs", epochs)
    return GroupingConfig(total_epochs=float(epochs))


# --------------------------------------------------------------------------- #
# Inputs
# --------------------------------------------------------------------------- #


def _check_inputs(backbone: Any, heads: Any, tasks: Any, train_data: Any, small_backbone: Any, small_heads: Any) -> tuple[str, ...]:
    for label, value in (("backbone", backbone), ("small_backbone", small_backbone)):
        if value is not None and not isinstance(value, Backbone):
            raise ConfigError(f"{label} must be a traced mtgraph.Backbone, got {type(value).__name__}; "
                              "trace it first: mtgraph.trace(model, example_input)")
    if backbone is None:
        raise ConfigError("backbone must be a traced mtgraph.Backbone, got None")
    if not isinstance(tasks, Mapping) or not tasks:
        raise ConfigError("tasks must be a non-empty mapping task name -> mtgraph.tasks.Task")
    for label, value in (("heads", heads), ("small_heads", small_heads)):
        if value is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{label} must be a mapping task name -> nn.Module (or None), got {type(value).__name__}")
            missing = [t for t in tasks if t not in value]
            if missing:
                raise ConfigError(f"no {label[:-1].replace('_', ' ')} for tasks {missing}; given for {list(value)}")
    if small_heads is not None and small_backbone is None:
        raise ConfigError("small_heads were given without a small_backbone")
    if small_backbone is not None and (
        small_backbone.num_blocks != backbone.num_blocks or tuple(small_backbone.input_shape) != tuple(backbone.input_shape)
    ):
        raise ConfigError(
            f"the small backbone must read the same input through the same number of blocks as the backbone: it has "
            f"{small_backbone.num_blocks} blocks and input {list(small_backbone.input_shape)}, the backbone "
            f"{backbone.num_blocks} blocks and input {list(backbone.input_shape)} (trace the narrower model with the "
            "same input and cuts)"
        )
    if not isinstance(train_data, (Dataset, DataLoader)):
        raise ConfigError(f"train_data must be a map-style torch Dataset or a DataLoader, got {type(train_data).__name__}")
    return tuple(tasks)


def _make_heads(heads: Mapping[str, nn.Module] | None, tasks: Mapping[str, Any], backbone: Backbone,
                seed: int) -> dict[str, nn.Module]:
    if heads is not None:
        return {t: heads[t] for t in tasks}
    size = tuple(backbone.input_shape[-2:])
    # Seeded and without touching the caller's RNG state.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return {name: task.make_head(backbone.output_shape[0], size) for name, task in tasks.items()}


def _check_budget_before_training(names: tuple[str, ...], budget: float, small_cost: float | None) -> None:
    """Fail before any training when no candidate set can fit ``budget`` (costs in MACs are known in advance)."""
    # Every full-size candidate's trunk is the whole backbone (cost 1); a small single costs its backbone's share.
    placeholders = [Candidate(dict.fromkeys(names, 1.0), 1.0)]
    if small_cost is not None:
        placeholders += [Candidate({t: 1.0}, small_cost, label="small") for t in names]
    minimum, cover = cheapest_cover(placeholders, names)
    if minimum > budget * (1 + 1e-9):
        raise BudgetError(
            f"budget {budget:g} cannot serve every task: the cheapest feasible set of networks "
            f"({', '.join(c.name for c in cover)}) costs {minimum:g}; the budget must be at least {minimum:g} "
            "(in full-size networks)"
        )


@contextlib.contextmanager
def _run_folder(folder: str | Path | None) -> Iterator[Path]:
    if folder is not None:
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the grouping run folder {str(path)!r}: {exc.strerror or exc}") from exc
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mtgraph-grouping-") as tmp:
        yield Path(tmp)


# --------------------------------------------------------------------------- #
# Running candidates and turning records into selection candidates
# --------------------------------------------------------------------------- #


class _Runner:
    """Trains candidates through :func:`train_candidates` and converts records to selection candidates."""

    def __init__(self, setup: TrainingSetup, config: GroupingConfig, progress: bool) -> None:
        self.setup = setup
        self.config = config
        self.progress = progress
        self.records: dict[tuple[str, str], CandidateRecord] = {}
        self.trained: list[str] = []
        self.reused: list[str] = []
        self.unit: float | None = None

    def run(self, specs: Sequence[CandidateSpec]) -> list[CandidateRecord]:
        done = train_candidates(self.setup, specs, executor=self.config.executor, workers=self.config.workers,
                                progress=self.progress)
        phase = {s.name: s.phase for s in specs}
        for name, record in done.records.items():
            self.records[(name, phase[name])] = record
        self.trained += [f"{n} ({phase[n]})" for n in done.trained]
        self.reused += [f"{n} ({phase[n]})" for n in done.reused]
        return list(done.records.values())

    def fix_unit(self, records: Sequence[CandidateRecord]) -> float:
        """The cost of one full-size network (trunk MACs, or median latency), from the first records."""
        full = [r for r in records if not r.small]
        if not full:
            raise ConfigError("no full-size candidate was trained; cannot fix the cost unit")
        if self.config.cost == "macs":
            self.unit = float(full[0].macs)
        else:
            self.unit = statistics.median(float(r.latency_ms or 0.0) for r in full)
        if not self.unit > 0:
            raise ConfigError(f"the cost unit (one full-size network's {self.config.cost}) is {self.unit}; it must be > 0")
        return self.unit

    def cost_of(self, record: CandidateRecord) -> float:
        """A record's cost in full-size networks."""
        assert self.unit is not None  # fix_unit runs first
        value = float(record.macs) if self.config.cost == "macs" else float(record.latency_ms or 0.0)
        return value / self.unit

    def candidate(self, record: CandidateRecord) -> Candidate:
        """The selection record of ``record``."""
        return record.candidate(self.cost_of(record))

    def train_full(self, candidate: Candidate) -> Candidate:
        """The ``train`` hook of the approximations: train ``candidate``'s network fully."""
        spec = CandidateSpec(tuple(t for t in self.setup.tasks if t in candidate.tasks), candidate.label is not None, "full")
        (record,) = self.run([spec])
        return self.candidate(record)

    def full_record(self, name: str) -> CandidateRecord | None:
        """The full-run record of network ``name``, if trained."""
        return self.records.get((name, "full"))


# --------------------------------------------------------------------------- #
# Figures
# --------------------------------------------------------------------------- #


def solution_dict(solution: Solution) -> dict[str, Any]:
    """A JSON-compatible summary of a selection :class:`Solution`.

    Args:
        solution: the selection.

    Returns:
        Networks, serving, task losses, totals, budget, auxiliary heads and the text form.

    Examples:
        >>> from mtgraph.strategies.grouping import Candidate, select_networks, solution_dict
        >>> table = [Candidate({"a": 1.0, "b": 2.0}, 1.0), Candidate({"b": 1.0}, 1.0)]
        >>> summary = solution_dict(select_networks(table, ["a", "b"], budget=2.0))
        >>> summary["networks"], summary["serving"], summary["auxiliary"]
        (['a+b', 'b'], {'a': 'a+b', 'b': 'b'}, {'a+b': ['b']})
    """
    return {
        "networks": [n.name for n in solution.networks],
        "serving": dict(solution.serving),
        "task_losses": dict(solution.task_losses),
        "total_loss": solution.total_loss,
        "total_cost": solution.total_cost,
        "budget": solution.budget,
        "auxiliary": {k: list(v) for k, v in solution.auxiliary_heads().items()},
        "text": str(solution),
    }


def _default_sweep(num_tasks: int, budget: float) -> list[float]:
    budgets = [1.0 + 0.5 * i for i in range(2 * num_tasks - 1)]
    if not any(math.isclose(b, budget) for b in budgets):
        budgets.append(float(budget))
    return sorted(budgets)


def _baselines(full: Mapping[str, Candidate], names: tuple[str, ...]) -> list[dict[str, Any]]:
    """All-in-one and independent networks, from the fully trained candidates that exist."""
    rows = []
    everything = "+".join(sorted(names))
    if everything in full:
        c = full[everything]
        rows.append({"baseline": "all-in-one", "networks": [c.name], "cost": c.cost, "loss": math.fsum(c.losses.values())})
    for label, suffix in (("independent", ""), ("independent small", "[small]")):
        singles = [full.get(f"{t}{suffix}") for t in names]
        if all(s is not None for s in singles):
            rows.append({
                "baseline": label, "networks": [s.name for s in singles if s is not None],
                "cost": math.fsum(s.cost for s in singles if s is not None),
                "loss": math.fsum(s.losses[t] for s, t in zip(singles, names) if s is not None),
            })
    return rows


def _pairwise(full: Mapping[str, Candidate], names: tuple[str, ...]) -> tuple[list[str], list[list[float]], str] | None:
    """papers/003 Table 2: relative gain (%) on task t (column) of the pair {t, u} over t's single (row u)."""
    small = all(f"{t}[small]" in full for t in names)
    base = {t: full.get(f"{t}[small]" if small else t) for t in names}
    if any(b is None for b in base.values()):
        return None
    matrix = []
    for u in names:
        row = []
        for t in names:
            pair = full.get("+".join(sorted((t, u))))
            single = base[t]
            if t == u or pair is None or single is None:
                row.append(0.0)
                continue
            row.append(100.0 * (single.losses[t] - pair.losses[t]) / single.losses[t])
        matrix.append(row)
    return list(names), matrix, "small single-task networks" if small else "single-task networks"


def _curve_notes(curve: Sequence[Mapping[str, Any]], baselines: Sequence[Mapping[str, Any]], method: str) -> str:
    lines = [f"### Total validation loss vs inference budget ({method} selection)", "",
             "| budget (networks) | total loss | cost | networks (-> served tasks) | random mean |", "|---|---|---|---|---|"]
    for row in curve:
        random_mean = row.get("random_mean")
        lines.append(f"| {row['budget']:g} | {row['loss']:.4f} | {row['cost']:.3g} | {row['text']} | "
                     f"{'' if random_mean is None else f'{random_mean:.4f}'} |")
    if baselines:
        lines += ["", "| baseline | cost | total loss |", "|---|---|---|"]
        lines += [f"| {b['baseline']} ({', '.join(b['networks'])}) | {b['cost']:.3g} | {b['loss']:.4f} |" for b in baselines]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- #
# Decisions
# --------------------------------------------------------------------------- #


def _decisions(table: Sequence[Candidate], proxy: Solution, final: Solution, compiled: CompiledSolution,
               budget: float, method: str) -> list[Decision]:
    where = f"budget {budget:g}"
    chosen = {n.name for n in proxy.networks}
    out = []
    for c in sorted(table, key=lambda c: c.name):
        losses = ", ".join(f"{t}={v:.4g}" for t, v in c.losses.items())
        kind = "predicted" if c.predicted else ("early" if method == "early_stopping" else "validation")
        if c.name in chosen:
            served = sorted(t for t, n in proxy.serving.items() if n == c.name)
            reason = (f"in the lowest-loss set within the budget (total {proxy.total_loss:.4g}, cost "
                      f"{proxy.total_cost:.3g} <= {budget:g}); serves {', '.join(served) or 'nothing'}; {kind} losses {losses}; "
                      f"cost {c.cost:.3g}")
        else:
            reason = f"not in the lowest-loss set within the budget; {kind} losses {losses}; cost {c.cost:.3g}"
        out.append(Decision(where, f"network {c.name}", c.name in chosen, reason,
                            {"losses": dict(c.losses), "cost": c.cost, "predicted": c.predicted}))
    for task, name in compiled.serving.items():
        net = final.network(task)
        others = {n.name: n.losses[task] for n in final.networks if task in n.losses and n.name != name}
        alternatives = f"; other chosen heads: {', '.join(f'{n}={v:.4g}' for n, v in others.items())}" if others else ""
        out.append(Decision(f"task {task}", f"serve from {name}", True,
                            f"lowest validation loss among the chosen networks: {net.losses[task]:.4g}{alternatives}",
                            {"loss": net.losses[task], "alternatives": others}))
    for name, unused in compiled.auxiliary.items():
        out.append(Decision(f"network {name}", f"drop heads {'+'.join(unused)}", True,
                            "auxiliary heads: they were trained with the network but their tasks are served by "
                            "another chosen network", {"heads": list(unused)}))
    for name in compiled.dropped:
        out.append(Decision(f"network {name}", "drop network", True, "it serves no task: every task it has is "
                            "served better by another chosen network", {}))
    return out


# --------------------------------------------------------------------------- #
# The driver
# --------------------------------------------------------------------------- #


def learn_grouping(
    backbone: Backbone,
    heads: Mapping[str, nn.Module] | None,
    tasks: Mapping[str, Any],
    train_data: Dataset | DataLoader,
    *,
    config: GroupingConfig | None = None,
    val_data: Dataset | DataLoader | None = None,
    seed: int = 0,
    progress: bool = False,
    small_backbone: Backbone | None = None,
    small_heads: Mapping[str, nn.Module] | None = None,
) -> StrategyResult:
    """Learn which tasks share a network (papers/003) and compile the chosen networks into one graph.

    Args:
        backbone: the traced backbone every full-size candidate is built from.
        heads: task -> head module (copied into every candidate), or None
            to build each task's head with its factory (seeded by ``seed``).
        tasks: task name -> :class:`mtgraph.tasks.Task`.
        train_data: map-style dataset (or DataLoader) of ``(image, {target: tensor})``.
        config: :class:`GroupingConfig` (default: exact selection, budget 2 networks).
        val_data: the selection losses are measured here (the paper selects
            on validation data); None: on ``train_data`` (noted in the history).
        seed: training seed of every candidate (and of the heads built here).
        progress: one line per candidate on stderr.
        small_backbone: a second traced backbone, from a narrower model with
            the same blocks and input; adds one cheaper single-task candidate
            per task (the paper's half-size networks).
        small_heads: heads for ``small_backbone`` (None: built by the task factories).

    Returns:
        A :class:`~mtgraph.strategies.result.StrategyResult` (``strategy="grouping"``)
        whose graph serves every task from the chosen networks at
        ``config.budget``. ``figures``: ``"curve"`` (the loss-vs-budget rows
        on the selection table), ``"baselines"``, ``"candidates"``,
        ``"similarity"`` (the pairwise table as a heatmap, when singles and
        pairs are fully trained) and ``"notes"`` (the curve as Markdown).
        ``history``: every candidate record, which were trained or reused,
        the proxy and final solutions, and validation metrics.

    Raises:
        ConfigError: inconsistent inputs.
        BudgetError: no set of candidates serving every task fits
            ``config.budget`` (naming the cheapest feasible cost).

    Examples:
        Exact selection over two tasks (3 candidates, one optimizer step each) at a budget of one network:

        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.grouping import GroupingConfig, learn_grouping
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=2), torch.zeros(2, 3, 32, 32))
        >>> tasks = {"seg": segmentation(5, hidden=4), "depth": depth(hidden=4)}
        >>> config = GroupingConfig(budget=1.0, epochs=1, batch_size=4, eval_batch_size=4, random_draws=0)
        >>> result = learn_grouping(backbone, None, tasks, SceneDataset(4, 32, seed=0), config=config)
        >>> result.history["trainings"], result.history["final"]["networks"], result.graph.tasks
        (3, ['depth+seg'], ('seg', 'depth'))
        >>> learn_grouping(backbone, None, tasks, SceneDataset(4, 32, seed=0), config=GroupingConfig(budget=0.5))
        Traceback (most recent call last):
        ...
        mtgraph.errors.BudgetError: budget 0.5 cannot serve every task: ...
    """
    config = GroupingConfig() if config is None else config
    if not isinstance(config, GroupingConfig):
        raise ConfigError(f"config must be a GroupingConfig, got {type(config).__name__}")
    names = _check_inputs(backbone, heads, tasks, train_data, small_backbone, small_heads)
    if config.cost == "latency" and config.method == "higher_order":
        # Predicted networks are not built before selection, so their latency is unknown.
        raise ConfigError("cost='latency' needs every candidate measured; use it with method 'exact' or 'early_stopping'")
    small = small_backbone is not None
    if config.cost == "macs":
        _check_budget_before_training(names, config.budget, small_backbone.macs / backbone.macs if small_backbone else None)
    made_heads = _make_heads(heads, tasks, backbone, seed)
    made_small = _make_heads(small_heads, tasks, small_backbone, seed + 1) if small_backbone is not None else None
    selection_data = val_data if val_data is not None else train_data
    epochs = config.per_candidate_epochs(len(names), small)
    options = TrainOptions(epochs=epochs, early_fraction=config.early_fraction, batch_size=config.batch_size,
                           lr=config.lr, weight_decay=config.weight_decay, keep=config.keep,
                           eval_batch_size=config.eval_batch_size, latency=config.cost == "latency",
                           latency_repeats=config.latency_repeats)
    with _run_folder(config.folder) as folder:
        setup = TrainingSetup(backbone=backbone, heads=made_heads, tasks=dict(tasks), train_data=train_data,
                              val_data=selection_data, options=options, folder=folder, seed=seed,
                              small_backbone=small_backbone, small_heads=made_small)
        runner = _Runner(setup, config, progress)
        table, proxy, final = _select(runner, names, config, small)
        networks = {}
        for net in final.networks:
            record = runner.full_record(net.name)
            if record is None:  # pragma: no cover - every final network is trained fully by _select
                raise ConfigError(f"internal error: network {net.name} of the solution was not trained")
            networks[net.name] = load_candidate(setup, record)
        compiled = build_solution(final, networks, names, backbone)
        full = {name: runner.candidate(r) for (name, phase), r in runner.records.items() if phase == "full"}
        history: dict[str, Any] = {
            "method": config.method,
            "budget": config.budget,
            "cost_unit": {"measure": config.cost, "one_network": runner.unit},
            "epochs_per_candidate": epochs,
            "candidates": [asdict(r) for r in runner.records.values()],
            "trained": list(runner.trained),
            "reused": list(runner.reused),
            "trainings": len(runner.trained),
            "proxy": solution_dict(proxy),
            "final": solution_dict(final),
            "serving": dict(compiled.serving),
            "selection_data": "validation" if val_data is not None else "training (no val_data given)",
        }
    report = cost_report(compiled.graph, compiled.params)
    history["cost"] = {"total_macs": report.total_macs, "gmac": report.gmac, "params": report.total_params}
    if val_data is not None:
        history["metrics"] = dict(evaluate(compiled.graph, compiled.params, tasks, val_data,
                                           batch_size=config.eval_batch_size))
    figures = _figures(table, full, names, config)
    decisions = _decisions(table, proxy, final, compiled, config.budget, config.method)
    if compiled.pipeline == "" and any(n.label for n in final.networks):
        decisions.append(Decision("solution", "no pipeline", True, "a small-backbone network is kept; no pass "
                                  "builds a path on another backbone, so the structure is given as the graph only"))
    return StrategyResult(strategy="grouping", graph=compiled.graph, params=compiled.params,
                          decisions=tuple(decisions), pipeline=compiled.pipeline, figures=figures, history=history)


def _select(runner: _Runner, names: tuple[str, ...], config: GroupingConfig, small: bool
            ) -> tuple[list[Candidate], Solution, Solution]:
    """Train what ``config.method`` needs and select; return (selection table, proxy solution, final solution)."""
    if config.method == "exact":
        records = runner.run(candidate_specs(names, small=small))
        runner.fix_unit(records)
        table = [runner.candidate(r) for r in records]
        solution = select_networks(table, names, config.budget)
        return table, solution, solution
    if config.method == "higher_order":
        records = runner.run(candidate_specs(names, max_order=2, small=small))
        runner.fix_unit(records)
        trained = [runner.candidate(r) for r in records]
        approx = higher_order_approximation(trained, names, config.budget, train=runner.train_full, cost=1.0)
        table = higher_order_candidates(trained, names, cost=1.0)
    else:
        records = runner.run(candidate_specs(names, small=small, phase="early"))
        runner.fix_unit(records)
        table = [runner.candidate(r) for r in records]
        approx = early_stopping_approximation(table, names, config.budget, train=runner.train_full)
    if approx.final is None:  # pragma: no cover - a train hook is always given
        raise ConfigError("internal error: the approximation did not train its chosen networks")
    return table, approx.proxy, approx.final


def _figures(table: Sequence[Candidate], full: Mapping[str, Candidate], names: tuple[str, ...],
             config: GroupingConfig) -> dict[str, Any]:
    minimum, _ = cheapest_cover(table, names)
    budgets = list(config.sweep) if config.sweep is not None else _default_sweep(len(names), config.budget)
    budgets = [b for b in budgets if b >= minimum - 1e-9 * max(1.0, minimum)]
    curve = []
    for point in budget_sweep(table, names, budgets):
        row: dict[str, Any] = {"budget": point.budget, "loss": point.loss, "cost": point.solution.total_cost,
                               "networks": [n.name for n in point.solution.networks],
                               "serving": dict(point.solution.serving), "text": str(point.solution)}
        if config.random_draws:
            row["random_mean"] = random_baseline(table, names, point.budget, draws=config.random_draws, seed=0).mean_loss
        curve.append(row)
    baselines = _baselines(full, names)
    figures: dict[str, Any] = {
        "curve": curve,
        "baselines": baselines,
        "candidates": [{"network": c.name, "cost": c.cost, "predicted": c.predicted, **dict(c.losses)}
                       for c in sorted(table, key=lambda c: (len(c.tasks), c.name))],
        "notes": _curve_notes(curve, baselines, config.method),
    }
    pairwise = _pairwise(full, names)
    if pairwise is not None:
        labels, matrix, base = pairwise
        figures["similarity"] = {f"pairwise gain (%) over {base}; row = trained with, column = task": (labels, matrix)}
    return figures
