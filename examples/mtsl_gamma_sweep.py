"""Which grouping thresholds γ make MTSL learn a tree (neither One-Net nor STN) on generated scenes?

Run from the repository root::

    python examples/mtsl_gamma_sweep.py --out gamma_sweep.json

For every γ of ``--gamma`` and every seed of ``--seeds`` it runs MTSL through
the front door (``registry()["mtsl"]`` with ``config_for(problem, epochs)``:
the paper's schedule, γ and λ, the paper's loss balance unless
``--loss-balance mean_sum``; ``--no-align`` drops the alignment) on a tiny ResNet and the five dense tasks of the
generated scenes, and records the learned architecture (One-Net, STN or a
tree, with its GMac as a fraction of the way from One-Net to STN) and the CKA
the decisions were taken on: at each structural phase and sibling set, the
grouping chosen, its group values and the off-diagonal CKA range. Only γ
changes between runs of one seed: up to the first structural phase they are
the same run. With ``--preset designed`` (the scenes whose tasks form known
clusters) each run also records its first split of the tasks and its
adjusted Rand index against the designed clusters.

It prints one line per run and a table of γ × seed, and writes every number
to the JSON file ``--out``. ``make docs-results-mtsl`` runs it on the default
scenes and on the designed ones and keeps both files
(``docs/results/mtsl/gamma_sweep.json`` and ``gamma_sweep_designed.json``):
the evidence behind the γ tables of ``docs/strategies/mtsl.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

import mtgraph
from mtgraph.data import SceneDataset
from mtgraph.persist import atomic_write_bytes
from mtgraph.strategies import registry
from mtgraph.strategies.mtsl import tree_rows
from mtgraph.tasks import dense_tasks
from mtgraph.zoo import resnet_tiny


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gamma_sweep.json"), help="output JSON file")
    parser.add_argument("--size", type=int, default=32, help="image size in pixels")
    parser.add_argument("--width", type=int, default=8, help="resnet_tiny width")
    parser.add_argument("--train", type=int, default=256, help="training scenes")
    parser.add_argument("--epochs", type=float, default=4.0, help="budget E (task learning + fine-tuning)")
    parser.add_argument("--gamma", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--loss-balance", choices=["paper", "mean_sum"], default="paper")
    parser.add_argument("--no-align", action="store_true", help="ablation: no CKA alignment (Table 4's no Align)")
    parser.add_argument("--tasks", nargs="+", default=["seg", "depth", "edges", "normals", "autoencoder"],
                        help="dense tasks of the default scenes (ignored with --preset designed)")
    parser.add_argument("--preset", choices=["default", "designed"], default="default",
                        help="designed: the scenes whose tasks form known clusters (seg+edges, depth+normals, "
                             "unrelated); each run then records how its first split agrees with them (ARI)")
    return parser.parse_args(argv)


def _kind(problem: mtgraph.Problem, graph: mtgraph.MTGraph) -> str:
    names, blocks = problem.task_names, problem.backbone.num_blocks
    if graph == mtgraph.one_net(blocks, names):
        return "One-Net"
    if graph == mtgraph.stn(blocks, names):
        return "STN"
    return "tree"


def _phases(decisions: Any) -> list[dict[str, Any]]:
    """Per structural phase and sibling set: the CKA matrix and range, the chosen grouping and its group values."""
    seen: dict[tuple[int, int], dict[str, Any]] = {}
    for d in decisions:
        if "cka" not in d.data:
            continue
        key = (d.data["phase"], d.data["source"])
        entry = seen.get(key)
        if entry is None:
            matrix = d.data["cka"]
            off = [matrix[i][j] for i in range(len(matrix)) for j in range(len(matrix)) if i != j]
            entry = seen[key] = {
                "phase": d.data["phase"], "block": d.data["block"], "tasks": d.data["tasks"],
                "cka_min": min(off), "cka_mean": sum(off) / len(off), "cka_max": max(off),
                "partition": d.data["partition"], "groups": [],
                "cka": [[round(v, 4) for v in row] for row in matrix],
            }
        entry["groups"].append({"group": d.data["group"], "value": d.data["value"], "fused": d.accepted})
    return list(seen.values())


def _command(argv: list[str] | None) -> str:
    """The command line of this run as typed from the repository root."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", f"examples/{Path(__file__).name}", *arguments])


def _json(summary: dict[str, Any]) -> str:
    """``summary`` as JSON with one line per run (the file stays small enough to keep in the documentation)."""
    head = {k: v for k, v in summary.items() if k != "runs"}
    runs = ",\n  ".join(json.dumps(run, ensure_ascii=False) for run in summary["runs"])
    return json.dumps(head, indent=1, ensure_ascii=False)[:-2] + f',\n "runs": [\n  {runs}\n ]\n}}\n'


def _first_split(phases: list[dict[str, Any]], tasks: tuple[str, ...]) -> dict[str, Any] | None:
    """The first chosen grouping of all the tasks into more than one group (None: they never split)."""
    for entry in phases:
        if len(entry["tasks"]) == len(tasks) and len(entry["partition"]) > 1:
            return {"phase": entry["phase"], "block": entry["block"], "partition": entry["partition"]}
    return None


def _problem(args: argparse.Namespace, seed: int) -> tuple[mtgraph.Problem, tuple[tuple[str, ...], ...] | None]:
    """The problem of one seed, and the designed clusters (None for the default scenes)."""
    if args.preset == "designed":
        from mtgraph.data import DESIGNED_CLUSTERS, designed_tasks  # the designed preset (mtgraph.data)

        data = SceneDataset(args.train, size=args.size, seed=seed, preset="designed")
        tasks, clusters = designed_tasks(data.config), DESIGNED_CLUSTERS
    else:
        data = SceneDataset(args.train, size=args.size, seed=seed)
        tasks, clusters = dense_tasks(data.config.seg_classes, args.tasks), None
    torch.manual_seed(seed)
    return mtgraph.Problem.create(resnet_tiny(width=args.width), tasks, data, seed=seed), clusters


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sweep; return every number (also written to ``--out``)."""
    args = _arguments(argv)
    torch.set_num_threads(1)
    strategy = registry()["mtsl"]
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed in args.seeds:
        problem, clusters = _problem(args, seed)
        costs = problem.reference_costs
        base = dataclasses.replace(strategy.config_for(problem, args.epochs), loss_balance=args.loss_balance,
                                   align=not args.no_align)
        for gamma in args.gamma:
            t0 = time.perf_counter()
            result = strategy.learn(problem, dataclasses.replace(base, gamma=gamma))
            gmac = mtgraph.cost(result.graph, result.params).gmac
            run = {
                "seed": seed, "gamma": gamma, "kind": _kind(problem, result.graph),
                "gmac": gmac, "fraction": (gmac - costs.one_net_gmac) / (costs.stn_gmac - costs.one_net_gmac),
                "tree": [row["text"] for row in tree_rows(result.graph)], "pipeline": result.pipeline,
                "phases": _phases(result.decisions), "seconds": time.perf_counter() - t0,
            }
            split = _first_split(run["phases"], problem.task_names)
            if clusters is not None:
                from mtgraph.analysis.partition import adjusted_rand_index

                found = split["partition"] if split is not None else [list(problem.task_names)]
                run["first_split"] = split
                run["ari"] = adjusted_rand_index(found, clusters)
            runs.append(run)
            ari = f", first split ARI {run['ari']:.2f}" if "ari" in run else ""
            print(f"seed {seed} γ {gamma:g}: {run['kind']} ({run['fraction']:.2f} of the way to STN{ari}) "
                  f"{' / '.join(run['tree'])} [{run['seconds']:.0f} s]", file=sys.stderr, flush=True)
    table = ["γ \\ seed | " + " | ".join(str(s) for s in args.seeds)]
    for gamma in args.gamma:
        cells = [next(f"{r['kind']} {r['fraction']:.2f}" for r in runs if r["gamma"] == gamma and r["seed"] == s)
                 for s in args.seeds]
        table.append(f"{gamma:g} | " + " | ".join(cells))
    summary = {"command": _command(argv), "args": {k: str(v) for k, v in vars(args).items() if k != "out"},
               "table": table, "total_seconds": time.perf_counter() - started, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, _json(summary).encode())
    print("\n".join(table))
    return summary


if __name__ == "__main__":
    main()
