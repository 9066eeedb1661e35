"""Task grouping (papers/003) on generated scenes: which tasks should share a network under an inference budget?

Four tasks on 32-pixel generated scenes: segmentation, surface normals,
semantic edges (all three read off the same objects and ground plane) and a
deliberately unrelated one (regressing a hidden random field independent of
the scene, ``SceneDataset(unrelated_strength=...)``). The tiny ResNet-like
backbone (``resnet_tiny(width=4)``) is the 1-network unit (1 "SNT");
``resnet_tiny(width=3)`` gives the cheaper single-task networks (about
0.57 of the MACs, the paper's half-size networks).

What runs, per seed:

1. Task grouping through the front door (``run_grouping``, the body of
   ``registry()["grouping"].learn``, here with the second, smaller backbone):
   all 2^4 − 1 = 15 subset networks and the 4 small single-task networks are
   trained (same init, seed, data order, schedule; the epoch with the lowest
   mean validation loss is kept); the exact branch and bound picks the
   networks at budget 2 and the chosen set is built by passes (One-Net split
   at the input), costed and exported to ONNX.
2. ``method="early_stopping"`` on the same run folder: every candidate is
   trained again for one pass over 20% of the training data (the chosen ones
   are already fully trained there, so they are reused), and
   ``method="higher_order"`` (trains nothing new: singles and pairs exist).
3. The loss-vs-budget curve, budgets 1 to 4 networks in steps of 1/2:
   selection on validation losses, the chosen heads scored on a held-out
   test set (serving fixed on validation, notes §A.4), for the exact
   optimum, the higher-order and early-stopping approximations (their
   chosen networks evaluated fully trained), the Random baseline (mean of
   2000 draws), the Pessimal baseline (the worst budget-saturated set,
   chosen on validation), the all-in-one network (1 network) and
   independent networks (4 full-size, or 4 small ones); with
   ``--width-baselines``, also the all-in-one network width-scaled to spend
   each budget (the paper's equal-budget baseline: one more network each).
4. With ``--clusters`` (e.g. ``seg+edges/normals/unrelated``): how well the
   grouping chosen at a budget of two networks recovers those designed
   clusters (adjusted Rand index of the served-task partition).

With ``--preset designed`` the scenes and tasks are the designed benchmark's
(``SceneConfig.designed()``: seg, edges, depth, normals and unrelated, built
to form the clusters {seg, edges}, {depth, normals}, {unrelated}; training
labels partly hidden, validation and test fully labelled), and the
two-network grouping is compared with those clusters.

With several ``--seeds`` the per-seed numbers are summarised as mean and 95%
t-interval over seeds (``results-summary.md.inc``).

The paper's headline checked: at equal budget the chosen grouping has a
lower total test loss than the single all-task network and, where the
budget allows them, than independent networks; it beats the Pessimal choice
at every budget; and where the unrelated task ends up.

Run: ``python examples/grouping_scenes.py`` (about 10-20 minutes per seed on
two busy cores with the defaults; ``--help`` for the knobs; ``--out`` keeps
the run folder, so a rerun skips every trained candidate). Into ``--out`` go
the curve (``curve-seed<S>.png``), every number (``results-seed<S>.json``)
and a Markdown fragment with the tables, the claims, the wall time and the
command (``results-seed<S>.md.inc``, included by
``docs/strategies/grouping.md``; ``make docs-results-grouping`` regenerates
the documentation's copy).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import mtgraph
from mtgraph import tasks as T
from mtgraph.analysis.partition import adjusted_rand_index
from mtgraph.data import SceneDataset
from mtgraph.exporters import export_onnx
from mtgraph.persist import atomic_write_bytes
from mtgraph.strategies.grouping import (
    Candidate,
    GroupingConfig,
    Solution,
    budget_of_networks,
    higher_order_candidates,
    pessimal_select,
    random_baseline,
    rescore,
    run_grouping,
    select_networks,
    train_chosen,
    validation_losses,
)
from mtgraph.zoo import resnet_tiny

#: The default tasks; ``--preset designed`` uses the designed preset's five (``mtgraph.data.DESIGNED_TASKS``).
TASKS = ("seg", "normals", "edges", "unrelated")

#: Two-sided 95% Student t quantiles by degrees of freedom (n − 1), for the intervals over seeds.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def make_tasks(hidden: int) -> dict[str, T.Task]:
    """Segmentation (4 shapes + background), normals, edges and the unrelated field regression."""
    return {
        "seg": T.segmentation(5, hidden=hidden),
        "normals": T.normals(hidden=hidden),
        "edges": T.edges(hidden=hidden),
        "unrelated": T.regression(name="unrelated", hidden=hidden),
    }


def tasks_of(preset: str | None, hidden: int, size: int) -> dict[str, T.Task]:
    """The default tasks, or the designed preset's (``mtgraph.data.designed_tasks``)."""
    if preset == "designed":
        from mtgraph.data import SceneConfig, designed_tasks

        return designed_tasks(SceneConfig.designed(size=size), hidden=hidden)
    return make_tasks(hidden)


def rescaled(width: int, hidden: int, seed: int, size: int, preset: str | None,
             multiplier: float) -> tuple[mtgraph.Backbone, dict]:
    """The backbone ``resnet_tiny(width)`` scaled by ``multiplier`` and fresh heads: the problem's ``rescale``.

    Seeded like the problem's own backbone, so ``multiplier = 1`` gives its weights. Module level, so it pickles.
    """
    torch.manual_seed(seed)
    backbone = mtgraph.trace(resnet_tiny(width=width, multiplier=multiplier).eval(), torch.zeros(2, 3, size, size))
    heads = {n: t.make_head(backbone.output_shape[0], (size, size)) for n, t in tasks_of(preset, hidden, size).items()}
    return backbone, heads


def datasets(args: argparse.Namespace, seed: int, size: int, cache: Path) -> tuple[SceneDataset, ...]:
    """Train, validation and test scenes (the designed preset hides labels in training only)."""
    if args.preset == "designed":
        from mtgraph.data import SceneConfig

        config = SceneConfig.designed(size=size)
        return (SceneDataset.from_config(args.train, config, seed=seed, cache=cache),
                SceneDataset.from_config(args.val, config.fully_labelled, seed=10_000 + seed, cache=cache),
                SceneDataset.from_config(args.test, config.fully_labelled, seed=20_000 + seed, cache=cache))
    scene = {"size": size, "num_classes": 4, "unrelated_strength": args.unrelated_strength}
    return (SceneDataset(args.train, seed=seed, cache=cache, **scene),
            SceneDataset(args.val, seed=10_000 + seed, cache=cache, **scene),
            SceneDataset(args.test, seed=20_000 + seed, cache=cache, **scene))


def groups_of(labels: Mapping[str, str]) -> list[list[str]]:
    """task -> cluster label, as the groups of tasks that share a label."""
    groups: dict[str, list[str]] = {}
    for task, label in labels.items():
        groups.setdefault(label, []).append(task)
    return list(groups.values())


def parse_clusters(text: str | None, names: Sequence[str]) -> dict[str, str] | None:
    """``"seg+edges/normals/unrelated"`` -> task -> cluster label."""
    if not text:
        return None
    clusters = {t: f"c{k}" for k, group in enumerate(text.split("/")) for t in group.split("+")}
    if sorted(clusters) != sorted(names):
        raise SystemExit(f"--clusters must partition the tasks {list(names)}, got {text!r}")
    return clusters


def _candidates(records: Sequence[Mapping[str, Any]], phase: str, unit: float, key: str = "val_losses") -> list[Candidate]:
    return [Candidate(dict(r[key]), r["macs"] / unit, label=r["label"])
            for r in records if r["phase"] == phase]


def _test_losses(records: Sequence[Mapping[str, Any]], folder: Path, backbones: Mapping[str | None, mtgraph.Backbone],
                 tasks: Mapping[str, T.Task], test: SceneDataset, size: int) -> dict[str, dict[str, float]]:
    """Every fully trained candidate's per-task loss on the test set."""
    out = {}
    for r in records:
        if r["phase"] != "full":
            continue
        backbone = backbones[r["label"]]
        heads = {t: tasks[t].make_head(backbone.output_shape[0], (size, size)) for t in r["tasks"]}
        graph, params = mtgraph.load(folder / r["model"], backbone, heads)
        out[r["name"]] = validation_losses(graph, params, tasks, test, batch_size=128)
    return out


def _scaled_test_losses(rows: Sequence[Mapping[str, Any]], folder: Path, args: argparse.Namespace, seed: int, size: int,
                        tasks: Mapping[str, T.Task], test: SceneDataset) -> dict[float, float]:
    """Budget -> total test loss of the all-in-one network width-scaled to it (budgets with one trained)."""
    out = {}
    for row in rows:
        if row["network"] is None:
            continue
        with torch.random.fork_rng():
            backbone, heads = rescaled(args.width, args.hidden, seed, size, args.preset, row["multiplier"])
        graph, params = mtgraph.load(folder / row["model"], backbone, heads)
        out[row["budget"]] = sum(validation_losses(graph, params, tasks, test, batch_size=128).values())
    return out


def _final(proxy: Solution, full_val: Sequence[Candidate], names: Sequence[str]) -> Solution:
    """The proxy-chosen networks with their fully trained validation losses (every one was trained fully here)."""
    table = {c.name: c for c in full_val}
    return train_chosen(proxy, names, lambda c: table[c.name])


def _short(solution: Solution, names: Sequence[str]) -> str:
    parts = []
    for net in solution.networks:
        served = [t for t in names if solution.serving[t] == net.name]
        parts.append(f"{net.name}->{','.join(served)}")
    return "{" + "; ".join(parts) + "}"


def run(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Train, select, score one seed; return every number."""
    torch.set_num_threads(args.threads)
    size = 32
    cache = args.out / "data"
    cache.mkdir(parents=True, exist_ok=True)
    train, val, test = datasets(args, seed, size, cache)
    tasks = tasks_of(args.preset, args.hidden, size)
    names = tuple(tasks)
    torch.manual_seed(seed)
    full = mtgraph.trace(resnet_tiny(width=args.width).eval(), torch.zeros(2, 3, size, size))
    small = mtgraph.trace(resnet_tiny(width=args.small_width).eval(), torch.zeros(2, 3, size, size))
    problem = mtgraph.Problem.create(full, tasks, train, val_data=val, seed=seed,
                                     rescale=functools.partial(rescaled, args.width, args.hidden, seed, size, args.preset))
    budget = budget_of_networks(problem, args.budget)
    budgets = [1.0 + 0.5 * i for i in range(2 * len(names) - 1)]
    base = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "random_draws": 0, "pessimal": False,
            "folder": str(args.out / f"run-seed{seed}"), "executor": args.executor, "workers": args.workers}
    times: dict[str, float] = {}
    results: dict[str, Any] = {}
    for method in ("exact", "early_stopping", "higher_order"):
        start = time.perf_counter()
        # The width-scaled all-in-one networks are trained once, with the exact run.
        scaled = {"width_baselines": True, "sweep": tuple(budgets)} if method == "exact" and args.width_baselines else {}
        results[method] = run_grouping(problem, GroupingConfig(method=method, **base, **scaled), budget, progress=True,
                                       small_backbone=small)
        times[method] = time.perf_counter() - start
        history = results[method].history
        print(f"[seed {seed} {method}] {times[method]:.0f} s, trained {history['trainings']} candidate runs, reused "
              f"{len(history['reused'])}; at budget {args.budget:g}: {history['final']['text']}", flush=True)

    exact = results["exact"]
    unit = exact.history["cost_unit"]["one_network"]
    folder = Path(base["folder"])
    records = {(r["name"], r["phase"]): r for res in results.values() for r in res.history["candidates"]}
    rows = list(records.values())
    full_val = _candidates(rows, "full", unit)
    early_val = _candidates(rows, "early", unit)
    test_losses = _test_losses(rows, folder, {None: full, "small": small}, tasks, test, size)
    full_test = [Candidate(test_losses[c.name], c.cost, label=c.label) for c in full_val]
    hoa_pool = higher_order_candidates([c for c in full_val if len(c.tasks) <= 2], names, cost=1.0)
    scaled_test = _scaled_test_losses(exact.history.get("width_baselines", []), folder, args, seed, size, tasks, test)

    curve = []
    for b in budgets:
        optimal = select_networks(full_val, names, b)
        hoa = _final(select_networks(hoa_pool, names, b), full_val, names)
        esa = _final(select_networks(early_val, names, b), full_val, names)
        worst = pessimal_select(full_val, names, b)
        rnd = random_baseline(full_val, names, b, draws=args.random_draws, seed=seed, score_on=full_test)
        curve.append({
            "budget": b,
            "optimal": rescore(optimal, full_test, names).total_loss, "optimal_val": optimal.total_loss,
            "optimal_networks": _short(optimal, names), "optimal_cost": optimal.total_cost,
            "optimal_serving": dict(optimal.serving),
            "hoa": rescore(hoa, full_test, names).total_loss, "hoa_networks": _short(hoa, names),
            "esa": rescore(esa, full_test, names).total_loss, "esa_networks": _short(esa, names),
            "pessimal": rescore(worst, full_test, names).total_loss, "pessimal_networks": _short(worst, names),
            "random": rnd.mean_loss, "width_scaled": scaled_test.get(b),
        })
    everything = "+".join(sorted(names))
    baselines = {
        "all-in-one (1)": (1.0, sum(test_losses[everything][t] for t in names)),
        f"independent full ({len(names)})": (float(len(names)), sum(test_losses[t][t] for t in names)),
        "independent small": (sum(c.cost for c in full_val if c.label == "small"),
                              sum(test_losses[f"{t}[small]"][t] for t in names)),
    }
    pairwise = {u: {t: 100 * (test_losses[f"{t}[small]"][t] - test_losses["+".join(sorted((t, u)))][t])
                    / test_losses[f"{t}[small]"][t] for t in names if t != u} for u in names}
    early_final = [(sum(next(c for c in early_val if c.name == f.name).losses.values()), sum(f.losses.values()))
                   for f in full_val]
    correlation = statistics.correlation([e for e, _ in early_final], [f for _, f in early_final])
    clusters = parse_clusters(args.clusters, names)
    recovery = None
    if clusters is not None:
        at_two = next(r for r in curve if r["budget"] == 2.0)
        recovery = {"budget": 2.0, "clusters": args.clusters, "chosen": at_two["optimal_networks"],
                    "ari": adjusted_rand_index(groups_of(at_two["optimal_serving"]), groups_of(clusters))}

    # The network at the chosen budget: built by passes, cost = the chosen trunks + kept heads, and it exports.
    report = mtgraph.cost(exact.graph, exact.params)
    onnx = export_onnx(exact.graph, exact.params, args.out / f"grouping-seed{seed}.onnx")
    compiled_test = validation_losses(exact.graph, exact.params, tasks, test, batch_size=128)
    return {
        "seed": seed, "tasks": list(names), "times": times, "unit_macs": unit, "curve": curve, "baselines": baselines,
        "pairwise_test_percent": pairwise, "early_final_correlation": correlation, "recovery": recovery,
        "test_losses": test_losses, "val_losses": {c.name: dict(c.losses) for c in full_val},
        "early_losses": {c.name: dict(c.losses) for c in early_val},
        "costs": {c.name: c.cost for c in full_val},
        "compiled": {"budget": args.budget, "budget_gmac": budget.value, "ir": mtgraph.print_graph(exact.graph),
                     "gmac": report.gmac, "chosen_cost_networks": exact.history["final"]["total_cost"],
                     "test_total": sum(compiled_test.values()), "onnx": str(onnx.path), "pipeline": exact.pipeline},
        "trainings": {m: r.history["trainings"] for m, r in results.items()},
    }


def _versus(mine: float, other: float) -> str:
    # Equal up to summation order: the same networks scored twice.
    if math.isclose(mine, other, rel_tol=1e-9):
        return "equal"
    return "lower" if mine < other else "NOT lower"


def report(out: Mapping[str, Any]) -> list[str]:
    """Print the tables and the claim checks; return the claim lines."""
    curve, baselines = out["curve"], out["baselines"]
    print(f"\nseed {out['seed']}: 1 network = {out['unit_macs'] / 1e6:.3f} MMac (trunk); candidate costs in networks: "
          + ", ".join(f"{n}={c:.3g}" for n, c in out["costs"].items() if "small" in n))
    print("\nTest total loss (sum over the 4 tasks; selection on validation)")
    print(f"{'budget':>6} {'optimal':>8} {'HOA':>8} {'ESA':>8} {'random':>8} {'pessimal':>8} {'scaled':>8}  "
          "optimal networks -> served tasks (scaled: the all-in-one network width-scaled to the budget)")
    for row in curve:
        scaled = "-" if row["width_scaled"] is None else f"{row['width_scaled']:.4f}"
        print(f"{row['budget']:6.1f} {row['optimal']:8.4f} {row['hoa']:8.4f} {row['esa']:8.4f} {row['random']:8.4f} "
              f"{row['pessimal']:8.4f} {scaled:>8}  {row['optimal_networks']}")
    print("\nbaselines (cost in networks, test total):")
    for name, (c, loss) in baselines.items():
        print(f"  {name:<22} {c:5.2f} {loss:8.4f}")
    print("\npairwise gain on the column task of training it with the row task, % vs the small single-task network (test):")
    names = out["tasks"]
    print("        " + " ".join(f"{t:>9}" for t in names))
    for u in names:
        print(f"{u:>9}" + " ".join(f"{out['pairwise_test_percent'][u].get(t, math.nan):9.1f}" for t in names))
    print(f"\nearly (one pass over 20% of the data) vs final validation total per network: "
          f"Pearson r = {out['early_final_correlation']:.3f}")
    print("HOA choices vs exact: " + ", ".join(f"b={r['budget']:g}: {'same' if r['hoa_networks'] == r['optimal_networks'] else r['hoa_networks']}"
                                               for r in curve))
    print("ESA choices vs exact: " + ", ".join(f"b={r['budget']:g}: {'same' if r['esa_networks'] == r['optimal_networks'] else r['esa_networks']}"
                                               for r in curve))
    compiled = out["compiled"]
    print(f"\nsolution at budget {compiled['budget']:g} networks ({compiled['budget_gmac'] * 1e3:.4f} MMac): "
          f"{compiled['gmac'] * 1e3:.4f} MMac (chosen networks cost {compiled['chosen_cost_networks']:.3f} x "
          f"{out['unit_macs'] / 1e6:.3f} MMac + heads), test total {compiled['test_total']:.4f}, built by pipeline "
          f"{compiled['pipeline']!r} on One-Net, ONNX {compiled['onnx']}")
    print(compiled["ir"])

    claims = []
    all_in_one = baselines["all-in-one (1)"][1]
    independent = [name for name in baselines if name.startswith("independent")]
    for row in curve:
        b = row["budget"]
        line = f"b={b:g}: optimal {row['optimal']:.4f} vs all-in-one {all_in_one:.4f} -> {_versus(row['optimal'], all_in_one)}"
        for name in independent:
            c, loss = baselines[name]
            if c <= b + 1e-9:
                line += f"; vs {name} {loss:.4f} -> {_versus(row['optimal'], loss)}"
        line += f"; vs random {row['random']:.4f} -> {_versus(row['optimal'], row['random'])}"
        line += f"; vs pessimal {row['pessimal']:.4f} -> {_versus(row['optimal'], row['pessimal'])}"
        if row["width_scaled"] is not None:
            line += (f"; vs the all-in-one network width-scaled to it {row['width_scaled']:.4f} -> "
                     f"{_versus(row['optimal'], row['width_scaled'])}")
        claims.append(line)
    hoa_gap = statistics.fmean((r["hoa"] - r["optimal"]) / r["optimal"] for r in curve)
    esa_gap = statistics.fmean((r["esa"] - r["optimal"]) / r["optimal"] for r in curve)
    esa_vs_random = statistics.fmean(r["esa"] - r["random"] for r in curve)
    claims.append(f"HOA mean gap to optimal over budgets {100 * hoa_gap:+.1f}%; ESA {100 * esa_gap:+.1f}%; "
                  f"ESA - random mean {esa_vs_random:+.4f} ({'ESA better' if esa_vs_random < 0 else 'ESA NOT better'})")
    if out["recovery"] is not None:
        rec = out["recovery"]
        claims.append(f"at budget 2 the chosen groups {rec['chosen']} against the designed clusters {rec['clusters']}: "
                      f"adjusted Rand index {rec['ari']:.2f}")
    print("\nclaims (test set):")
    for line in claims:
        print("  " + line)
    return claims


def plot(out: Mapping[str, Any], path: Path) -> None:
    """The loss-vs-budget curve as a PNG (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no plot", file=sys.stderr)
        return
    curve = out["curve"]
    budgets = [r["budget"] for r in curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("optimal", "optimal (exact)"), ("hoa", "higher-order approx."), ("esa", "early-stopping approx."),
                       ("random", "random (mean)"), ("pessimal", "pessimal"), ("width_scaled", "all-in-one, width-scaled")):
        if all(r[key] is None for r in curve):
            continue
        ax.plot(budgets, [math.nan if r[key] is None else r[key] for r in curve], marker="o", label=label)
    for name, (c, loss) in out["baselines"].items():
        ax.scatter([c], [loss], marker="s", s=50, label=name, zorder=3)
    ax.set_xlabel("inference budget (networks)")
    ax.set_ylabel("total test loss")
    ax.set_title(f"task grouping on scenes (seed {out['seed']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _command(argv: Sequence[str] | None) -> str:
    """The command line of this run as typed from the repository root (recorded so the docs say how to redo it)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", f"examples/{Path(__file__).name}", *arguments])


def _markdown(lines: Sequence[Sequence[str]], text: Sequence[int] = (0,)) -> list[str]:
    """A Markdown table of ``lines`` (header first): the columns in ``text`` left-aligned, the numbers right-aligned."""
    rule = "|" + "".join("---|" if k in text else "---:|" for k in range(len(lines[0])))
    return [f"| {' | '.join(lines[0])} |", rule] + [f"| {' | '.join(line)} |" for line in lines[1:]]


def write_fragment(path: Path, out: Mapping[str, Any]) -> Path:
    """Write the Markdown fragment the task grouping tutorial includes: the curve and baseline tables, the claims,
    the wall time and the command.

    It links no figure: an included fragment's links resolve against the including page, so the page links the
    curve itself.
    """
    scaled = any(r["width_scaled"] is not None for r in out["curve"])
    curve = [["budget (networks)", "optimal", "HOA", "ESA", "random (mean)", "pessimal",
              *(["all-in-one, width-scaled"] if scaled else []), "optimal networks → served tasks"]]
    curve += [[f"{r['budget']:g}", f"{r['optimal']:.4f}", f"{r['hoa']:.4f}", f"{r['esa']:.4f}", f"{r['random']:.4f}",
               f"{r['pessimal']:.4f}",
               *([("-" if r["width_scaled"] is None else f"{r['width_scaled']:.4f}")] if scaled else []),
               f"`{r['optimal_networks']}`"] for r in out["curve"]]
    compiled = out["compiled"]
    networks = [["network set", "cost (networks)", "test total loss"],
                [f"optimal (exact), budget {compiled['budget']:g}", f"{compiled['chosen_cost_networks']:.2f}",
                 f"{compiled['test_total']:.4f}"]]
    networks += [[name, f"{cost:.2f}", f"{loss:.4f}"] for name, (cost, loss) in out["baselines"].items()]
    lines = [f"Total test loss over the {len(out['tasks'])} tasks (selection on validation losses):", ""] + _markdown(
        curve, text=(len(curve[0]) - 1,))
    lines += ["", "The network built at the example's budget against the baselines:", ""] + _markdown(networks)
    names = out["tasks"]
    pairwise = [["trained with ↓, gain on →", *names]]
    pairwise += [[u] + ["-" if t == u else f"{out['pairwise_test_percent'][u][t]:+.1f}" for t in names] for u in names]
    lines += ["", "Gain on the column task of training it together with the row task, in % against the small "
              "single-task network (test loss):", ""] + _markdown(pairwise)
    lines += ["", "Claims as the example checks them (test set):", ""] + [f"- {claim}" for claim in out["claims"]]
    lines += ["", f"Wall time {out['total_seconds']:.0f} s ({out['total_seconds'] / 60:.1f} min) on "
              f"{out['cpu_count']} CPU cores. Command: `{out['command']}`", ""]
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% Student t-interval over seeds ((mean, mean) for one seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = T_975[min(len(values) - 1, max(T_975))] * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def summary(outs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per budget, over seeds: each curve's mean and interval, and the paired optimal − baseline differences."""
    rows = []
    for k, first in enumerate(outs[0]["curve"]):
        row: dict[str, Any] = {"budget": first["budget"]}
        for key in ("optimal", "pessimal", "random", "hoa", "esa"):
            row[key] = interval([o["curve"][k][key] for o in outs])
        row["optimal - pessimal"] = interval([o["curve"][k]["optimal"] - o["curve"][k]["pessimal"] for o in outs])
        row["optimal - all-in-one (1)"] = interval([o["curve"][k]["optimal"] - o["baselines"]["all-in-one (1)"][1]
                                                   for o in outs])
        scaled = [o["curve"][k]["width_scaled"] for o in outs]
        if all(v is not None for v in scaled):
            row["width_scaled"] = interval(scaled)
            row["optimal - width_scaled"] = interval([o["curve"][k]["optimal"] - v for o, v in zip(outs, scaled)])
        row["chosen"] = [o["curve"][k]["optimal_networks"] for o in outs]
        rows.append(row)
    recovery = [o["recovery"]["ari"] for o in outs if o["recovery"] is not None]
    return {"seeds": [o["seed"] for o in outs], "rows": rows,
            "ari_at_two_networks": interval(recovery) if recovery else None,
            "chosen_at_two_networks": [o["recovery"]["chosen"] for o in outs if o["recovery"] is not None]}


def write_summary(path: Path, summed: Mapping[str, Any]) -> Path:
    """The over-seeds table as Markdown: mean [95% interval] per budget."""

    def cell(values: tuple[float, float, float]) -> str:
        return f"{values[0]:.4f} [{values[1]:.4f}, {values[2]:.4f}]"

    table = [["budget (networks)", "optimal", "pessimal", "random (mean)", "all-in-one, width-scaled",
              "optimal − pessimal", "optimal − all-in-one (1)", "optimal − width-scaled"]]
    table += [[f"{r['budget']:g}", cell(r["optimal"]), cell(r["pessimal"]), cell(r["random"]),
               cell(r["width_scaled"]) if "width_scaled" in r else "-", cell(r["optimal - pessimal"]),
               cell(r["optimal - all-in-one (1)"]),
               cell(r["optimal - width_scaled"]) if "optimal - width_scaled" in r else "-"] for r in summed["rows"]]
    lines = [f"Total test loss over seeds {summed['seeds']}: mean [95% t-interval]; differences are paired by seed "
             "(negative: the optimal selection is better).", ""] + _markdown(table)
    if summed["ari_at_two_networks"] is not None:
        lines += ["", f"Designed-cluster recovery at two networks: adjusted Rand index {cell(summed['ari_at_two_networks'])}; "
                  f"chosen per seed: {', '.join(f'`{c}`' for c in summed['chosen_at_two_networks'])}"]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("grouping-scenes"), help="run folder (reruns skip trained candidates)")
    parser.add_argument("--seed", type=int, default=0, help="the seed (ignored with --seeds)")
    parser.add_argument("--seeds", type=str, default=None, help="comma-separated seeds, summarised with intervals")
    parser.add_argument("--train", type=int, default=384)
    parser.add_argument("--val", type=int, default=128)
    parser.add_argument("--test", type=int, default=384)
    parser.add_argument("--epochs", type=float, default=8.0, help="epochs of each candidate's full run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--small-width", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=16, help="hidden channels of each head")
    parser.add_argument("--budget", type=float, default=2.0, help="budget of the built network, in networks")
    parser.add_argument("--unrelated-strength", type=float, default=0.1)
    parser.add_argument("--random-draws", type=int, default=2000)
    parser.add_argument("--width-baselines", action="store_true",
                        help="also train the all-in-one network width-scaled to every budget (one more network each)")
    parser.add_argument("--preset", choices=("designed",), default=None,
                        help="the designed scenes and their five tasks (clusters seg+edges/depth+normals/unrelated)")
    parser.add_argument("--clusters", type=str, default=None,
                        help="designed task clusters to compare the budget-2 grouping with, e.g. seg+edges/normals/unrelated "
                             "(default with --preset designed: its clusters)")
    parser.add_argument("--executor", default="sequential", choices=("sequential", "process", "ray"))
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.preset == "designed" and args.clusters is None:
        from mtgraph.data import DESIGNED_CLUSTERS

        args.clusters = "/".join("+".join(group) for group in DESIGNED_CLUSTERS)
    parse_clusters(args.clusters, tuple(tasks_of(args.preset, args.hidden, 32)))  # fail before training
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    outs = []
    for seed in seeds:
        start = time.perf_counter()
        out = run(args, seed)
        out["claims"] = report(out)
        plot(out, args.out / f"curve-seed{seed}.png")
        out.update(total_seconds=time.perf_counter() - start, cpu_count=os.cpu_count(), command=_command(argv))
        atomic_write_bytes(args.out / f"results-seed{seed}.json", json.dumps(out, indent=1, default=str).encode())
        write_fragment(args.out / f"results-seed{seed}.md.inc", out)
        print(f"\nwrote {args.out / f'results-seed{seed}.json'}, {args.out / f'results-seed{seed}.md.inc'} "
              f"and {args.out / f'curve-seed{seed}.png'}")
        outs.append(out)
    if len(outs) > 1:
        summed = summary(outs)
        atomic_write_bytes(args.out / "results-summary.json", json.dumps(summed, indent=1).encode())
        print(f"wrote {write_summary(args.out / 'results-summary.md.inc', summed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
