"""The task-grouping driver (papers/003): train candidates, select networks under a budget, build the choice by passes.

:func:`run_grouping` runs the whole method on a :class:`~mtgraph.Problem`
(:class:`~mtgraph.strategies.grouping.GroupingStrategy` is its front door):

1. **Candidates** (:mod:`.candidates`): a One-Net per task subset, built
   from the traced backbone and trained with the shared loop; per-task
   validation losses and costs.
2. **Selection** (:mod:`.selection`): the exact branch and bound, or one of
   the paper's approximations (``config.method``):

   * ``"exact"``: train all ``2^k − 1`` subsets (plus the small singles);
   * ``"higher_order"``: train only singles and pairs, predict every larger
     network's losses from its pairs, select, then train the chosen
     predicted networks;
   * ``"early_stopping"``: train every candidate for one pass over
     ``early_fraction`` of the training data, select on those early losses,
     then train the chosen networks fully.

3. **Solution** (:mod:`.solution`): One-Net split at the input into one
   network per group of served tasks, built by the ``split`` pass, with the
   trained candidates' weights.

Costs are in *networks* (the paper's SNT): a candidate's cost is its trunk
MACs (every backbone block once; heads are left out as in the paper, where a
multi-task network costs 1 SNT however many decoders it has) divided by the
trunk MACs of one full-size network. The run's :class:`~mtgraph.Budget` (GMac)
is converted to networks by :mod:`.units`: ``(G − H) / T`` with ``T`` the
trunk and ``H`` every task's head once. With ``cost="latency"`` the measured
onnxruntime latency of each candidate (heads included) divided by the median
over full-size candidates is used instead, against the same count of networks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtgraph.analysis.cost import cost as cost_report
from mtgraph.budget import Budget
from mtgraph.errors import BudgetError, ConfigError
from mtgraph.frontend.backbone import Backbone
from mtgraph.problem import Problem
from mtgraph.strategies.grouping import report
from mtgraph.strategies.grouping.candidates import (
    SMALL,
    CandidateRecord,
    CandidateSpec,
    TrainingSetup,
    TrainOptions,
    candidate_specs,
    load_candidate,
    train_candidates,
)
from mtgraph.strategies.grouping.config import GroupingConfig, planned_trainings
from mtgraph.strategies.grouping.scaled import ScaledBaseline, plan_scaled_baselines
from mtgraph.strategies.grouping.selection import (
    Candidate,
    Solution,
    cheapest_cover,
    early_stopping_approximation,
    higher_order_approximation,
    higher_order_candidates,
    select_networks,
)
from mtgraph.strategies.grouping.solution import build_solution
from mtgraph.strategies.grouping.units import NetworkUnit, budget_of_networks, gmac_limit
from mtgraph.strategies.result import StrategyResult
from mtgraph.train import evaluate

__all__ = ["DEFAULT_NETWORKS", "run_grouping", "learn_grouping"]

#: The budget of a run given no :class:`~mtgraph.Budget`: two full-size networks.
DEFAULT_NETWORKS = 2.0


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
        full = [r for r in records if r.label is None]
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
        if self.unit is None:  # pragma: no cover - fix_unit runs before any record is converted
            raise ConfigError("internal error: the cost unit is not fixed yet")
        value = float(record.macs) if self.config.cost == "macs" else float(record.latency_ms or 0.0)
        return value / self.unit

    def candidate(self, record: CandidateRecord) -> Candidate:
        """The selection record of ``record``."""
        return record.candidate(self.cost_of(record))

    def train_full(self, candidate: Candidate) -> Candidate:
        """The ``train`` hook of the approximations: train ``candidate``'s network fully."""
        spec = CandidateSpec(tuple(t for t in self.setup.tasks if t in candidate.tasks), candidate.label, "full")
        (record,) = self.run([spec])
        return self.candidate(record)

    def full_record(self, name: str) -> CandidateRecord | None:
        """The full-run record of network ``name``, if trained."""
        return self.records.get((name, "full"))


def _check_budget_before_training(problem: Problem, networks: float, small_cost: float | None, budget: str) -> None:
    """Fail before any training when no candidate set can fit the budget (trunk costs are known in advance)."""
    names = problem.task_names
    # Every full-size candidate's trunk is the whole backbone (cost 1); a small single costs its backbone's share.
    placeholders = [Candidate(dict.fromkeys(names, 1.0), 1.0)]
    if small_cost is not None:
        placeholders += [Candidate({t: 1.0}, small_cost, label="small") for t in names]
    minimum, cover = cheapest_cover(placeholders, names)
    if minimum > networks * (1 + 1e-9):
        gmac = NetworkUnit.of(problem).gmac(minimum)
        raise BudgetError(
            f"budget {budget} ({networks:.4g} networks) cannot serve every task: the cheapest feasible set of "
            f"networks ({', '.join(c.name for c in cover)}) costs {minimum:g} network(s), {gmac:.6g} GMac; the budget "
            f"must be at least that (Budget.gmac({gmac:.6g}))"
        )


def _select(runner: _Runner, names: tuple[str, ...], config: GroupingConfig, networks: float, small: bool
            ) -> tuple[list[Candidate], Solution, Solution]:
    """Train what ``config.method`` needs and select; return (selection table, proxy solution, final solution)."""
    if config.method == "exact":
        records = runner.run(candidate_specs(names, small=small))
        runner.fix_unit(records)
        table = [runner.candidate(r) for r in records]
        solution = select_networks(table, names, networks)
        return table, solution, solution
    if config.method == "higher_order":
        records = runner.run(candidate_specs(names, max_order=2, small=small))
        runner.fix_unit(records)
        trained = [runner.candidate(r) for r in records]
        approx = higher_order_approximation(trained, names, networks, train=runner.train_full, cost=1.0)
        table = higher_order_candidates(trained, names, cost=1.0)
    else:
        records = runner.run(candidate_specs(names, small=small, phase="early"))
        runner.fix_unit(records)
        table = [runner.candidate(r) for r in records]
        approx = early_stopping_approximation(table, names, networks, train=runner.train_full)
    if approx.final is None:  # pragma: no cover - a train hook is always given
        raise ConfigError("internal error: the approximation did not train its chosen networks")
    return table, approx.proxy, approx.final


def _train_scaled(runner: _Runner, plans: Sequence[ScaledBaseline],
                  variants: Mapping[str, tuple[Backbone, Mapping[str, nn.Module]]], names: tuple[str, ...]
                  ) -> list[dict[str, Any]]:
    """Train the width-scaled all-in-one networks (the candidates' schedule, seed and folder); one row per budget."""
    setup = dataclasses.replace(runner.setup, variants=dict(variants), digest="")
    specs = [CandidateSpec(names, plan.label, "full") for plan in plans if plan.label is not None]
    done: dict[str, CandidateRecord] = {}
    if specs:
        run = train_candidates(setup, specs, executor=runner.config.executor, workers=runner.config.workers,
                               progress=runner.progress)
        done = run.records
        runner.trained += [f"{n} (full)" for n in run.trained]
        runner.reused += [f"{n} (full)" for n in run.reused]
    rows = []
    for plan in plans:
        record: CandidateRecord | None = None
        if plan.label is not None:
            record = done[CandidateSpec(names, plan.label).name]
        elif plan.within:  # a multiplier of exactly 1: the all-in-one candidate itself
            (record,) = runner.run([CandidateSpec(names, None, "full")])
        row: dict[str, Any] = {**dataclasses.asdict(plan), "network": None, "val_losses": None, "loss": None}
        if record is not None:
            row.update(network=record.name, val_losses=dict(record.val_losses), model=record.model,
                       loss=math.fsum(record.val_losses.values()),
                       measured_gmac=(record.macs + sum(record.head_macs.values())) / 1e9)
        rows.append(row)
    return rows


def _resolve_budget(problem: Problem, budget: Budget | None) -> tuple[float, str, float]:
    """The budget in networks, in words and in GMac (None: :data:`DEFAULT_NETWORKS`)."""
    if budget is None:
        return DEFAULT_NETWORKS, f"{DEFAULT_NETWORKS:g} networks (the default)", NetworkUnit.of(problem).gmac(DEFAULT_NETWORKS)
    limit = gmac_limit(problem, budget)
    return NetworkUnit.of(problem).networks(limit), budget.describe(), limit


def _small_heads(heads: Mapping[str, nn.Module] | None, problem: Problem, backbone: Backbone) -> dict[str, nn.Module]:
    if heads is not None:
        missing = [t for t in problem.task_names if t not in heads]
        if missing:
            raise ConfigError(f"no small head for tasks {missing}; small_heads were given for {list(heads)}")
        return {t: heads[t] for t in problem.task_names}
    height, width = backbone.input_shape[-2:]
    # Seeded and without touching the caller's RNG state.
    with torch.random.fork_rng():
        torch.manual_seed(problem.seed + 1)
        return {name: task.make_head(backbone.output_shape[0], (height, width)) for name, task in problem.tasks.items()}


def run_grouping(
    problem: Problem,
    config: GroupingConfig | None = None,
    budget: Budget | None = None,
    *,
    progress: bool = False,
    small_backbone: Backbone | None = None,
    small_heads: Mapping[str, nn.Module] | None = None,
) -> StrategyResult:
    """Learn which tasks share a network (papers/003) and build the chosen networks into one graph by passes.

    The body of :meth:`GroupingStrategy.learn <mtgraph.strategies.grouping.GroupingStrategy.learn>`
    (which documents arguments and results); ``small_backbone`` and
    ``small_heads`` add the paper's cheaper single-task networks from a second
    traced backbone (the path :func:`learn_grouping` keeps for one release).

    Raises:
        ConfigError: a config of the wrong type, a parameter budget, or a
            small backbone that does not read the same input through the
            same number of blocks.
        BudgetError: no set of candidates serving every task fits the budget.

    Examples:
        >>> import mtgraph
        >>> from mtgraph.strategies.grouping import GroupingConfig, budget_of_networks, run_grouping
        >>> problem = mtgraph.toy_problem(("seg", "depth"))
        >>> config = GroupingConfig(epochs=1, batch_size=4, eval_batch_size=4, random_draws=0, pessimal=False)
        >>> run_grouping(problem, config, budget_of_networks(problem, 1)).history["final"]["networks"]
        ['depth+seg']
    """
    config = GroupingConfig() if config is None else config
    if not isinstance(config, GroupingConfig):
        raise ConfigError(f"config must be a GroupingConfig, got {type(config).__name__}")
    names = problem.task_names
    networks, described, limit = _resolve_budget(problem, budget)
    small = small_backbone is not None
    if small_heads is not None and small_backbone is None:
        raise ConfigError("small_heads were given without a small_backbone")
    if config.cost == "macs":
        ratio = small_backbone.macs / problem.backbone.macs if small_backbone is not None else None
        _check_budget_before_training(problem, networks, ratio, described)
    selection_data = problem.val_data if problem.val_data is not None else problem.train_data
    options = TrainOptions(epochs=config.epochs, early_fraction=config.early_fraction, batch_size=config.batch_size,
                           keep=config.keep, eval_batch_size=config.eval_batch_size, latency=config.cost == "latency",
                           latency_repeats=config.latency_repeats, **config.optimizer_settings())
    device = config.device if config.device is not None else problem.device
    budgets = list(config.sweep) if config.sweep is not None else report.default_sweep(len(names), networks)
    # Planned before any training: a problem without rescale fails here, not after the candidates.
    plans, scaled = plan_scaled_baselines(problem, budgets) if config.width_baselines else ([], {})
    variants = {}
    if small_backbone is not None:
        variants[SMALL] = (small_backbone, _small_heads(small_heads, problem, small_backbone))
    with _run_folder(config.folder) as folder:
        setup = TrainingSetup(backbone=problem.backbone, heads=dict(problem.heads), tasks=dict(problem.tasks),
                              train_data=problem.train_data, val_data=selection_data, options=options, folder=folder,
                              seed=problem.seed, variants=variants, device=device)
        runner = _Runner(setup, config, progress)
        table, proxy, final = _select(runner, names, config, networks, small)
        trained = {}
        for net in final.networks:
            record = runner.full_record(net.name)
            if record is None:  # pragma: no cover - every final network is trained fully by _select
                raise ConfigError(f"internal error: network {net.name} of the solution was not trained")
            trained[net.name] = load_candidate(setup, record)
        compiled = build_solution(final, trained, problem)
        scaled_rows = _train_scaled(runner, plans, scaled, names) if config.width_baselines else []
        full = {name: runner.candidate(r) for (name, phase), r in runner.records.items() if phase == "full"}
        history: dict[str, Any] = {
            "method": config.method,
            "budget": {"requested": described, "networks": networks, "gmac": limit},
            "cost_unit": {"measure": config.cost, "one_network": runner.unit},
            "epochs_per_candidate": config.epochs,
            "planned_trainings": planned_trainings(config, len(names), small=small, chosen=networks),
            "candidates": [asdict(r) for r in runner.records.values()],
            "trained": list(runner.trained),
            "reused": list(runner.reused),
            "trainings": len(runner.trained),
            "proxy": report.solution_dict(proxy),
            "final": report.solution_dict(final),
            "serving": dict(compiled.serving),
            "small_keys": list(compiled.small_keys),
            "selection_data": "validation" if problem.val_data is not None else "training (no val_data given)",
        }
    cost = cost_report(compiled.graph, compiled.params)
    history["cost"] = {"total_macs": cost.total_macs, "gmac": cost.gmac, "params": cost.total_params}
    if problem.val_data is not None:
        history["metrics"] = dict(evaluate(compiled.graph, compiled.params, problem.tasks, problem.val_data,
                                           batch_size=config.eval_batch_size))
    rows = report.sweep(table, names, config, networks, problem.seed)
    base = report.baselines(full, names)
    history["sweep"] = rows
    history["baselines"] = base
    history["width_baselines"] = scaled_rows
    history["notes"] = report.notes(rows, base, config.method)
    figures = report.figures(table, rows, base, report.pairwise(full, names), config.method, scaled_rows)
    decisions = report.decisions(table, proxy, final, compiled, networks, config.method)
    return StrategyResult(strategy="grouping", graph=compiled.graph, params=compiled.params,
                          decisions=tuple(decisions), pipeline=compiled.pipeline, figures=figures, history=history,
                          start="one_net")


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
    budget: float = DEFAULT_NETWORKS,
) -> StrategyResult:
    """Task grouping on loose arguments. **Kept for one release:** use ``GroupingStrategy().learn(problem, config, budget)``.

    Builds the :class:`~mtgraph.Problem` (heads made by the task factories,
    seeded by ``seed``, when ``heads`` is None) and runs :func:`run_grouping`
    with ``budget`` networks (:func:`~mtgraph.strategies.grouping.budget_of_networks`).
    The budget moved out of :class:`GroupingConfig` into this argument.

    Args:
        backbone: the traced backbone every full-size candidate is built from.
        heads: task -> head module (copied into every candidate), or None.
        tasks: task name -> :class:`mtgraph.tasks.Task`.
        train_data: map-style dataset (or DataLoader) of ``(image, {target: tensor})``.
        config: :class:`GroupingConfig` (default: exact selection).
        val_data: the selection losses are measured here; None: on ``train_data``.
        seed: training seed of every candidate (and of the heads built here).
        progress: one line per candidate on stderr.
        small_backbone: a second traced backbone, from a narrower model with
            the same blocks and input; adds one cheaper single-task candidate
            per task (the paper's half-size networks).
        small_heads: heads for ``small_backbone`` (None: built by the task factories).
        budget: the inference budget in full-size networks.

    Returns:
        The :class:`~mtgraph.strategies.result.StrategyResult` (see :meth:`GroupingStrategy.learn
        <mtgraph.strategies.grouping.GroupingStrategy.learn>`).

    Raises:
        ConfigError: inconsistent inputs (as :class:`~mtgraph.Problem` raises them).
        BudgetError: no set of candidates serving every task fits ``budget``.

    Examples:
        >>> import torch, mtgraph
        >>> from mtgraph.zoo import resnet_tiny
        >>> from mtgraph.data import SceneDataset
        >>> from mtgraph.tasks import depth, segmentation
        >>> from mtgraph.strategies.grouping import GroupingConfig, learn_grouping
        >>> _ = torch.manual_seed(0)
        >>> backbone = mtgraph.trace(resnet_tiny(width=2), torch.zeros(2, 3, 32, 32))
        >>> tasks = {"seg": segmentation(5, hidden=4), "depth": depth(hidden=4)}
        >>> config = GroupingConfig(epochs=1, batch_size=4, eval_batch_size=4, random_draws=0, pessimal=False)
        >>> result = learn_grouping(backbone, None, tasks, SceneDataset(4, 32, seed=0), config=config, budget=1.0)
        >>> result.history["trainings"], result.history["final"]["networks"], result.graph.tasks
        (3, ['depth+seg'], ('seg', 'depth'))
        >>> learn_grouping(backbone, None, tasks, SceneDataset(4, 32, seed=0), budget=0.5)
        Traceback (most recent call last):
        ...
        mtgraph.errors.BudgetError: budget ... (0.5 networks) cannot serve every task: ...
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        problem = Problem.create(backbone, tasks, train_data, heads=heads, val_data=val_data, seed=seed)
    return run_grouping(problem, config, budget_of_networks(problem, budget), progress=progress,
                        small_backbone=small_backbone, small_heads=small_heads)
