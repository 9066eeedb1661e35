"""AdaShare on generated scenes: NYUv2-style 3 tasks, a tiny ResNet, baselines and the paper's ablations.

Run from the repository root::

    python examples/adashare_scenes.py --out adashare_scenes_out

Three dense tasks as in NYU v2 3-task (papers/002 Table 3): semantic
segmentation, surface normals and depth, on generated scenes
(:class:`mtgraph.data.SceneDataset`), with ``resnet_tiny`` (a stem that cannot
be skipped and 8 basic blocks, 3 of them downsampling with a projection
shortcut). Every network below is trained from scratch for the same number of
steps with the same optimizer, and evaluated on held-out test scenes with
BatchNorm statistics re-estimated per call site on training images:

* **STN**: one network per task (``mtgraph.stn``), the Δ_MTL reference;
* **One-Net**: every block shared (the hard-sharing Multi-Task baseline);
* **AdaShare**: ``registry()["adashare"].learn(problem, config)``;
* ablations of papers/002 Tables 5/6: **w/o curriculum**, **w/o L_sparsity**,
  **w/o L_sharing** (each a full search and retrain);
* **Random @GMac**: random select-or-skip policies whose network costs
  AdaShare's GMac (±5 %, ``AdaShareStrategy.sample_random``), retrained the
  same way (``--random`` draws; the table shows their mean and the best). The
  paper's Random #1 / #2 keep the number of skipped blocks instead, which on
  this problem costs 2-2.6x the learned policy's compute (scattered skips make
  the tasks' paths diverge early): not a comparison at equal compute.

It prints a table of each task's metrics (seg mIoU, normals mean angle, depth
abs. rel. error), Δ_MTL against STN (in %, over those three metrics),
backbone parameters (× one backbone and in M, heads included) and GMac per
task path and in total, and writes into ``--out``: the policy matrix and
task-correlation figures (``policy.png``), the AdaShare architecture
(``adashare.svg``, IR text in ``adashare.mtir``), a Markdown report, the
decision log, every number (``results.json``) and a Markdown fragment with the
table, the policy, the wall time and the command (``results.md.inc``, included
by ``docs/strategies/adashare.md``; ``make docs-results-adashare`` regenerates
the documentation's copy).

Scale choices (documented, not the paper's): a few hundred steps instead of
20,000; per search epoch 12 weight steps and 8 policy steps (two passes over
the 20% split); the policy learning rate 0.1 instead of 0.01 and τ decaying
×0.85 per epoch instead of ×0.965, so that the logits can move and τ reaches
about 0.4 within the short search (notes/methods-001-002.md §B.5 item 5); task
weights that put the three losses on a similar scale. The policy losses are
the released code's forms (the pair Table 7's λ were tuned on); λ are
``--lambda-sparsity`` / ``--lambda-sharing``, their defaults set from the
gradient balance measured on this problem (see docs/strategies/adashare.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import random
import shlex
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import mtgraph
from mtgraph.data import InMemory, SceneDataset
from mtgraph.persist import atomic_write_bytes
from mtgraph.strategies import Heatmap, registry
from mtgraph.strategies.adashare import AdaShareConfig, evaluate_hard, gated_blocks, run_fixed_policy
from mtgraph.tasks import delta_mtl, depth, normals, segmentation
from mtgraph.train import fit
from mtgraph.zoo import resnet_tiny

#: The metric reported per task (NYU v2's first metric of each task in papers/002 Table 3).
COLUMNS = {"seg": "miou", "normals": "angle_mean", "depth": "abs_rel"}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("adashare_scenes_out"), help="output folder")
    parser.add_argument("--size", type=int, default=32, help="image size in pixels (32..64)")
    parser.add_argument("--width", type=int, default=8, help="resnet_tiny width")
    parser.add_argument("--train", type=int, default=320, help="training scenes (80%% weights / 20%% policy in the search)")
    parser.add_argument("--val", type=int, default=96, help="validation scenes (best policy)")
    parser.add_argument("--test", type=int, default=192, help="test scenes (the table)")
    parser.add_argument("--epochs", type=int, default=16, help="policy epochs of the search (>= 8: the curriculum)")
    parser.add_argument("--weight-steps", type=int, default=12, help="weight steps per search epoch (80%% split)")
    parser.add_argument("--policy-steps", type=int, default=8, help="policy steps per search epoch (20%% split)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of every network (retraining)")
    parser.add_argument("--random", type=int, default=2, help="random policies at AdaShare's GMac")
    parser.add_argument("--lambda-sparsity", type=float, default=0.01, help="λ_sp (code form; measured: 0.1x the task gradient)")
    parser.add_argument("--lambda-sharing", type=float, default=0.002, help="λ_sh (code form; measured: 0.3x the task gradient)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> AdaShareConfig:
    return AdaShareConfig(
        epochs=args.epochs,
        batch_size=16,
        weight_steps=args.weight_steps,
        policy_steps=args.policy_steps,
        warmup_fraction=0.2,
        weight_lr=0.02,
        policy_lr=0.1,
        tau_decay=0.85,
        lambda_sparsity=args.lambda_sparsity,
        lambda_sharing=args.lambda_sharing,
        task_weights={"seg": 1.0, "normals": 1.0, "depth": 0.1},
        calibration_batches=8,
        retrain_steps=args.steps,
        retrain_lr=2e-3,
        retrain_select="last",  # every network gets the same protocol: the weights after --steps steps
    )


def _costs(graph: mtgraph.MTGraph, params: mtgraph.ParamStore, backbone_params: int) -> dict[str, Any]:
    report = mtgraph.cost(graph, params)
    head_params = sum(p.numel() for t in graph.tasks for p in params[f"head.{t}"].parameters())
    return {
        "params": report.total_params,
        "backbones": (report.total_params - head_params) / backbone_params,
        "gmac": report.total_macs / 1e9,
        "task_gmac": {t: c.macs / 1e9 for t, c in report.tasks.items()},
    }


def _row(name: str, result: Mapping[str, Any], reference: Mapping[str, Mapping[str, float]] | None,
         tasks: Mapping[str, Any]) -> dict[str, Any]:
    metrics = result["metrics"]
    row = {"model": name, **{t: metrics[t][m] for t, m in COLUMNS.items()}, **result["cost"]}
    if reference is not None:
        stl = {t: {m: reference[t][m]} for t, m in COLUMNS.items()}
        row["delta_mtl"] = delta_mtl(metrics, stl, {t: dict(tasks[t].higher_is_better) for t in COLUMNS})
    return row


def _print_table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'model':<18} {'seg mIoU↑':>9} {'N angle↓':>9} {'D absrel↓':>9} {'Δ_MTL %':>8} "
              f"{'×backbone':>9} {'params M':>9} {'GMac S/N/D':>20} {'GMac':>7}")
    lines = [header, "-" * len(header)]
    for r in rows:
        task_gmac = "/".join(f"{r['task_gmac'][t]:.4f}" for t in COLUMNS)
        delta = f"{r['delta_mtl']:+8.2f}" if "delta_mtl" in r else f"{'':>8}"
        lines.append(
            f"{r['model']:<18} {r['seg']:>9.4f} {r['normals']:>9.3f} {r['depth']:>9.4f} {delta} "
            f"{r['backbones']:>9.2f} {r['params'] / 1e6:>9.4f} {task_gmac:>20} {r['gmac']:>7.4f}"
        )
    return "\n".join(lines)


def _markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """The printed table (:func:`_print_table`) as a Markdown table."""
    lines = ["| model | seg mIoU↑ | N angle↓ | D absrel↓ | Δ_MTL % | ×backbone | params M | GMac S/N/D | GMac |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        delta = f"{r['delta_mtl']:+.2f}" if "delta_mtl" in r else "-"
        task_gmac = "/".join(f"{r['task_gmac'][t]:.4f}" for t in COLUMNS)
        lines.append(f"| {r['model']} | {r['seg']:.4f} | {r['normals']:.3f} | {r['depth']:.4f} | {delta} | "
                     f"{r['backbones']:.2f} | {r['params'] / 1e6:.4f} | {task_gmac} | {r['gmac']:.4f} |")
    return lines


def _command(argv: list[str] | None) -> str:
    """The command line of this run as typed from the repository root (recorded so the docs say how to redo it)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", f"examples/{Path(__file__).name}", *arguments])


def write_fragment(path: Path, everything: Mapping[str, Any]) -> Path:
    """Write the Markdown fragment the AdaShare tutorial includes: the table, the policy, wall time, command.

    It links no figure: an included fragment's links resolve against the including page, so the page links
    ``policy.png`` and ``adashare.svg`` itself.
    """
    lines = _markdown_table(everything["rows"]) + [""]
    policy = everything["results"]["AdaShare"]["policy"]
    lines += ["AdaShare's policy (1 = execute the block, . = skip it; columns are the gated blocks):", "", "```text"]
    lines += [f"{name:<8} {' '.join('1' if x else '.' for x in row)}" for name, row in zip(COLUMNS, policy)]
    lines += ["```", "", "What the search logged (`result.decisions`):", "", "```text"]
    lines += everything["results"]["AdaShare"]["decisions"]
    per_model = ", ".join(f"{k} {v:.0f} s" for k, v in everything["timings_s"].items())
    lines += ["```", "", f"Wall time {everything['total_s']:.0f} s ({everything['total_s'] / 60:.1f} min) on "
              f"{everything['cpu_count']} CPU cores ({per_model}). Command: `{everything['command']}`", ""]
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def _draw_policy(figures: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policy: Heatmap = figures["policy_matrix"]
    correlation: Heatmap = figures["task_correlation"]
    labels, corr = correlation.rows, correlation.values
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    image = left.imshow(policy.values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    left.set(xticks=range(len(policy.columns)), xticklabels=policy.columns, yticks=range(len(policy.rows)),
             yticklabels=policy.rows, title="P(execute) per block and task")
    fig.colorbar(image, ax=left)
    image = right.imshow(corr, vmin=0, vmax=1, cmap="magma")
    right.set(xticks=range(len(labels)), xticklabels=labels, yticks=range(len(labels)), yticklabels=labels,
              title="task correlation (cosine of policies)")
    for i, row in enumerate(corr):
        for j, value in enumerate(row):
            right.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    fig.colorbar(image, ax=right)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".tmp.png"), dpi=120)
    plt.close(fig)
    path.with_suffix(".tmp.png").replace(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; return every number (also written to ``results.json``)."""
    args = _arguments(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    classes = 4
    train = InMemory(SceneDataset(args.train, args.size, seed=args.seed * 3 + 1, num_classes=classes))
    val = InMemory(SceneDataset(args.val, args.size, seed=args.seed * 3 + 2, num_classes=classes))
    test = InMemory(SceneDataset(args.test, args.size, seed=args.seed * 3 + 3, num_classes=classes))
    tasks = {"seg": segmentation(classes + 1, hidden=16), "normals": normals(hidden=16), "depth": depth(hidden=16)}
    torch.manual_seed(args.seed)
    backbone = mtgraph.trace(resnet_tiny(args.width), torch.randn(2, 3, args.size, args.size))
    heads = {n: t.make_head(backbone.output_shape[0], (args.size, args.size)) for n, t in tasks.items()}
    backbone_params = backbone.params
    problem = mtgraph.Problem(backbone, heads, tasks, train, val_data=val, seed=args.seed)
    adashare = registry()["adashare"]
    config = _config(args)
    names = problem.task_names
    gated, _ = gated_blocks(backbone)
    measure = functools.partial(evaluate_hard, tasks=tasks, calibration=train, data=test,
                                batches=config.calibration_batches, batch_size=config.batch_size, seed=args.seed)
    results: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}

    def record(name: str, graph: mtgraph.MTGraph, params: mtgraph.ParamStore, extra: Mapping[str, Any] | None = None) -> None:
        results[name] = {"metrics": measure(graph, params), "cost": _costs(graph, params, backbone_params),
                         "graph": mtgraph.print_graph(graph), **(extra or {})}
        print(f"[{time.time() - started:6.0f}s] {name}: " + ", ".join(
            f"{t} {results[name]['metrics'][t][m]:.4f}" for t, m in COLUMNS.items()), flush=True)

    # STN: the reference. Same optimizer and steps as every retraining.
    t0 = time.time()
    stn_graph = mtgraph.stn(backbone.num_blocks, names)
    stn_params = mtgraph.ParamStore.create(stn_graph, backbone, heads)
    optimizer = functools.partial(torch.optim.Adam, lr=config.retrain_lr, betas=(0.5, 0.999), weight_decay=1e-4)
    fitted = fit(stn_graph, stn_params, tasks, train, steps=args.steps, batch_size=config.batch_size,
                 optimizer=optimizer, loss_weights=dict(config.task_weights or {}), seed=args.seed, phase="stn")
    record("STN", fitted.graph, fitted.params)
    timings["STN"] = time.time() - t0

    # One-Net: the policy that executes every block.
    t0 = time.time()
    one = run_fixed_policy(problem, torch.ones(len(names), len(gated), dtype=torch.bool), config)
    record("One-Net", one.graph, one.params)
    timings["One-Net"] = time.time() - t0

    variants = {
        "AdaShare": config,
        "w/o curriculum": dataclasses.replace(config, curriculum=False),
        "w/o L_sparsity": dataclasses.replace(config, lambda_sparsity=0.0),
        "w/o L_sharing": dataclasses.replace(config, lambda_sharing=0.0),
    }
    learned: dict[str, Any] = {}
    for name, variant in variants.items():
        t0 = time.time()
        result = adashare.learn(problem, variant)
        learned[name] = result
        search = result.history["search"]
        record(name, result.graph, result.params, {
            "policy": result.history["decisions"],
            "best_epoch": search["best_epoch"],
            "architectures_tried": result.history["architectures_tried"],
            "alpha": search["records"][search["best_epoch"]]["alpha"],
            "gradients": [r["gradients"] for r in search["records"]],
            "decisions": [f"{d.where}: {d.what} -- {d.reason}" for d in result.decisions
                          if d.where == "policy search"],
            "pipeline": result.pipeline,
        })
        timings[name] = time.time() - t0

    # Random policies at AdaShare's compute (±5 % GMac), retrained like every other network.
    budget = mtgraph.Budget.gmac(results["AdaShare"]["cost"]["gmac"])
    rng = random.Random(args.seed + 100)
    random_rows = []
    t0 = time.time()
    for k in range(args.random):
        arch = adashare.sample_random(problem, rng, budget)
        policy = torch.tensor(arch.details["decisions"])
        result = run_fixed_policy(problem, policy, config)
        record(f"Random @GMac ({k + 1})", result.graph, result.params, {"policy": policy.tolist()})
        random_rows.append(f"Random @GMac ({k + 1})")
    timings["Random @GMac"] = time.time() - t0

    reference = results["STN"]["metrics"]
    rows = [_row(name, results[name], reference, tasks) for name in ("STN", "One-Net", *variants)]
    randoms = [_row(name, results[name], reference, tasks) for name in random_rows]
    if randoms:
        mean = {key: statistics.mean(r[key] for r in randoms) for key in ("seg", "normals", "depth", "delta_mtl", "params", "backbones", "gmac")}
        mean["task_gmac"] = {t: statistics.mean(r["task_gmac"][t] for r in randoms) for t in COLUMNS}
        rows.append({"model": f"Random @GMac mean/{len(randoms)}", **mean})
        rows.append({**max(randoms, key=lambda r: r["delta_mtl"]), "model": "Random @GMac best"})
    table = _print_table(rows)
    print()
    print(table)

    ada = learned["AdaShare"]
    print()
    print("AdaShare policy (rows = tasks, columns = gated blocks", list(gated), "; 1 = execute):")
    for name, row in zip(names, ada.history["decisions"]):
        print(f"  {name:<8} {' '.join('1' if x else '.' for x in row)}")
    print(ada.graph)
    _draw_policy(ada.figures, args.out / "policy.png")
    atomic_write_bytes(args.out / "adashare.mtir", mtgraph.print_graph(ada.graph).encode())
    atomic_write_bytes(args.out / "decisions.txt", "\n".join(
        f"[{'x' if d.accepted else ' '}] {d.where}: {d.what} -- {d.reason}" for d in ada.decisions).encode())
    try:
        from mtgraph.exporters import render, write_report

        render(ada.graph, ada.params, args.out / "adashare.svg", title="AdaShare on generated scenes")
        write_report(args.out / "report", graph=ada.graph, params=ada.params, title="AdaShare on generated scenes",
                     metrics={name: results[name]["metrics"] for name in ("STN", "One-Net", *variants)},
                     extras={"similarity": {"task correlation": (list(ada.figures["task_correlation"].rows),
                                                                 ada.figures["task_correlation"].values)},
                             "notes": "```\n" + table + "\n```\n"})
    except mtgraph.MTGraphError as exc:  # e.g. Graphviz missing: the numbers are still written
        print(f"report skipped: {exc}")
    everything = {
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "config": {k: v for k, v in dataclasses.asdict(config).items()},
        "rows": rows,
        "results": results,
        "figures": {k: dataclasses.asdict(v) for k, v in ada.figures.items()},
        "search": {name: r.history["search"]["records"] for name, r in learned.items()},
        "timings_s": timings,
        "total_s": time.time() - started,
        "cpu_count": os.cpu_count(),
        "command": _command(argv),
    }
    atomic_write_bytes(args.out / "results.json", json.dumps(everything, indent=1, default=str).encode())
    write_fragment(args.out / "results.md.inc", everything)
    print(f"\nwritten to {args.out}; total {everything['total_s']:.0f} s")
    return everything


if __name__ == "__main__":
    main()
