"""Multi-task performance relative to single-task networks (Δ_MTL, papers/000 eq. 3).

    Δ_MTL = 1/T Σ_i (-1)^{l_i} (M_{m,i} - M_{s,i}) / M_{s,i}     (in percent)

with ``m`` the multi-task network, ``s`` the single-task networks and
``l_i = 1`` when lower is better for metric ``i``. papers/000 uses one metric
per task; when a task reports several metrics here, the task's term is the
mean over its metrics, so every task weighs the same whatever its number of
metrics (with one metric per task this is exactly eq. 3). Δ^{SD}_MTL is the
same average restricted to the tasks S and D: pass ``tasks=``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mtgraph.errors import ConfigError

__all__ = ["delta_mtl", "task_deltas"]

Results = Mapping[str, Mapping[str, float]]
Directions = Mapping[str, Mapping[str, bool] | bool]


def task_deltas(
    mt: Results,
    stl: Results,
    higher_is_better: Directions,
    tasks: Sequence[str] | None = None,
) -> dict[str, float]:
    """Return each task's relative improvement in percent (mean over its metrics).

    Args:
        mt: multi-task results, ``{task: {metric: value}}``.
        stl: single-task (reference) results; the metrics listed here for a
            task are the ones compared, and ``mt`` must report them all.
        higher_is_better: ``{task: {metric: bool}}``, or ``{task: bool}`` when
            every metric of the task has the same direction.
        tasks: the tasks to include (default: every task of ``stl``).

    Returns:
        ``{task: delta}`` in percent, positive when the multi-task network is better.

    Raises:
        ConfigError: no task, a task or metric missing from ``mt``, ``stl`` or
            ``higher_is_better``, or a single-task value of 0.

    Examples:
        >>> from mtgraph.tasks import task_deltas
        >>> mt = {"seg": {"miou": 0.44}, "depth": {"rmse": 0.9}}
        >>> stl = {"seg": {"miou": 0.40}, "depth": {"rmse": 1.0}}
        >>> {t: round(d, 2) for t, d in task_deltas(mt, stl, {"seg": True, "depth": False}).items()}
        {'seg': 10.0, 'depth': 10.0}
    """
    chosen = list(stl) if tasks is None else list(tasks)
    if not chosen:
        raise ConfigError("Δ_MTL needs at least one task")
    out = {}
    for task in chosen:
        if task not in stl or task not in mt:
            side = "single-task" if task not in stl else "multi-task"
            raise ConfigError(f"Δ_MTL: task {task!r} has no {side} results")
        if not stl[task]:
            raise ConfigError(f"Δ_MTL: task {task!r} has no single-task metrics")
        terms = []
        for metric, reference in stl[task].items():
            if metric not in mt[task]:
                raise ConfigError(f"Δ_MTL: multi-task results of {task!r} lack metric {metric!r}")
            if reference == 0:
                raise ConfigError(f"Δ_MTL: single-task {task}.{metric} is 0; relative change undefined")
            sign = 1.0 if _higher_is_better(higher_is_better, task, metric) else -1.0
            terms.append(sign * (mt[task][metric] - reference) / reference)
        out[task] = 100.0 * sum(terms) / len(terms)
    return out


def delta_mtl(
    mt: Results,
    stl: Results,
    higher_is_better: Directions,
    tasks: Sequence[str] | None = None,
) -> float:
    """Return Δ_MTL in percent: the mean over tasks of :func:`task_deltas`.

    Args:
        mt: multi-task results, ``{task: {metric: value}}``.
        stl: single-task (reference) results, same form.
        higher_is_better: ``{task: {metric: bool}}`` or ``{task: bool}``.
        tasks: the tasks to average over (default: every task of ``stl``),
            e.g. ``["seg", "depth"]`` for Δ^{SD}_MTL.

    Returns:
        The mean per-task relative improvement, in percent.

    Raises:
        ConfigError: as :func:`task_deltas`.

    Examples:
        >>> from mtgraph.tasks import delta_mtl
        >>> mt = {"seg": {"miou": 0.42}, "depth": {"rmse": 1.1}}
        >>> stl = {"seg": {"miou": 0.40}, "depth": {"rmse": 1.0}}
        >>> round(delta_mtl(mt, stl, {"seg": True, "depth": False}), 2)
        -2.5
        >>> delta_mtl(mt, stl, {"seg": True, "depth": False}, tasks=["normals"])
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: Δ_MTL: task 'normals' has no single-task results
    """
    deltas = task_deltas(mt, stl, higher_is_better, tasks)
    return sum(deltas.values()) / len(deltas)


def _higher_is_better(directions: Directions, task: str, metric: str) -> bool:
    if task not in directions:
        raise ConfigError(f"Δ_MTL: no higher-is-better flag for task {task!r}")
    flags = directions[task]
    if isinstance(flags, bool):
        return flags
    if metric not in flags:
        raise ConfigError(f"Δ_MTL: no higher-is-better flag for {task}.{metric}")
    return bool(flags[metric])
