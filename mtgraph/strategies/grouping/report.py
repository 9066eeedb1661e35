"""The evidence of a task-grouping run: the loss-vs-budget sweep, baselines, pairwise gains, decisions.

Everything here reads selection tables (pure values); the driver puts the
typed figures (:class:`~mtgraph.strategies.result.Curve`,
:class:`~mtgraph.strategies.result.Heatmap`,
:class:`~mtgraph.strategies.result.Table`) into ``StrategyResult.figures``
and the raw rows into ``history``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mtgraph.strategies.grouping.config import GroupingConfig
from mtgraph.strategies.grouping.selection import (
    Candidate,
    Solution,
    budget_sweep,
    cheapest_cover,
    pessimal_select,
    random_baseline,
)
from mtgraph.strategies.grouping.solution import CompiledSolution
from mtgraph.strategies.result import Curve, Decision, Heatmap, Table

__all__ = ["solution_dict"]


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


def default_sweep(num_tasks: int, budget: float) -> list[float]:
    """1 to k networks in steps of 1/2 (papers/003 §6), plus ``budget``."""
    budgets = [1.0 + 0.5 * i for i in range(2 * num_tasks - 1)]
    if not any(math.isclose(b, budget) for b in budgets):
        budgets.append(float(budget))
    return sorted(budgets)


def sweep(table: Sequence[Candidate], names: tuple[str, ...], config: GroupingConfig, budget: float,
          seed: int) -> list[dict[str, Any]]:
    """One row per budget of the curve: the selection on ``table``, and the Random and Pessimal baselines."""
    minimum, _ = cheapest_cover(table, names)
    budgets = list(config.sweep) if config.sweep is not None else default_sweep(len(names), budget)
    budgets = [b for b in budgets if b >= minimum - 1e-9 * max(1.0, minimum)]
    rows = []
    for point in budget_sweep(table, names, budgets):
        row: dict[str, Any] = {"budget": point.budget, "loss": point.loss, "cost": point.solution.total_cost,
                               "networks": [n.name for n in point.solution.networks],
                               "serving": dict(point.solution.serving), "text": str(point.solution)}
        if config.random_draws:
            random = random_baseline(table, names, point.budget, draws=config.random_draws, seed=seed)
            row["random_mean"], row["random_std"] = random.mean_loss, random.std_loss
        if config.pessimal:
            worst = pessimal_select(table, names, point.budget)
            row["pessimal"], row["pessimal_text"] = worst.total_loss, str(worst)
        rows.append(row)
    return rows


def baselines(full: Mapping[str, Candidate], names: tuple[str, ...]) -> list[dict[str, Any]]:
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


def pairwise(full: Mapping[str, Candidate], names: tuple[str, ...]) -> Heatmap | None:
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
    against = "small single-task networks" if small else "single-task networks"
    return Heatmap.from_matrix(f"pairwise gain (%) over {against}; row = trained with, column = task", names, matrix)


def figures(table: Sequence[Candidate], rows: Sequence[Mapping[str, Any]], base: Sequence[Mapping[str, Any]],
            heatmap: Heatmap | None, method: str, scaled: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The typed figures of a run: the loss-vs-budget curve, the pairwise heatmap and the tables."""
    x = [r["budget"] for r in rows]
    series: dict[str, list[float]] = {f"selected ({method})": [r["loss"] for r in rows]}
    if rows and "random_mean" in rows[0]:
        series["random (mean)"] = [r["random_mean"] for r in rows]
    if rows and "pessimal" in rows[0]:
        series["pessimal"] = [r["pessimal"] for r in rows]
    if scaled:
        by_budget = {s["budget"]: s["loss"] for s in scaled}
        series["all-in-one (width-scaled)"] = [math.nan if by_budget.get(b) is None else by_budget[b] for b in x]
    tasks = sorted({t for c in table for t in c.tasks})
    out: dict[str, Any] = {
        "loss_vs_budget": Curve(f"total validation loss vs inference budget ({method} selection)",
                                "budget (networks)", "total validation loss", tuple(x),
                                {k: tuple(v) for k, v in series.items()}),
        "selection": Table("chosen networks per budget", ("budget (networks)", "total loss", "cost (networks)",
                                                           "networks -> served tasks"),
                           tuple((r["budget"], r["loss"], r["cost"], r["text"]) for r in rows)),
        "candidates": Table("candidate networks", ("network", "cost (networks)", "predicted", *tasks),
                            tuple((c.name, c.cost, c.predicted, *(c.losses.get(t, math.nan) for t in tasks))
                                  for c in sorted(table, key=lambda c: (len(c.tasks), c.name)))),
        "baselines": Table("baselines", ("baseline", "networks", "cost (networks)", "total loss"),
                           tuple((b["baseline"], "+".join(b["networks"]) if len(b["networks"]) == 1
                                  else ", ".join(b["networks"]), b["cost"], b["loss"]) for b in base)),
    }
    if scaled:
        out["width_baselines"] = Table(
            "all-in-one network width-scaled to each budget", ("budget (networks)", "width multiplier", "GMac",
                                                                "total loss", "note"),
            tuple((s["budget"], s["multiplier"], s["gmac"], s["loss"], s["note"]) for s in scaled))
    if heatmap is not None:
        out["pairwise"] = heatmap
    return out


def notes(rows: Sequence[Mapping[str, Any]], base: Sequence[Mapping[str, Any]], method: str) -> str:
    """The curve and the baselines as Markdown."""
    lines = [f"### Total validation loss vs inference budget ({method} selection)", "",
             "| budget (networks) | total loss | cost | networks (-> served tasks) | random mean | pessimal |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        random_mean, worst = row.get("random_mean"), row.get("pessimal")
        lines.append(f"| {row['budget']:g} | {row['loss']:.4f} | {row['cost']:.3g} | {row['text']} | "
                     f"{'' if random_mean is None else f'{random_mean:.4f}'} | {'' if worst is None else f'{worst:.4f}'} |")
    if base:
        lines += ["", "| baseline | cost | total loss |", "|---|---|---|"]
        lines += [f"| {b['baseline']} ({', '.join(b['networks'])}) | {b['cost']:.3g} | {b['loss']:.4f} |" for b in base]
    return "\n".join(lines) + "\n"


def decisions(table: Sequence[Candidate], proxy: Solution, final: Solution, compiled: CompiledSolution,
              budget: float, method: str) -> list[Decision]:
    """One decision per candidate (chosen or not, with its losses), per task (which head serves it) and per drop."""
    where = f"budget {budget:g} networks"
    chosen = {n.name for n in proxy.networks}
    out = []
    for c in sorted(table, key=lambda c: c.name):
        losses = ", ".join(f"{t}={v:.4g}" for t, v in c.losses.items())
        kind = "predicted" if c.predicted else ("early" if method == "early_stopping" else "validation")
        if c.name in chosen:
            served = sorted(t for t, n in proxy.serving.items() if n == c.name)
            reason = (f"in the lowest-loss set within the budget (total {proxy.total_loss:.4g}, cost "
                      f"{proxy.total_cost:.3g} <= {budget:g}); serves {', '.join(served) or 'nothing'}; {kind} losses "
                      f"{losses}; cost {c.cost:.3g}")
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
    groups = [[t for t, n in compiled.serving.items() if n == name] for name in compiled.networks]
    out.append(Decision("solution", f"split{{block=0}} into {len(groups)} network(s)", True,
                        f"one separate network per group of served tasks {groups}; pipeline "
                        f"{compiled.pipeline or '(One-Net itself)'}", {"groups": groups, "pipeline": compiled.pipeline}))
    if compiled.small_keys:
        out.append(Decision("solution", "small-backbone weights", True,
                            f"keys {', '.join(compiled.small_keys)} hold the small backbone's blocks: replaying the "
                            "pipeline gives the same graph with full-size weights", {"keys": list(compiled.small_keys)}))
    return out
