"""The evaluation's numbers: rows per (architecture, seed), summaries with intervals, and the ``results.json`` schema.

Every row's Δ_MTL is measured against the single-task networks trained with
the *same seed* (:func:`mtgraph.tasks.delta_mtl`), so STN's own Δ_MTL is 0.
A summary aggregates one architecture name over the seeds: the mean Δ_MTL
with its 95 % t-interval, and the paired same-seed differences against
One-Net, the width-matched One-Net and the median of the random draws (each
with its interval). The random draws of a seed differ from those of another
seed, so they are also summarised as ``"random (median)"``: per seed, the
median over that seed's draws.

``results.json`` (format :data:`RESULTS_FORMAT`)::

    {"format", "strategy", "config", "protocol", "search", "rows", "summary", "structure_recovery", "notes"}

with each row ``{"name", "kind", "seed", "gmac", "params", "delta_mtl", "metrics", ...}`` and each
summary ``{"kind", "n", "gmac", "delta_mtl_mean", "ci95_low", "ci95_high", "paired", ...}``;
:func:`validate_results` checks it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from mtgraph.errors import CheckpointError
from mtgraph.evaluation.stats import Interval, paired_difference, t_interval
from mtgraph.evaluation.units import KINDS
from mtgraph.tasks import delta_mtl, task_deltas

__all__ = [
    "RESULTS_FORMAT", "ROW_KEYS", "SUMMARY_KEYS", "PAIRED_BASELINES", "NAMES", "RANDOM_MEDIAN",
    "add_deltas", "summarise", "structure_recovery", "validate_results",
]

RESULTS_FORMAT = "mtgraph-evaluation-1"
#: Keys every row has.
ROW_KEYS = ("name", "kind", "seed", "gmac", "params", "delta_mtl", "metrics")
#: Keys every summary has.
SUMMARY_KEYS = ("kind", "n", "gmac", "delta_mtl_mean", "ci95_low", "ci95_high", "paired")
#: The summary name of the per-seed median of the random draws.
RANDOM_MEDIAN = "random (median)"
#: The display names of the fixed architectures, by kind.
NAMES = {"strategy": "learned", "stn": "STN", "one_net": "One-Net", "width_matched": "One-Net (width-matched)"}
#: Paired same-seed differences are taken against these (key -> summary name).
PAIRED_BASELINES = {"one_net": NAMES["one_net"], "width_matched": NAMES["width_matched"], "random_median": RANDOM_MEDIAN}


def _interval_dict(interval: Interval) -> dict[str, Any]:
    mean = None if interval.n == 0 or not math.isfinite(interval.mean) else interval.mean
    return {"n": interval.n, "mean": mean, "ci95_low": interval.low, "ci95_high": interval.high}


def _usable_reference(reference: Mapping[str, Mapping[str, float]]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """STN's metrics without those equal to 0 (a relative change from 0 is undefined), and the ones left out."""
    usable: dict[str, dict[str, float]] = {}
    dropped: list[str] = []
    for task, values in reference.items():
        kept = {m: v for m, v in values.items() if v != 0}
        dropped += [f"{task}.{m}" for m in values if m not in kept]
        if kept:
            usable[task] = kept
    return usable, dropped


def add_deltas(
    rows: Sequence[dict[str, Any]], directions: Mapping[str, Mapping[str, bool]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Copies of ``rows`` with ``delta_mtl`` and ``task_deltas`` against the same seed's STN row, and notes.

    A row whose seed has no STN row gets None for both. A metric on which
    that seed's STN scored exactly 0 has no relative change: it is left out
    of every row of the seed (a task left with no metric is left out of
    Δ_MTL), and a note says so.

    Args:
        rows: rows with ``kind``, ``seed`` and ``metrics`` (``{task: {metric: value}}``).
        directions: ``{task: {metric: higher is better}}``.

    Examples:
        >>> from mtgraph.evaluation.results import add_deltas
        >>> rows = [{"name": "STN", "kind": "stn", "seed": 0, "metrics": {"depth": {"rmse": 1.0, "hits": 0.0}}},
        ...         {"name": "One-Net", "kind": "one_net", "seed": 0, "metrics": {"depth": {"rmse": 0.9, "hits": 0.1}}},
        ...         {"name": "One-Net", "kind": "one_net", "seed": 1, "metrics": {"depth": {"rmse": 0.9, "hits": 0.1}}}]
        >>> with_deltas, notes = add_deltas(rows, {"depth": {"rmse": False, "hits": True}})
        >>> [round(r["delta_mtl"], 6) if r["delta_mtl"] is not None else None for r in with_deltas], notes
        ([0.0, 10.0, None], ['seed 0: STN scored 0 on depth.hits, which is left out of Δ_MTL for that seed'])
    """
    references: dict[int, dict[str, dict[str, float]]] = {}
    notes: list[str] = []
    for row in rows:
        if row["kind"] == "stn":
            usable, dropped = _usable_reference(row["metrics"])
            references[row["seed"]] = usable
            if dropped:
                notes.append(f"seed {row['seed']}: STN scored 0 on {', '.join(dropped)}, which "
                             f"{'is' if len(dropped) == 1 else 'are'} left out of Δ_MTL for that seed")
    out = []
    for row in rows:
        row = dict(row)
        reference = references.get(row["seed"])
        if not reference:
            row["delta_mtl"], row["task_deltas"] = None, None
        else:
            row["delta_mtl"] = delta_mtl(row["metrics"], reference, directions)
            row["task_deltas"] = task_deltas(row["metrics"], reference, directions)
        out.append(row)
    return out, notes


def _per_seed(rows: Sequence[Mapping[str, Any]], name: str, key: str = "delta_mtl") -> dict[int, float]:
    return {r["seed"]: float(r[key]) for r in rows if r["name"] == name and r.get(key) is not None}


def _random_medians(rows: Sequence[Mapping[str, Any]], key: str) -> dict[int, float]:
    by_seed: dict[int, list[float]] = {}
    for row in rows:
        if row["kind"] == "random" and row.get(key) is not None:
            by_seed.setdefault(row["seed"], []).append(float(row[key]))
    return {seed: statistics.median(values) for seed, values in by_seed.items()}


def _summary(
    kind: str, deltas: Mapping[int, float], gmacs: Mapping[int, float], params: Mapping[int, float],
    baselines: Mapping[str, Mapping[int, float]], name: str, task_values: Mapping[str, Mapping[int, float]],
    metrics: Mapping[str, Mapping[str, float]],
) -> dict[str, Any]:
    interval = t_interval([deltas[s] for s in sorted(deltas)])
    entry = _interval_dict(interval)
    paired = {}
    for key, baseline in PAIRED_BASELINES.items():
        if baseline == name:
            continue
        paired[key] = _interval_dict(paired_difference(deltas, baselines.get(baseline, {})))
    return {
        "kind": kind,
        "n": interval.n,
        "seeds": sorted(deltas),
        "gmac": statistics.fmean(gmacs.values()) if gmacs else None,
        "params": statistics.fmean(params.values()) if params else None,
        "delta_mtl_mean": entry["mean"],
        "ci95_low": entry["ci95_low"],
        "ci95_high": entry["ci95_high"],
        "paired": paired,
        "task_deltas": {t: _interval_dict(t_interval([v[s] for s in sorted(v)])) for t, v in task_values.items()},
        "metrics": {t: dict(m) for t, m in metrics.items()},
    }


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """One summary per architecture name, plus ``"random (median)"`` when there are random rows.

    Rows need ``delta_mtl`` and ``task_deltas`` (see :func:`add_deltas`).
    Names come in the order: learned, width-matched One-Net, random
    (median), One-Net, STN, then every other name in row order.

    Examples:
        >>> from mtgraph.evaluation.results import summarise
        >>> rows = [{"name": n, "kind": k, "seed": s, "gmac": 1.0, "params": 10, "delta_mtl": d,
        ...          "task_deltas": {"depth": d}, "metrics": {"depth": {"rmse": 1.0}}}
        ...         for n, k, s, d in [("STN", "stn", 0, 0.0), ("STN", "stn", 1, 0.0),
        ...                            ("One-Net", "one_net", 0, -2.0), ("One-Net", "one_net", 1, -4.0),
        ...                            ("learned", "strategy", 0, 1.0), ("learned", "strategy", 1, 2.0)]]
        >>> summary = summarise(rows)
        >>> list(summary), summary["learned"]["delta_mtl_mean"], summary["learned"]["paired"]["one_net"]["mean"]
        (['learned', 'One-Net', 'STN'], 1.5, 4.5)
    """
    names: dict[str, str] = {}
    for row in rows:
        names.setdefault(row["name"], row["kind"])
    tasks = sorted({t for r in rows if r.get("task_deltas") for t in r["task_deltas"]})
    baselines = {name: _per_seed(rows, name) for name in PAIRED_BASELINES.values() if name in names}
    medians = _random_medians(rows, "delta_mtl")
    if medians:
        baselines[RANDOM_MEDIAN] = medians

    def metric_means(selected: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for task in {t for r in selected for t in r["metrics"]}:
            for metric in {m for r in selected for m in r["metrics"].get(task, {})}:
                values = [float(r["metrics"][task][metric]) for r in selected if metric in r["metrics"].get(task, {})]
                out.setdefault(task, {})[metric] = statistics.fmean(values)
        return out

    summary: dict[str, dict[str, Any]] = {}
    order = [NAMES["strategy"], NAMES["width_matched"], RANDOM_MEDIAN, NAMES["one_net"], NAMES["stn"]]
    order += [n for n in names if n not in order]
    for name in order:
        if name == RANDOM_MEDIAN:
            if not medians:
                continue
            random_rows = [r for r in rows if r["kind"] == "random"]
            task_values = {t: _task_medians(random_rows, t) for t in tasks}
            entry = _summary("random", medians, _random_medians(rows, "gmac"), _random_medians(rows, "params"),
                             baselines, name, task_values, metric_means(random_rows))
            entry["draws"] = {str(s): sum(1 for r in random_rows if r["seed"] == s) for s in sorted(medians)}
            summary[name] = entry
            continue
        if name not in names:
            continue
        selected = [r for r in rows if r["name"] == name]
        task_values = {t: {r["seed"]: float(r["task_deltas"][t]) for r in selected if t in (r.get("task_deltas") or {})}
                       for t in tasks}
        summary[name] = _summary(names[name], _per_seed(rows, name), _per_seed(rows, name, "gmac"),
                                 _per_seed(rows, name, "params"), baselines, name, task_values, metric_means(selected))
    return summary


def _task_medians(rows: Sequence[Mapping[str, Any]], task: str) -> dict[int, float]:
    by_seed: dict[int, list[float]] = {}
    for row in rows:
        if task in (row.get("task_deltas") or {}):
            by_seed.setdefault(row["seed"], []).append(float(row["task_deltas"][task]))
    return {seed: statistics.median(values) for seed, values in by_seed.items()}


def _number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))


def validate_results(data: Any, *, origin: str = "results.json") -> None:
    """Check the structure of a ``results.json`` document; raise CheckpointError listing every problem found.

    Examples:
        >>> from mtgraph.evaluation.results import validate_results
        >>> validate_results({"format": "mtgraph-evaluation-1", "strategy": "mtsl", "config": {}, "rows": [{}],
        ...                   "summary": {}})
        Traceback (most recent call last):
        ...
        mtgraph.errors.CheckpointError: results.json is not a valid evaluation result: rows[0] lacks ...
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{origin} is not a valid evaluation result: not a JSON object")
    if data.get("format") != RESULTS_FORMAT:
        problems.append(f"format is {data.get('format')!r}, expected {RESULTS_FORMAT!r}")
    if not isinstance(data.get("strategy"), str):
        problems.append("strategy must be a registry name (a string)")
    if not isinstance(data.get("config"), Mapping):
        problems.append("config must be an object")
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        problems.append("rows must be a non-empty list")
        rows = []
    for k, row in enumerate(rows):
        if not isinstance(row, Mapping):
            problems.append(f"rows[{k}] is not an object")
            continue
        missing = [key for key in ROW_KEYS if key not in row]
        if missing:
            problems.append(f"rows[{k}] lacks {missing}")
            continue
        if row["kind"] not in KINDS:
            problems.append(f"rows[{k}].kind is {row['kind']!r}, not one of {list(KINDS)}")
        if not isinstance(row["seed"], int) or isinstance(row["seed"], bool):
            problems.append(f"rows[{k}].seed must be an integer")
        for key in ("gmac", "params", "delta_mtl"):
            if not _number_or_none(row[key]):
                problems.append(f"rows[{k}].{key} must be a finite number or null")
        metrics = row["metrics"]
        if not isinstance(metrics, Mapping) or not all(
            isinstance(v, Mapping) and all(_number_or_none(x) for x in v.values()) for v in metrics.values()
        ):
            problems.append(f"rows[{k}].metrics must map task -> metric -> number")
    summary = data.get("summary")
    if not isinstance(summary, Mapping):
        problems.append("summary must be an object")
        summary = {}
    for name, entry in summary.items():
        if not isinstance(entry, Mapping):
            problems.append(f"summary[{name!r}] is not an object")
            continue
        missing = [key for key in SUMMARY_KEYS if key not in entry]
        if missing:
            problems.append(f"summary[{name!r}] lacks {missing}")
            continue
        for key in ("gmac", "delta_mtl_mean", "ci95_low", "ci95_high"):
            if not _number_or_none(entry[key]):
                problems.append(f"summary[{name!r}].{key} must be a finite number or null")
        low, high, mean = entry["ci95_low"], entry["ci95_high"], entry["delta_mtl_mean"]
        if low is not None and high is not None and mean is not None and not low <= mean <= high:
            problems.append(f"summary[{name!r}]: the interval [{low}, {high}] does not contain the mean {mean}")
        paired = entry["paired"]
        if not isinstance(paired, Mapping) or any(
            not isinstance(v, Mapping) or not {"n", "mean", "ci95_low", "ci95_high"} <= set(v) for v in paired.values()
        ):
            problems.append(f"summary[{name!r}].paired must map baseline -> {{n, mean, ci95_low, ci95_high}}")
    names = {row.get("name") for row in rows if isinstance(row, Mapping)}
    absent = sorted(str(n) for n in names - set(summary))
    if absent:
        problems.append(f"rows name architectures with no summary: {absent}")
    if problems:
        raise CheckpointError(f"{origin} is not a valid evaluation result: " + "; ".join(problems))


def structure_recovery(
    clusters: Sequence[Sequence[str]],
    learned: Mapping[int, Sequence[Sequence[Sequence[str]]]],
    random: Mapping[int, Sequence[Sequence[Sequence[Sequence[str]]]]] | None = None,
) -> dict[str, Any]:
    """Adjusted Rand index of the learned partition at each depth against the designed ``clusters``.

    Args:
        clusters: the designed task clusters (a partition of the task names).
        learned: seed -> the learned architecture's partition at every block.
        random: seed -> the random draws' partitions at every block (their
            ARI, averaged per seed, is the chance level to read the learned
            one against); None or empty: no reference.

    Returns:
        ``{"clusters": [...], "depths": [{"block", "learned": {n, mean, ci95_low, ci95_high, per_seed},
        "random": {...} | None}, ...]}``.

    Examples:
        >>> from mtgraph.evaluation.results import structure_recovery
        >>> clusters = [["seg", "edges"], ["depth"]]
        >>> learned = {0: [[["seg", "edges", "depth"]], [["seg", "edges"], ["depth"]]],
        ...            1: [[["seg", "edges", "depth"]], [["seg", "edges"], ["depth"]]]}
        >>> depths = structure_recovery(clusters, learned)["depths"]
        >>> [d["learned"]["mean"] for d in depths]   # one group is chance level (0); the clusters exactly give 1
        [0.0, 1.0]
    """
    from mtgraph.analysis.partition import adjusted_rand_index

    blocks = max((len(p) for p in learned.values()), default=0)
    depths = []
    for b in range(blocks):
        scores = {seed: adjusted_rand_index(parts[b], clusters) for seed, parts in learned.items() if b < len(parts)}
        entry: dict[str, Any] = {"block": b, "learned": {**_interval_dict(t_interval(list(scores.values()))),
                                                         "per_seed": {str(s): v for s, v in sorted(scores.items())}}}
        chance = {
            seed: statistics.fmean(adjusted_rand_index(draw[b], clusters) for draw in draws)
            for seed, draws in (random or {}).items() if draws
        }
        entry["random"] = _interval_dict(t_interval(list(chance.values()))) if chance else None
        depths.append(entry)
    return {"clusters": [list(g) for g in clusters], "depths": depths}
