"""Is a multi-task model *safe*? Δ_I and η̂ of papers/004 §3.1, §4.1 (Definitions 1-3).

Per task t and metric j, with STL the single-task model's value and M the
multi-task model's::

    rel_{t,j} = (-1)^{p_{t,j}} (M_{t,j} - STL_{t,j}) / |STL_{t,j}|    p = 1 if lower is better
    Δ_I       = mean_t mean_j rel_{t,j}
    η̂         = 100 · mean_t mean_j [rel_{t,j} >= 0]                  (a tie counts as safe)
    η̂_ε       = 100 · mean_t mean_j [rel_{t,j} >= −ε]                 (tolerance variant, notes D.9)

A task contributes fractionally when only some of its metrics improve.
η̂ = 100 is the paper's "safe multi-task learning" (Definition 2); the strict
sign test flips easily on noisy metrics, hence the tolerance variant, which
the notes recommend reporting beside (never instead of) the strict one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mtgraph.errors import ConfigError

__all__ = ["SafetyReport", "safety"]

Results = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class SafetyReport:
    """Safety of one multi-task model against single-task models.

    Attributes:
        relative: task -> metric -> signed relative change vs STL (positive = better).
        task_delta: task -> mean of its metrics' relative changes.
        delta_i: Δ_I, the mean over tasks of ``task_delta``.
        eta: strict η̂ in percent.
        eta_tolerance: η̂_ε in percent (``tolerance`` = ε).
        tolerance: ε.
        worst_task: the task with the lowest ``task_delta``.

    Examples:
        >>> from mtgraph.strategies.smtl import safety
        >>> report = safety({"seg": {"miou": 0.5}}, {"seg": {"miou": 0.4}}, {"seg": {"miou": True}})
        >>> round(report.delta_i, 3), report.eta, report.worst_task
        (0.25, 100.0, 'seg')
    """

    relative: dict[str, dict[str, float]]
    task_delta: dict[str, float]
    delta_i: float
    eta: float
    eta_tolerance: float
    tolerance: float
    worst_task: str


def safety(
    mtl: Results,
    stl: Results,
    higher_is_better: Mapping[str, Mapping[str, bool]],
    *,
    tolerance: float = 0.05,
    tasks: Sequence[str] | None = None,
) -> SafetyReport:
    """Compare ``mtl`` with ``stl`` (both ``{task: {metric: value}}``) over the metrics ``stl`` lists.

    ``higher_is_better`` gives each metric's direction (``Task.higher_is_better``).

    Args:
        mtl: the multi-task model's metrics, task -> metric -> value.
        stl: the single-task models' metrics, task -> metric -> value.
        higher_is_better: task -> metric -> whether a higher value is better.
        tolerance: ε of η̂_ε, >= 0.
        tasks: the tasks to compare (default: every task of ``stl``).

    Returns:
        The :class:`SafetyReport` (Δ_I, η̂, η̂_ε, per-task changes).

    Raises:
        ConfigError: a missing task, metric or direction, a zero STL value
            (relative change undefined) or a negative tolerance.

    Examples:
        >>> from mtgraph.strategies.smtl import safety
        >>> report = safety(
        ...     mtl={"seg": {"miou": 0.5}, "depth": {"rmse": 1.02}},
        ...     stl={"seg": {"miou": 0.4}, "depth": {"rmse": 1.0}},
        ...     higher_is_better={"seg": {"miou": True}, "depth": {"rmse": False}},
        ... )
        >>> report.eta, report.eta_tolerance, report.worst_task  # depth is 2% worse: unsafe, within ε = 5%
        (50.0, 100.0, 'depth')
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) or tolerance < 0:
        raise ConfigError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    chosen = list(stl) if tasks is None else list(tasks)
    if not chosen:
        raise ConfigError("safety needs at least one task")
    relative: dict[str, dict[str, float]] = {}
    strict: list[float] = []
    loose: list[float] = []
    for task in chosen:
        if task not in stl or task not in mtl:
            raise ConfigError(f"safety: task {task!r} has no {'single' if task not in stl else 'multi'}-task results")
        if not stl[task]:
            raise ConfigError(f"safety: task {task!r} has no single-task metrics")
        relative[task] = {}
        for metric, reference in stl[task].items():
            if metric not in mtl[task]:
                raise ConfigError(f"safety: the multi-task results of {task!r} lack metric {metric!r}")
            if metric not in higher_is_better.get(task, {}):
                raise ConfigError(f"safety: no direction (higher_is_better) for {task}.{metric}")
            if reference == 0:
                raise ConfigError(f"safety: single-task {task}.{metric} is 0, so its relative change is undefined")
            sign = 1.0 if higher_is_better[task][metric] else -1.0
            relative[task][metric] = sign * (float(mtl[task][metric]) - float(reference)) / abs(float(reference))
        values = list(relative[task].values())
        strict.append(sum(v >= 0 for v in values) / len(values))
        loose.append(sum(v >= -tolerance for v in values) / len(values))
    task_delta = {t: sum(r.values()) / len(r) for t, r in relative.items()}
    return SafetyReport(
        relative=relative,
        task_delta=task_delta,
        delta_i=sum(task_delta.values()) / len(task_delta),
        eta=100.0 * sum(strict) / len(strict),
        eta_tolerance=100.0 * sum(loose) / len(loose),
        tolerance=float(tolerance),
        worst_task=min(task_delta, key=task_delta.__getitem__),
    )
