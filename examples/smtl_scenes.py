"""Safe MTL (papers/004) on generated scenes: is SMTL no worse than single-task networks on every task?

Three tasks on 32-pixel generated scenes: two related ones (segmentation and
depth, both read off the same objects and ground plane) and one deliberately
unrelated one (regressing a hidden random field that is independent of the
scene, ``SceneDataset(unrelated_strength=...)``). Four models, the same
protocol for all (Adam, same epochs, batch size and data order, the final
epoch evaluated on a held-out test set, notes D.8 / D.11):

* STN: one network per task (``train_reference("stn", problem)``);
* One-Net: one shared network (the paper's DMTL, ``train_reference("one_net", problem)``);
* SMTL: public encoder + private encoders + soft gates (``SMTLStrategy().learn(problem, config)``, variant ``smtl``);
* L-SMTL: straight-through Gumbel gates, hardened to one encoder per task (variant ``lite``).

The paper's claims checked, per seed and over seeds:

1. SMTL is *safe*: no worse than STN on every task (η̂ = 100, Definition 3,
   metric-averaged within a task, ties safe), reported strictly, with the
   tolerance variant η̂_0.05 of the notes, and "within seed noise" (a task's
   mean relative change vs STN is above minus the seed-to-seed spread of
   STN's own metric);
2. the unrelated task's gate leans private (α < 0.5, or at least the lowest α)
   while the related tasks lean public.

Run: ``python examples/smtl_scenes.py`` (``--help`` for the knobs, ``--out
results.json`` to keep every number). Seeds run in parallel single-threaded
processes (tiny networks are bound by per-step overhead). The defaults took
21.5 minutes on a 2-core machine busy with other jobs (load average 9-13);
a training step there was 2.5-5x slower than on nearly idle cores, so expect
roughly 5-8 minutes on 2 idle cores. ``--epochs 6 --train 256`` is a quicker,
noisier look. With ``--out FOLDER/NAME.json`` it also writes, next to the
JSON, the relative change against STN and the gates per task
(``NAME-safety.png``) and a Markdown fragment with the tables, the wall time
and the command (``NAME.md.inc``, included by ``docs/strategies/smtl.md``;
``make docs-results-smtl`` regenerates the documentation's copy).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

import mtgraph
from mtgraph import tasks as T
from mtgraph.data import SceneDataset
from mtgraph.persist import atomic_write_bytes
from mtgraph.strategies.smtl import DEFAULT_GATE_LR, SMTLConfig, SMTLStrategy, safety, train_reference
from mtgraph.train import evaluate
from mtgraph.zoo import resnet_tiny

MODELS = ("STN", "One-Net", "SMTL", "L-SMTL")
TASKS = ("seg", "depth", "unrelated")


def make_tasks(hidden: int) -> dict[str, T.Task]:
    """Segmentation (4 shapes + background), depth, and the unrelated field regression."""
    return {
        "seg": T.segmentation(5, hidden=hidden),
        "depth": T.depth(hidden=hidden),
        "unrelated": T.regression(name="unrelated", hidden=hidden),
    }


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train the four models on one seed's data and initialisation; return metrics, α, costs."""
    torch.set_num_threads(args.threads)
    scene = {"size": 32, "num_classes": 4, "unrelated_strength": args.unrelated_strength, "cache": args.cache}
    # Cached: every scene is rendered once, not once per epoch and model.
    train = SceneDataset(args.train, seed=seed, **scene)
    test = SceneDataset(args.test, seed=10_000 + seed, **scene)
    tasks = make_tasks(args.hidden)
    torch.manual_seed(seed)
    backbone = mtgraph.trace(resnet_tiny(width=args.width).eval(), torch.zeros(2, 3, 32, 32))
    # One set of heads per seed: every model starts from the same backbone and head weights.
    heads = {name: task.make_head(backbone.output_shape[0], (32, 32)) for name, task in tasks.items()}
    problem = mtgraph.Problem(backbone, heads, tasks, train, seed=seed)
    base = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    # The gates' own learning rate: SMTLConfig's default unless --gate-lr is given.
    gated = {**base, **({} if args.gate_lr is None else {"gate_lr": args.gate_lr})}
    out: dict[str, Any] = {"seed": seed, "metrics": {}, "alpha": {}, "cost": {}, "seconds": {}}
    strategy = SMTLStrategy()
    runs = {
        "STN": lambda: train_reference("stn", problem, SMTLConfig(**base)),
        "One-Net": lambda: train_reference("one_net", problem, SMTLConfig(**base)),
        "SMTL": lambda: strategy.learn(problem, SMTLConfig(variant="smtl", **gated)),
        "L-SMTL": lambda: strategy.learn(problem, SMTLConfig(variant="lite", tau=args.tau, **gated)),
    }
    for model, run in runs.items():
        start = time.perf_counter()
        result = run()
        metrics = evaluate(result.graph, result.params, tasks, test, batch_size=128)
        report = mtgraph.cost(result.graph, result.params)
        out["seconds"][model] = time.perf_counter() - start
        out["metrics"][model] = {t: dict(v) for t, v in metrics.items()}
        out["cost"][model] = {"gmac": report.total_macs / 1e9, "params": report.total_params}
        if result.strategy == "smtl":
            out["alpha"][model] = {row["task"]: row["alpha"] for row in result.figures["alpha"].records()}
        print(f"  seed {seed} {model:<8} {out['seconds'][model]:6.1f} s  "
              + "  ".join(f"{t}: {_primary(tasks[t], metrics[t])}" for t in TASKS), flush=True)
    return out


def _primary(task: T.Task, values: Mapping[str, float]) -> str:
    return f"{task.primary}={values[task.primary]:.4f}"


def _mean_sd(values: Sequence[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):+.2f} ± {sd:.2f}"


def summarise(runs: list[dict[str, Any]], tasks: Mapping[str, T.Task], tolerance: float) -> dict[str, Any]:
    """Print the tables and the claim checks; return the summary numbers."""
    directions = {t: dict(task.higher_is_better) for t, task in tasks.items()}
    seeds = [r["seed"] for r in runs]
    summary: dict[str, Any] = {"seeds": seeds, "safety": {}, "claims": {}}

    print("\nTest metrics, mean ± sd over seeds", seeds)
    for task in TASKS:
        for metric, up in directions[task].items():
            cells = []
            for model in MODELS:
                values = [r["metrics"][model][task][metric] for r in runs]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.fmean(values):.4f} ± {sd:.4f}")
            print(f"  {task:<9} {metric:<10}{'↑' if up else '↓'}  " + "  ".join(f"{m}: {c}" for m, c in zip(MODELS, cells)))

    print(f"\nRelative change vs STN in % (positive = better), mean ± sd; strict η̂ and η̂_{tolerance:g} per seed")
    for model in MODELS[1:]:
        reports = [safety(r["metrics"][model], r["metrics"]["STN"], directions, tolerance=tolerance) for r in runs]
        per_task = {t: [100 * rep.task_delta[t] for rep in reports] for t in TASKS}
        mean_metrics = {t: {m: statistics.fmean(r["metrics"][model][t][m] for r in runs) for m in directions[t]} for t in TASKS}
        mean_stl = {t: {m: statistics.fmean(r["metrics"]["STN"][t][m] for r in runs) for m in directions[t]} for t in TASKS}
        pooled = safety(mean_metrics, mean_stl, directions, tolerance=tolerance)
        summary["safety"][model] = {
            "task_delta_percent": per_task,
            "delta_i_percent": [100 * rep.delta_i for rep in reports],
            "eta": [rep.eta for rep in reports],
            "eta_tolerance": [rep.eta_tolerance for rep in reports],
            "eta_of_seed_means": pooled.eta,
            "eta_tolerance_of_seed_means": pooled.eta_tolerance,
        }
        print(f"  {model:<8} " + "  ".join(f"{t}: {_mean_sd(per_task[t])}" for t in TASKS)
              + f"  Δ_I: {_mean_sd([100 * rep.delta_i for rep in reports])}"
              + f"  η̂: {[round(rep.eta, 1) for rep in reports]}  η̂_{tolerance:g}: {[round(rep.eta_tolerance, 1) for rep in reports]}"
              + f"  (seed means: η̂ {pooled.eta:.1f}, η̂_{tolerance:g} {pooled.eta_tolerance:.1f})")

    print("\nLearned α_t = P(public) per seed (L-SMTL keeps public iff α > 0.5, ties private)")
    for model in ("SMTL", "L-SMTL"):
        for r in runs:
            print(f"  {model:<8} seed {r['seed']}: " + "  ".join(f"{t} {r['alpha'][model][t]:.4f}" for t in TASKS))

    print("\nCost of the exported network (GMac per image, parameters), seed", seeds[0])
    for model in MODELS:
        c = runs[0]["cost"][model]
        print(f"  {model:<8} {c['gmac']:.5f} GMac  {c['params']:>8,d} params")

    # Claim 1: SMTL no worse than STN on every task.
    noise = {}
    for task in TASKS:
        spreads = []
        for metric in directions[task]:
            values = [r["metrics"]["STN"][task][metric] for r in runs]
            mean = statistics.fmean(values)
            spreads.append((statistics.stdev(values) if len(values) > 1 else 0.0) / abs(mean) if mean else math.inf)
        noise[task] = 100 * statistics.fmean(spreads)
    smtl = summary["safety"]["SMTL"]
    within = {t: statistics.fmean(smtl["task_delta_percent"][t]) >= -noise[t] for t in TASKS}
    claims = {
        "smtl_strict_eta_100_every_seed": all(e == 100 for e in smtl["eta"]),
        "smtl_strict_eta_100_on_seed_means": smtl["eta_of_seed_means"] == 100,
        f"smtl_eta_{tolerance:g}_100_every_seed": all(e == 100 for e in smtl["eta_tolerance"]),
        "smtl_no_worse_within_seed_noise": all(within.values()),
        "stn_seed_noise_percent": noise,
    }
    alpha = {t: statistics.fmean(r["alpha"]["SMTL"][t] for r in runs) for t in TASKS}
    claims["smtl_mean_alpha"] = alpha
    claims["unrelated_leans_private"] = alpha["unrelated"] < 0.5
    claims["related_lean_public"] = alpha["seg"] > 0.5 and alpha["depth"] > 0.5
    claims["unrelated_has_lowest_alpha_every_seed"] = all(
        r["alpha"]["SMTL"]["unrelated"] < min(r["alpha"]["SMTL"]["seg"], r["alpha"]["SMTL"]["depth"]) for r in runs
    )
    onenet = summary["safety"]["One-Net"]
    claims["one_net_has_negative_sharing"] = any(statistics.fmean(v) < 0 for v in onenet["task_delta_percent"].values())
    claims["smtl_delta_i_above_one_net_every_seed"] = all(
        a > b for a, b in zip(smtl["delta_i_percent"], onenet["delta_i_percent"]))
    claims["smtl_worst_task_delta_percent_per_seed"] = [
        min(smtl["task_delta_percent"][t][k] for t in TASKS) for k in range(len(runs))]
    summary["claims"] = claims

    print("\nClaims")
    print(f"  SMTL strict η̂ = 100 on every seed: {claims['smtl_strict_eta_100_every_seed']}; "
          f"on the seed means: {claims['smtl_strict_eta_100_on_seed_means']}; "
          f"η̂_{tolerance:g} = 100 on every seed: {claims[f'smtl_eta_{tolerance:g}_100_every_seed']}")
    print("  SMTL no worse than STN within seed noise (mean Δ_t >= −STN's relative seed sd): "
          + ", ".join(f"{t} {statistics.fmean(smtl['task_delta_percent'][t]):+.2f}% vs −{noise[t]:.2f}% → {within[t]}"
                      for t in TASKS))
    print(f"  One-Net shows negative sharing on some task: {claims['one_net_has_negative_sharing']}; "
          f"SMTL Δ_I > One-Net Δ_I on every seed: {claims['smtl_delta_i_above_one_net_every_seed']}; "
          "SMTL's worst task per seed: " + ", ".join(f"{v:+.2f}%" for v in claims["smtl_worst_task_delta_percent_per_seed"]))
    print("  mean SMTL α: " + ", ".join(f"{t} {a:.4f}" for t, a in alpha.items())
          + f"; unrelated leans private: {claims['unrelated_leans_private']}; related lean public: "
          f"{claims['related_lean_public']}; unrelated has the lowest α on every seed: "
          f"{claims['unrelated_has_lowest_alpha_every_seed']}")
    return summary


def _command(argv: Sequence[str] | None) -> str:
    """The command line of this run as typed from the repository root (recorded so the docs say how to redo it)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", f"examples/{Path(__file__).name}", *arguments])


def _seed_stats(values: Sequence[float], digits: int, signed: bool = False) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{'+' if signed else ''}.{digits}f} ± {sd:.{digits}f}"


def _table_cells(payload: Mapping[str, Any], tasks: Mapping[str, T.Task]) -> list[list[str]]:
    """One row per model: each task's primary metric, Δ_I against STN (mean ± sd over seeds), η̂ per seed, cost."""
    runs, safety_numbers = payload["runs"], payload["summary"]["safety"]
    header = ["model"] + [f"{t} {tasks[t].primary}{'↑' if tasks[t].higher_is_better[tasks[t].primary] else '↓'}"
                          for t in TASKS]
    header += ["Δ_I % vs STN", "η̂ per seed", "GMac", "params"]
    lines = [header]
    for model in MODELS:
        cells = [model] + [_seed_stats([r["metrics"][model][t][tasks[t].primary] for r in runs], 4) for t in TASKS]
        if model in safety_numbers:
            numbers = safety_numbers[model]
            cells += [_seed_stats(numbers["delta_i_percent"], 2, signed=True),
                      " / ".join(f"{e:.0f}" for e in numbers["eta"])]
        else:
            cells += ["-", "-"]
        cost = runs[0]["cost"][model]
        lines.append(cells + [f"{cost['gmac']:.5f}", f"{cost['params']:,d}"])
    return lines


def _markdown(lines: Sequence[Sequence[str]]) -> list[str]:
    rule = "|---|" + "---:|" * (len(lines[0]) - 1)
    return [f"| {' | '.join(lines[0])} |", rule] + [f"| {' | '.join(line)} |" for line in lines[1:]]


def write_fragment(path: Path, payload: Mapping[str, Any], tasks: Mapping[str, T.Task]) -> Path:
    """Write the Markdown fragment the Safe MTL tutorial includes: metric and gate tables, wall time, command.

    It links no figure: an included fragment's links resolve against the including page, so the page links the
    figure itself.
    """
    runs, summary = payload["runs"], payload["summary"]
    lines = _markdown(_table_cells(payload, tasks))
    lines += ["", f"Test metrics as mean ± sd over seeds {summary['seeds']}; η̂ (strict) is the percentage of each "
              "task's metrics no worse than STN, averaged over tasks (100 = safe); cost of seed "
              f"{summary['seeds'][0]}'s exported network.", ""]
    delta = [["model"] + [f"{t} Δ %" for t in TASKS] + [f"α {t}" for t in TASKS]]
    for model in ("One-Net", "SMTL", "L-SMTL"):
        per_task = summary["safety"][model]["task_delta_percent"]
        cells = [model] + [_seed_stats(per_task[t], 2, signed=True) for t in TASKS]
        if model in runs[0]["alpha"]:
            cells += [_seed_stats([r["alpha"][model][t] for r in runs], 3) for t in TASKS]
        else:
            cells += ["-"] * len(TASKS)
        delta.append(cells)
    lines += _markdown(delta)
    lines += ["", "Δ: relative change against STN per task (positive = better); α = P(public encoder) of each task's "
              "gate (L-SMTL keeps the public encoder iff α > 0.5).", ""]
    lines += [f"Wall time {payload['total_seconds']:.0f} s ({payload['total_seconds'] / 60:.1f} min) on "
              f"{payload['cpu_count']} CPU cores. Command: `{payload['command']}`", ""]
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def plot(payload: Mapping[str, Any], path: Path) -> None:
    """Draw the relative change against STN per task and model, and the learned α per task (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no figure", file=sys.stderr)
        return
    runs, summary = payload["runs"], payload["summary"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.25
    colors = {"One-Net": "C0", "SMTL": "C1", "L-SMTL": "C2"}  # the same model in the same colour in both panels
    for k, model in enumerate(("One-Net", "SMTL", "L-SMTL")):
        per_task = summary["safety"][model]["task_delta_percent"]
        means = [statistics.fmean(per_task[t]) for t in TASKS]
        sds = [statistics.stdev(per_task[t]) if len(per_task[t]) > 1 else 0.0 for t in TASKS]
        left.bar([i + (k - 1) * width for i in range(len(TASKS))], means, width, yerr=sds, capsize=3, label=model,
                 color=colors[model])
    left.axhline(0.0, color="grey", linewidth=0.8)
    # Symmetric log: a negative transfer of hundreds of percent would otherwise flatten the few-percent differences.
    left.set_yscale("symlog", linthresh=10)
    left.set(xticks=range(len(TASKS)), xticklabels=TASKS, ylabel="relative change vs STN (%, symlog)",
             title="per task (positive = better), mean ± sd over seeds")
    left.legend(fontsize=8)
    for k, model in enumerate(("SMTL", "L-SMTL")):
        values = [[r["alpha"][model][t] for r in runs] for t in TASKS]
        means = [statistics.fmean(v) for v in values]
        sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        right.bar([i + (k - 0.5) * width for i in range(len(TASKS))], means, width, yerr=sds, capsize=3, label=model,
                  color=colors[model])
    right.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    right.set(xticks=range(len(TASKS)), xticklabels=TASKS, ylim=(0, 1), ylabel="α = P(public)",
              title="learned gates per task")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the experiment and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=512, help="training scenes per seed")
    parser.add_argument("--test", type=int, default=512, help="test scenes per seed")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--tau", type=float, default=0.1, help="L-SMTL Gumbel temperature")
    parser.add_argument("--width", type=int, default=4, help="resnet_tiny width")
    parser.add_argument("--hidden", type=int, default=32, help="head hidden channels")
    parser.add_argument("--unrelated-strength", type=float, default=0.1)
    parser.add_argument("--tolerance", type=float, default=0.05, help="ε of the tolerance variant η̂_ε")
    parser.add_argument("--gate-lr", type=float, default=None,
                        help=f"gates' Adam lr (default: SMTLConfig's, {DEFAULT_GATE_LR})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--jobs", type=int, default=2, help="seeds trained in parallel processes")
    parser.add_argument("--cache", type=Path, default=None, help="scene cache folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="write every number to this JSON file")
    args = parser.parse_args(argv)
    print(f"Safe MTL on scenes: {len(args.seeds)} seeds, {args.train} train / {args.test} test scenes, "
          f"resnet_tiny(width={args.width}), {args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr}, "
          f"gate lr {args.gate_lr or DEFAULT_GATE_LR}, {args.jobs} process(es) x {args.threads} thread(s)", flush=True)
    # Recorded as given: the temporary scene cache below is a path of this machine that is gone after the run.
    recorded = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        if args.cache is None:
            args.cache = Path(scratch)
        if args.jobs > 1 and len(args.seeds) > 1:
            # Tiny networks are bound by per-step overhead: one single-threaded process per seed uses 2 cores best.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
                runs = list(pool.map(run_seed, args.seeds, [args] * len(args.seeds)))
        else:
            runs = [run_seed(seed, args) for seed in args.seeds]
    tasks = make_tasks(args.hidden)
    summary = summarise(runs, tasks, args.tolerance)
    seconds = time.perf_counter() - start
    print(f"\ntotal time {seconds:.0f} s")
    if args.out is not None:
        payload = {"args": recorded, "runs": runs, "summary": summary, "total_seconds": seconds, "cpu_count": os.cpu_count(),
                   "command": _command(argv)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, json.dumps(payload, indent=2).encode())
        stem = args.out.parent / args.out.stem
        plot(payload, Path(f"{stem}-safety.png"))
        write_fragment(Path(f"{stem}.md.inc"), payload, tasks)
        print(f"wrote {args.out}, {stem}.md.inc and {stem}-safety.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
