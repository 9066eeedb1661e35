"""Measure negative and positive transfer on the ``designed`` scene preset (docs/results/designed/).

For every seed the same training set (``SceneConfig.designed()``, hidden labels
and all) and the same fully labelled validation set are used; only the network
weights' initialisation and the data order follow the seed. Three architectures
over one traced ``resnet_tiny`` train with the same epochs, optimiser, schedule
and batch size:

* ``STN``: one network per task (:func:`mtgraph.stn`);
* ``One-Net``: every block shared by every task (:func:`mtgraph.one_net`);
* ``Clusters``: one network per designed cluster
  (:data:`mtgraph.data.DESIGNED_CLUSTERS`, :func:`mtgraph.from_groups`), i.e.
  each cluster's tasks trained together and nothing shared across clusters.

Per task, paired same-seed differences are summarised by their mean and 95 %
Student-t interval: STN against One-Net (negative transfer where STN is better
beyond the interval) and Clusters against STN (positive transfer where the
cluster network is better beyond the interval). Δ_MTL is against the same-seed
STN. Segmentation also reports per-class IoU.

Run from the repository root (about 10 minutes for 5 seeds on an idle 2-core CPU)::

    nice -n 10 python examples/designed_transfer.py --out docs/results/designed

It writes ``results.json`` (every number, the settings and the command line)
and ``results.md.inc`` (the tables docs/benchmark.md includes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import mtgraph
from mtgraph.data import DESIGNED_CLUSTERS, DESIGNED_TASKS, SceneConfig, SceneDataset, designed_tasks
from mtgraph.persist import atomic_write_bytes
from mtgraph.tasks import SegmentationMeter, delta_mtl, task_deltas
from mtgraph.train import adam, evaluate, fit
from mtgraph.zoo import resnet_tiny

#: Two-sided 95 % Student-t quantiles t_{0.975, df} for df = 1..10 (n - 1 degrees of freedom for n seeds).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
ARCHITECTURES = ("STN", "One-Net", "Clusters", "Scene+Unrelated")


def mean_interval(values: Sequence[float]) -> dict[str, float]:
    """Mean and 95 % t-interval of ``values`` (n >= 2)."""
    n = len(values)
    mean = statistics.fmean(values)
    half = T_975[n - 1] * statistics.stdev(values) / math.sqrt(n)
    return {"n": n, "mean": mean, "ci95_low": mean - half, "ci95_high": mean + half}


def build_graph(name: str, num_blocks: int) -> mtgraph.MTGraph:
    tasks = list(DESIGNED_TASKS)
    if name == "STN":
        return mtgraph.stn(num_blocks, tasks)
    if name == "One-Net":
        return mtgraph.one_net(num_blocks, tasks)
    if name == "Clusters":
        groups = [list(c) for c in DESIGNED_CLUSTERS]
    else:  # "Scene+Unrelated": the two scene clusters merged, the unrelated task alone
        groups = [[t for t in tasks if t != "unrelated"], ["unrelated"]]
    return mtgraph.from_groups(num_blocks, tasks, [groups] * num_blocks)


def class_iou(module: torch.nn.Module, data: SceneDataset, num_classes: int) -> list[float]:
    """IoU of every segmentation label (NaN for a label absent from predictions and targets)."""
    meter = SegmentationMeter(num_classes)
    module.eval()
    with torch.no_grad():
        for start in range(0, len(data), 64):
            batch = [data[i] for i in range(start, min(start + 64, len(data)))]
            images = torch.stack([b[0] for b in batch])
            meter.update(module(images)["seg"], torch.stack([b[1]["seg"] for b in batch]))
    return meter.class_iou()


def seed_problem(seed: int, tasks: Mapping[str, Any], train: SceneDataset, val: SceneDataset, width: int) -> mtgraph.Problem:
    """The seed's Problem: its backbone and heads are the initial weights every architecture of the seed copies."""
    torch.manual_seed(seed)
    return mtgraph.Problem.create(resnet_tiny(width=width), tasks, train, val_data=val, seed=seed)


def train_one(arch: str, problem: mtgraph.Problem, args: argparse.Namespace, num_labels: int) -> dict[str, Any]:
    """Train ``arch`` from the problem's initial weights; return its row (metrics, cost, wall time)."""
    graph = build_graph(arch, problem.backbone.num_blocks)
    params = mtgraph.ParamStore.create(graph, problem.backbone, problem.heads)  # copies: every run starts alike
    started = time.perf_counter()
    steps = args.epochs * math.ceil(len(problem.train_dataset) / args.batch_size)
    decay_at = max(1, round(0.75 * steps))
    result = fit(graph, params, problem.tasks, problem.train_data, steps=steps, batch_size=args.batch_size,
                 optimizer=adam(args.lr), scheduler=lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, [decay_at], 0.1),
                 seed=problem.seed, progress=False)
    seconds = time.perf_counter() - started
    val = problem.val_data
    if not isinstance(val, SceneDataset):
        raise TypeError("the validation data must be a SceneDataset")
    metrics = evaluate(result.graph, result.params, problem.tasks, val)
    report = mtgraph.cost(result.graph, result.params)
    ious = class_iou(mtgraph.compile(result.graph, result.params), val, num_labels)
    return {
        "name": arch, "seed": problem.seed, "seconds": seconds, "gmac": report.gmac, "params": report.total_params,
        "metrics": {task: dict(values) for task, values in metrics.items()}, "seg_class_iou": ious,
    }


def trivial_metrics(tasks: Mapping[str, Any], train: SceneDataset, val: SceneDataset) -> dict[str, dict[str, float]]:
    """Metrics of input-blind predictors fitted on the training labels: what a task scores without learning anything.

    seg: each pixel's most frequent training label; edges: each pixel's training edge frequency; depth: each
    pixel's median training depth; normals: each pixel's mean training normal; unrelated: 0 (its mean).
    """
    targets = [train[i][1] for i in range(len(train))]
    stack = lambda name: torch.stack([t[name] for t in targets])  # noqa: E731
    seg = stack("seg")
    counts = torch.stack([(seg == k).sum(0) for k in range(int(seg.max()) + 1)])
    seg_logits = torch.nn.functional.one_hot(counts.argmax(0), counts.shape[0]).permute(2, 0, 1).float()
    edge_rate = stack("edges").mean(0).clamp(1e-4, 1 - 1e-4)
    depth = stack("depth")
    depth_median = depth.where(depth > 0, torch.tensor(float("nan"))).nanmedian(0).values
    normals = stack("normals").sum(0)
    outputs = {
        "seg": seg_logits, "edges": torch.log(edge_rate / (1 - edge_rate)), "depth": depth_median,
        "normals": normals, "unrelated": torch.zeros_like(targets[0]["unrelated"]),
    }
    out = {}
    for name, task in tasks.items():
        meter = task.new_meter()
        for start in range(0, len(val), 64):
            batch = [val[i][1][task.target] for i in range(start, min(start + 64, len(val)))]
            meter.update(outputs[name].unsqueeze(0).expand(len(batch), *outputs[name].shape), torch.stack(batch))
        out[name] = meter.compute()
    return out


def improvement(task: str, metric: str, better: Mapping[str, float], worse: Mapping[str, float], up: bool) -> float:
    """How much ``better`` beats ``worse`` on one metric, in the metric's units, positive when it is better."""
    del task
    diff = better[metric] - worse[metric]
    return diff if up else -diff


def summarise(rows: list[dict[str, Any]], tasks: Mapping[str, Any]) -> dict[str, Any]:
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["name"], r["seed"]): r for r in rows}
    directions = {name: dict(task.higher_is_better) for name, task in tasks.items()}
    for row in rows:
        reference = by[("STN", row["seed"])]["metrics"]
        row["delta_mtl"] = delta_mtl(row["metrics"], reference, directions)
        row["task_deltas"] = task_deltas(row["metrics"], reference, directions)
    summary: dict[str, Any] = {"architectures": {}, "paired": {}}
    names = list(dict.fromkeys(r["name"] for r in rows))
    for arch in names:
        own = [by[(arch, s)] for s in seeds]
        summary["architectures"][arch] = {
            "gmac": own[0]["gmac"], "params": own[0]["params"],
            "seconds_mean": statistics.fmean(r["seconds"] for r in own),
            "delta_mtl": mean_interval([r["delta_mtl"] for r in own]),
            "task_deltas": {t: mean_interval([r["task_deltas"][t] for r in own]) for t in tasks},
            "metrics": {
                t: {m: mean_interval([r["metrics"][t][m] for r in own]) for m in own[0]["metrics"][t]} for t in tasks
            },
            "seg_class_iou": [
                statistics.fmean(r["seg_class_iou"][k] for r in own) for k in range(len(own[0]["seg_class_iou"]))
            ],
        }
    # (a) STN better than One-Net; (b) Clusters better than STN; and, for the record, Clusters vs One-Net.
    comparisons = (("STN", "One-Net"), ("Clusters", "STN"), ("Clusters", "One-Net"), ("Clusters", "Scene+Unrelated"))
    for better, worse in comparisons:
        if better not in names or worse not in names:
            continue
        label = f"{better} - {worse}"
        per_task = {}
        for t, task in tasks.items():
            per_task[t] = {
                m: mean_interval([
                    improvement(t, m, by[(better, s)]["metrics"][t], by[(worse, s)]["metrics"][t], up)
                    for s in seeds
                ])
                for m, up in task.higher_is_better.items()
            }
        summary["paired"][label] = {
            "better_is_positive": True,
            # The difference of the two networks' per-task Δ terms (% of the same-seed STN's metrics).
            "task_delta": {
                t: mean_interval([by[(better, s)]["task_deltas"][t] - by[(worse, s)]["task_deltas"][t] for s in seeds])
                for t in tasks
            },
            "per_task": per_task,
            "delta_mtl": mean_interval([by[(better, s)]["delta_mtl"] - by[(worse, s)]["delta_mtl"] for s in seeds]),
        }
    # A task has transfer when its Δ term (the mean relative change over its metrics) differs beyond the interval.
    paired = summary["paired"]
    summary["negative_transfer"] = _beyond(paired.get("STN - One-Net"), tasks)
    summary["positive_transfer"] = [
        t for t in _beyond(paired.get("Clusters - STN"), tasks) if any(t in c and len(c) > 1 for c in DESIGNED_CLUSTERS)
    ]
    return summary


def _beyond(paired: Mapping[str, Any] | None, tasks: Mapping[str, Any]) -> list[str]:
    """The tasks whose paired Δ-term interval lies entirely above 0 (the first network better)."""
    if paired is None:
        return []
    return [t for t in tasks if paired["task_delta"][t]["ci95_low"] > 0]


def markdown(summary: Mapping[str, Any], tasks: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    archs = summary["architectures"]
    primaries = {t: task.primary for t, task in tasks.items()}
    # Every primary metric, and edges' F-measure beside its BCE: the edge loss weights edge pixels 19:1, so the
    # unweighted BCE (papers/000's metric) rewards under-predicting edges, which ods_f does not.
    shown = [(t, m) for t, m in primaries.items()]
    shown.insert(shown.index(("edges", "bce")) + 1, ("edges", "ods_f"))
    n = archs["STN"]["delta_mtl"]["n"]
    fmt = lambda s, d=3: f"{s['mean']:.{d}f} [{s['ci95_low']:.{d}f}, {s['ci95_high']:.{d}f}]"  # noqa: E731
    lines = [
        f"Mean and 95 % t-interval over {n} seeds; `resnet_tiny` width {settings['width']}, "
        f"{settings['size']} px, {settings['num_train']} training images, {settings['epochs']} epochs, "
        f"batch {settings['batch_size']}, Adam lr {settings['lr']} for every architecture.",
        "",
        "| architecture | GMac | params | Δ_MTL vs STN (%) | " + " | ".join(
            f"{t} {m} ({'↑' if tasks[t].higher_is_better[m] else '↓'})" for t, m in shown) + " |",
        "|---|---|---|---|" + "---|" * len(shown),
    ]
    for arch, s in archs.items():
        cells = [fmt(s["metrics"][t][m]) for t, m in shown]
        lines.append(f"| {arch} | {s['gmac']:.4f} | {s['params'] / 1e3:.1f} k | {fmt(s['delta_mtl'], 1)} | "
                     + " | ".join(cells) + " |")
    blind = summary["input_blind"]
    lines.append("| input-blind (see below) | 0 | 0 | | " + " | ".join(f"{blind[t][m]:.3f}" for t, m in shown) + " |")
    lines += ["", "Input-blind: a prediction per pixel from the training labels alone (most frequent label, edge rate, "
              "median depth, mean normal, 0), the score of a network that learned nothing from the image.",
              "", "Paired same-seed differences of each task's Δ term (% of the same-seed STN's metrics, the mean "
              "over the task's metrics), positive when the first network is better; **✓** / ✗: the interval excludes 0:",
              "", "| comparison | Δ_MTL (points) | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    mark = lambda s: " **✓**" if s["ci95_low"] > 0 else (" ✗" if s["ci95_high"] < 0 else "")  # noqa: E731
    for label, p in summary["paired"].items():
        cells = [fmt(p["task_delta"][t], 1) + mark(p["task_delta"][t]) for t in tasks]
        lines.append(f"| {label} | {fmt(p['delta_mtl'], 1)}{mark(p['delta_mtl'])} | " + " | ".join(cells) + " |")
    lines += ["", "The same pairs on each task's primary metric, in the metric's units (positive: the first is better):",
              "", "| comparison | " + " | ".join(f"{t} {m}" for t, m in primaries.items()) + " |",
              "|---|" + "---|" * len(primaries)]
    for label, p in summary["paired"].items():
        cells = [fmt(p["per_task"][t][m], 4) + mark(p["per_task"][t][m]) for t, m in primaries.items()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    classes = ["background", *settings["class_names"]]
    lines += ["", "Segmentation IoU per class (mean over seeds):", "",
              "| architecture | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for arch, s in archs.items():
        lines.append(f"| {arch} | " + " | ".join(f"{v:.3f}" for v in s["seg_class_iou"]) + " |")
    negative = ", ".join(summary["negative_transfer"]) or "none measured"
    positive = ", ".join(summary["positive_transfer"]) or "none measured"
    lines += ["", f"Negative transfer (STN beats One-Net beyond the interval, on the task's Δ term): {negative}.",
              f"Positive transfer (the designed clusters' networks beat STN beyond the interval, on a task of a "
              f"cluster of two): {positive}.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--num-train", type=int, default=384)
    parser.add_argument("--num-val", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=8, help="channels of every head's 3x3 conv")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help="override a field of SceneConfig.designed(), e.g. --set seg_labelled=0.25")
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--out", type=Path, default=Path("build/designed"))
    parser.add_argument("--cache", type=Path, default=None, help="folder to cache the generated scenes in")
    args = parser.parse_args(argv)
    if len(args.seeds) < 2:
        parser.error("give at least 2 seeds (an interval needs them)")
    torch.set_num_threads(1)
    overrides = {}
    for item in args.set:
        field, _, value = item.partition("=")
        overrides[field] = json.loads(value)
        if isinstance(overrides[field], list):
            overrides[field] = tuple(overrides[field])
    config = SceneConfig.designed(**overrides)
    train = SceneDataset.from_config(args.num_train, config, seed=0, cache=args.cache)
    val = SceneDataset.from_config(args.num_val, config.fully_labelled, seed=10_000, cache=args.cache)
    tasks = designed_tasks(config, hidden=args.hidden)
    rows = []
    for seed in args.seeds:
        problem = seed_problem(seed, tasks, train, val, args.width)
        for arch in args.archs:
            row = train_one(arch, problem, args, config.seg_classes)
            rows.append(row)
            primary = ", ".join(f"{t} {row['metrics'][t][task.primary]:.4f}" for t, task in tasks.items())
            print(f"seed {seed} {arch:9s} {row['seconds']:6.1f} s  {primary}", flush=True)
    summary = summarise(rows, tasks)
    summary["input_blind"] = trivial_metrics(tasks, train, val)
    settings = {
        "num_train": args.num_train, "num_val": args.num_val, "epochs": args.epochs, "batch_size": args.batch_size,
        "optimizer": f"adam(lr={args.lr})", "lr": args.lr, "width": args.width, "hidden": args.hidden,
        "size": config.size, "seeds": args.seeds, "train_seed": 0, "val_seed": 10_000,
        "scene_config": {k: v for k, v in vars(config).items()}, "clusters": [list(c) for c in DESIGNED_CLUSTERS],
        "class_names": [mtgraph.data.SHAPES[k] for k in range(config.num_classes)],
    }
    results = {
        "command": "python examples/designed_transfer.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": settings,
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1,
                        "load_average": list(os.getloadavg())},
        "rows": rows,
        "summary": summary,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
    text = markdown(summary, tasks, settings)
    atomic_write_bytes(args.out / "results.md.inc", text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
