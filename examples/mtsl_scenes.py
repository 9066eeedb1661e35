"""MTSL on generated scenes: five dense tasks, a tiny ResNet, compared with STN and One-Net.

Run from the repository root::

    python examples/mtsl_scenes.py --out mtsl_scenes_out

It trains, on the same data and budget (Adam, the step schedule of
papers/000 appendix C scaled to ``--epochs``):

* **STN**: one network per task (``mtgraph.stn``);
* **One-Net**: every block shared (``mtgraph.one_net``);
* **MTSL**: ``registry()["mtsl"].learn(problem, config)`` on a
  :class:`mtgraph.Problem`, with ``config_for(problem, epochs)``: the paper's
  schedule, γ, λ and loss balance scaled to the same budget (its
  amalgamation epochs come on top, as in the paper),

then prints a table of per-task metrics (each task's primary metric), Δ_MTL
against STN (papers/000 eq. 3), parameters and GMac, and writes into ``--out``
for each grouping threshold γ (``--gamma``, default 0.8 and 0.95) a folder
``MTSL-<γ>`` with the converged tree (``tree.svg``), a Markdown report with the
CKA heatmaps of every structural phase (``report/report.md``) and the decision
log (``decisions.txt``), plus every number in ``results.json`` and the table,
the learned trees, the wall time and the command as a Markdown fragment
(``results.md.inc``, included by ``docs/strategies/mtsl.md``; ``make
docs-results-mtsl`` regenerates the documentation's copy).

The learning rate is 1e-3 rather than the paper's 1e-4 (``config_for``'s
choice): the paper fine-tunes ImageNet weights for 80 epochs, this example
trains a tiny network from scratch in a few epochs. The baselines are trained
with MTSL's optimizer, step schedule and task-loss weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

import mtgraph
from mtgraph.data import SceneDataset
from mtgraph.exporters import render, write_report
from mtgraph.persist import atomic_write_bytes
from mtgraph.strategies import registry
from mtgraph.strategies.mtsl import MTSLConfig
from mtgraph.strategies.result import Heatmap
from mtgraph.tasks import delta_mtl, dense_tasks
from mtgraph.threads import apply_threads, choose_threads
from mtgraph.train import adam, evaluate, fit
from mtgraph.zoo import resnet_tiny


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: one per core not busy with other processes, printed; see mtgraph.threads)")
    parser.add_argument("--out", type=Path, default=Path("mtsl_scenes_out"), help="output folder")
    parser.add_argument("--size", type=int, default=48, help="image size in pixels (32..64)")
    parser.add_argument("--width", type=int, default=8, help="resnet_tiny width")
    parser.add_argument("--train", type=int, default=256, help="training scenes")
    parser.add_argument("--val", type=int, default=128, help="validation scenes")
    parser.add_argument("--epochs", type=float, default=8.0, help="budget E (task learning + fine-tuning)")
    parser.add_argument(
        "--gamma", type=float, nargs="+", default=[0.8, 0.95], help="MTSL grouping thresholds (one run each)"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(apply_threads(choose_threads(args.threads)).describe(), flush=True)
    return args


def _train_baseline(graph, problem: mtgraph.Problem, config: MTSLConfig):
    """Train a fixed architecture for E epochs with MTSL's optimizer, step schedule and task-loss weights."""
    params = mtgraph.ParamStore.create(graph, problem.backbone, problem.heads)
    per_epoch = -(-len(problem.train_dataset) // config.batch_size)
    steps = round(config.total_epochs * per_epoch)
    milestones = [round(m * steps) for m in config.lr_milestones]
    fitted = fit(
        graph,
        params,
        problem.tasks,
        problem.train_data,
        steps=steps,
        batch_size=config.batch_size,
        seed=problem.seed,
        optimizer=adam(lr=config.lr, weight_decay=config.weight_decay),
        scheduler=lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=config.lr_decay),
        loss_weights=config.task_loss_weights(problem.task_names),
    )
    metrics = evaluate(graph, fitted.params, problem.tasks, problem.val_data, batch_size=config.eval_batch_size)
    return fitted.params, metrics


def _table_cells(rows: dict[str, dict], tasks) -> list[list[str]]:
    """The comparison as rows of cells, header first (shared by the printed and the Markdown table)."""
    names = list(tasks)
    header = ["network"] + [
        f"{n} {tasks[n].primary}{'↑' if tasks[n].higher_is_better[tasks[n].primary] else '↓'}" for n in names
    ]
    header += ["Δ_MTL %", "params (M)", "GMac"]
    lines = [header]
    for label, row in rows.items():
        cells = [label] + [f"{row['metrics'][n][tasks[n].primary]:.4f}" for n in names]
        delta = row["delta_mtl"]
        cells += ["-" if delta is None else f"{delta:+.2f}", f"{row['params'] / 1e6:.4f}", f"{row['gmac']:.4f}"]
        lines.append(cells)
    return lines


def _table(rows: dict[str, dict], tasks) -> str:
    lines = _table_cells(rows, tasks)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


def _markdown_table(lines: list[list[str]]) -> list[str]:
    """A Markdown table of ``lines`` (header first): the label column left-aligned, the numbers right-aligned."""
    rule = "|---|" + "---:|" * (len(lines[0]) - 1)
    return [f"| {' | '.join(lines[0])} |", rule] + [f"| {' | '.join(line)} |" for line in lines[1:]]


def _command(argv: list[str] | None) -> str:
    """The command line of this run as typed from the repository root (recorded so the docs say how to redo it)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", f"examples/{Path(__file__).name}", *arguments])


def _tree_runs(tree: list[dict]) -> str:
    """A learned tree on one line: consecutive blocks with the same grouping as one range (``b0-b3: ...``)."""
    runs: list[list] = []
    for row in tree:
        if runs and runs[-1][2] == row["text"]:
            runs[-1][1] = row["block"]
        else:
            runs.append([row["block"], row["block"], row["text"]])
    return " / ".join(f"b{a}{'' if a == b else f'-b{b}'}: {text}" for a, b, text in runs)


def write_fragment(path: Path, summary: dict, tasks) -> Path:
    """Write the Markdown fragment the MTSL tutorial includes: the table, the learned trees, wall time, command.

    It links no figure: an included fragment's links resolve against the including page, so the page links the
    diagrams itself (``MTSL-<γ>/tree.svg`` next to this fragment).
    """
    lines = _markdown_table(_table_cells(summary["rows"], tasks)) + [""]
    for label, info in summary["mtsl"].items():
        lines += [f"- {label} tree: {_tree_runs(info['tree'])}"]
    per_network = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
    lines += [
        "",
        f"Wall time {summary['total_seconds']:.0f} s ({summary['total_seconds'] / 60:.1f} min) on "
        f"{summary['cpu_count']} CPU cores ({per_network}). Command: `{summary['command']}`",
        "",
    ]
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison; return every number (also written to ``results.json``)."""
    args = _arguments(argv)
    started = time.perf_counter()
    data = SceneDataset(args.train, size=args.size, seed=args.seed)
    val = SceneDataset(args.val, size=args.size, seed=args.seed + 1000)
    tasks = dense_tasks(data.config.seg_classes)
    torch.manual_seed(args.seed)
    problem = mtgraph.Problem.create(resnet_tiny(width=args.width), tasks, data, val_data=val, seed=args.seed)
    strategy = registry()["mtsl"]
    config = dataclasses.replace(strategy.config_for(problem, args.epochs), lr=args.lr)
    blocks = problem.backbone.num_blocks

    rows: dict[str, dict] = {}
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for label, graph in (
        ("STN", mtgraph.stn(blocks, problem.task_names)),
        ("One-Net", mtgraph.one_net(blocks, problem.task_names)),
    ):
        print(f"training {label} ...", file=sys.stderr, flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        params, metrics = _train_baseline(graph, problem, config)
        timings[label], cpu[label] = time.perf_counter() - t0, time.process_time() - c0
        report = mtgraph.cost(graph, params)
        rows[label] = {
            "metrics": dict(metrics),
            "params": report.total_params,
            "gmac": report.gmac,
            "graph": str(graph),
        }

    args.out.mkdir(parents=True, exist_ok=True)
    learned: dict[str, dict] = {}
    for gamma in args.gamma:
        label = f"MTSL-{gamma:g}"
        print(f"learning {label} ...", file=sys.stderr, flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        result = strategy.learn(problem, dataclasses.replace(config, gamma=gamma))
        timings[label], cpu[label] = time.perf_counter() - t0, time.process_time() - c0
        report = mtgraph.cost(result.graph, result.params)
        rows[label] = {
            "metrics": result.history["metrics"],
            "params": report.total_params,
            "gmac": report.gmac,
            "graph": str(result.graph),
        }
        folder = args.out / label
        folder.mkdir(parents=True, exist_ok=True)
        tree = render(result.graph, result.params, folder / "tree.svg", title=f"MTSL, γ = {gamma:g}")
        write_report(
            folder / "report",
            graph=result.graph,
            params=result.params,
            title=f"MTSL on generated scenes (γ = {gamma:g})",
            extras={"similarity": {name: (list(figure.rows), figure.values)
                                   for name, figure in result.figures.items() if isinstance(figure, Heatmap)}},
        )
        log = "\n".join(f"[{'x' if d.accepted else ' '}] {d.where}: {d.what} -- {d.reason}" for d in result.decisions)
        atomic_write_bytes(folder / "decisions.txt", (log + "\n").encode())
        learned[label] = {
            "tree": result.history["tree"],
            "tree_svg": str(tree),
            "pipeline": result.pipeline,
            "schedule": result.history["schedule"],
        }

    primary = {n: {t.primary: None} for n, t in tasks.items()}
    reference = {n: {m: rows["STN"]["metrics"][n][m] for m in primary[n]} for n in tasks}
    directions = {n: dict(t.higher_is_better) for n, t in tasks.items()}
    for label, row in rows.items():
        row["delta_mtl"] = None if label == "STN" else delta_mtl(row["metrics"], reference, directions)

    table = _table(rows, tasks)
    summary = {
        "table": table,
        "rows": rows,
        "mtsl": learned,
        "seconds": timings,
        "cpu_seconds": cpu,
        "total_seconds": time.perf_counter() - started,
        "cpu_count": os.cpu_count(),
        "command": _command(argv),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    atomic_write_bytes(args.out / "results.json", json.dumps(summary, indent=2, default=str).encode())
    write_fragment(args.out / "results.md.inc", summary, tasks)
    print(table)
    for label, info in learned.items():
        print()
        print(f"{label} tree:", " / ".join(f"b{r['block']}: {r['text']}" for r in info["tree"]))
        print(f"{label} diagram: {info['tree_svg']}")
    print()
    print(f"wall seconds: {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}")
    print(f"CPU seconds (all threads): {', '.join(f'{k} {v:.0f}' for k, v in cpu.items())}")
    return summary


if __name__ == "__main__":
    main()
