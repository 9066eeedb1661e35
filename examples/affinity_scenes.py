"""Branched multi-task networks (papers/001) on generated scenes: does affinity decide what to share?

Five dense tasks (segmentation, depth, edges, normals, autoencoder; ``--tasks``
picks others, ``unrelated`` included) on 32-pixel generated scenes, a narrow
ResNet-18-shaped backbone (``resnet_tiny``, 9 blocks). The BMTN pipeline of
:mod:`mtgraph.strategies.affinity`, through its front door
(:class:`~mtgraph.strategies.affinity.AffinityStrategy` on one
:class:`~mtgraph.Problem`):

1. the single-task networks (STN) are trained once (``train_stn``);
2. RSA affinity is measured on K held-out images at the end of every stage
   (blocks 2, 4, 6, 8: the paper's locations after each ResNet stage; the
   first stage is always shared) and printed as one heatmap (matrix) per
   location;
3. for three parameter budgets between the One-Net and the STN
   (``Budget.params(f, relative_to="one_net..stn")``) the best tree is chosen
   (``AffinityStrategy().learn`` with the trained STN weights, so they are not
   retrained), built by ``fuse`` passes and trained from scratch;
4. the One-Net (budget fraction 0: the all-shared tree) is trained the same way.

Every network gets the same schedule (Adam, epochs, batch size, data order)
and is evaluated on a separate test set. Per-task metrics, Δ_MTL against the
STN (primary metric per task), parameters and GMac are reported, and the
paper's qualitative claims are checked and printed as they come out:

* affinity falls with depth (mean off-diagonal affinity per location);
* the chosen trees share the shallow blocks and split deeper ones, and the
  split point moves shallower as the budget grows;
* tasks that share a branch are the more affine ones where the tree branches;
* with ``--clusters`` (e.g. ``seg+edges/depth+normals/unrelated``), the
  complete-linkage clusters of the affinity at each location against that
  partition (adjusted Rand index), "mid depth" being the location nearest the
  backbone's middle block.

Run: ``python examples/affinity_scenes.py`` (a few minutes on 2 idle cores
with the defaults; ``--help`` for the knobs, ``--out results.json`` to keep
every number). With ``--out FOLDER/NAME.json`` it also writes, next to the
JSON, the RSA heatmaps (``NAME-affinity.png``), Δ_MTL against parameters
(``NAME-budgets.png``) and a Markdown fragment with the table, the trees, the
wall time and the command (``NAME.md.inc``, included by
``docs/strategies/affinity.md``; ``make docs-results-affinity`` regenerates
the documentation's copy). ``--affinity-only`` stops after the STN and the
affinity (no trees are trained): enough for the cluster check.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import mtgraph
from mtgraph import tasks as T
from mtgraph.analysis.similarity import spearman
from mtgraph.data import SceneDataset
from mtgraph.persist import atomic_write_bytes
from mtgraph.strategies.affinity import (
    AffinityConfig,
    AffinityStrategy,
    BranchingTree,
    adjusted_rand_index,
    affinity_clusters,
    train_stn,
)
from mtgraph.tasks import delta_mtl
from mtgraph.train import evaluate
from mtgraph.zoo import resnet_tiny

TASKS = ("seg", "depth", "edges", "normals", "autoencoder")


def make_tasks(names: Sequence[str], seg_classes: int, hidden: int) -> dict[str, T.Task]:
    """The named dense tasks of the scenes with small heads (``hidden`` channels)."""
    factories = {
        "seg": lambda: T.segmentation(seg_classes, hidden=hidden),
        "depth": lambda: T.depth(hidden=hidden),
        "edges": lambda: T.edges(hidden=hidden),
        "normals": lambda: T.normals(hidden=hidden),
        "autoencoder": lambda: T.autoencoder(hidden=hidden),
        "unrelated": lambda: T.regression(hidden=hidden),
    }
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise SystemExit(f"unknown tasks {unknown}; choose among {sorted(factories)}")
    return {name: factories[name]() for name in names}


def parse_clusters(text: str) -> list[list[str]]:
    """``"seg+edges/depth+normals/unrelated"`` -> ``[["seg", "edges"], ["depth", "normals"], ["unrelated"]]``."""
    return [group.split("+") for group in text.split("/") if group]


def mid_depth(locations: Sequence[int], num_blocks: int) -> int:
    """The index of the location nearest the backbone's middle block (the deeper one on a tie)."""
    middle = (num_blocks - 1) / 2
    return min(range(len(locations)), key=lambda d: (abs(locations[d] - middle), -d))


def _matrix(labels: Sequence[str], matrix: Sequence[Sequence[float]]) -> list[str]:
    width = max(len(s) for s in labels)
    lines = [" " * (width + 2) + " ".join(f"{s[:6]:>6}" for s in labels)]
    for name, row in zip(labels, matrix, strict=True):
        lines.append(f"  {name:<{width}}" + " ".join(f"{v:6.3f}" for v in row))
    return lines


def _groups_text(groups: Sequence[Sequence[str]]) -> str:
    return " ".join("{" + ",".join(g) + "}" for g in groups)


def _first_split(block_groups: Sequence[Sequence[Sequence[str]]]) -> int | None:
    return next((b for b, g in enumerate(block_groups) if len(g) > 1), None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train STN, One-Net and the three budgeted trees; return every number."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        scene: dict[str, Any] = {"size": args.size, "cache": cache}
        if args.unrelated > 0:
            scene["unrelated_strength"] = args.unrelated
        train = SceneDataset(args.train, seed=args.seed, **scene)
        val = SceneDataset(args.val, seed=10_000 + args.seed, **scene)  # probe images (held out)
        test = SceneDataset(args.test, seed=20_000 + args.seed, **scene)
        return _run(args, train, val, test)


def _run(args: argparse.Namespace, train: Any, val: Any, test: Any) -> dict[str, Any]:
    names = tuple(t for t in args.tasks.split(",") if t)
    tasks = make_tasks(names, train.config.seg_classes, args.hidden)
    torch.manual_seed(args.seed)
    backbone = mtgraph.trace(resnet_tiny(width=args.width).eval(), torch.zeros(2, 3, args.size, args.size))
    problem = mtgraph.Problem.create(backbone, tasks, train, val_data=val, seed=args.seed)
    base = {
        "stn_epochs": args.epochs,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "probe_images": args.probe,
        "locations": args.locations,
    }
    out: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "tasks": names,
        "models": {},
        "seconds": {},
        "num_blocks": backbone.num_blocks,
        "kind": args.kind,
        "primary": {t: task.primary for t, task in tasks.items()},
        "higher_is_better": {t: dict(task.higher_is_better)[task.primary] for t, task in tasks.items()},
    }
    print(backbone.describe(), flush=True)

    start = time.perf_counter()
    trained = train_stn(problem, AffinityConfig(**base))
    out["seconds"]["STN"] = time.perf_counter() - start
    models: dict[str, tuple[Any, Any, Any]] = {"STN": (trained.graph, trained.params, None)}
    print(f"STN trained in {out['seconds']['STN']:.1f} s", flush=True)

    # The One-Net run (budget fraction 0) also probes the affinity; with --affinity-only nothing is trained after it.
    runs = {"One-Net": 0.0} if args.affinity_only else {"One-Net": 0.0, **{f"tree@{f:g}": f for f in args.fractions}}
    strategy = AffinityStrategy()
    for label, fraction in runs.items():
        config = AffinityConfig(**base, budget_path=label == "One-Net")
        if args.affinity_only:
            config = AffinityConfig(**{**base, "epochs": 0}, budget_path=True)
        budget = mtgraph.Budget(args.kind, fraction, "one_net..stn")
        start = time.perf_counter()
        result = strategy.learn(problem, config, budget, stn_params=trained.params)
        out["seconds"][label] = time.perf_counter() - start
        models[label] = (result.graph, result.params, result)
        print(f"{label} trained in {out['seconds'][label]:.1f} s: {result.decisions[0].what}", flush=True)
    first = models["One-Net"][2]
    affinity = first.history["affinity"]
    out["affinity"] = {
        "tasks": affinity["tasks"],
        "locations": affinity["locations"],
        "blocks": affinity["blocks"],
        "tensor": affinity["tensor"],
        "mean": list(affinity["mean_off_diagonal"]),
        "num_images": affinity["num_images"],
    }
    out["budget_path"] = [(c, d, g) for c, d, g in first.history["budget_path"]]
    if args.clusters:
        out["clusters"] = cluster_check(out["affinity"], parse_clusters(args.clusters), backbone.num_blocks)
    if args.affinity_only:
        return out

    directions = {t: {task.primary: dict(task.higher_is_better)[task.primary]} for t, task in tasks.items()}
    metrics = {label: evaluate(g, p, tasks, test, batch_size=128) for label, (g, p, _) in models.items()}
    primary = {label: {t: {tasks[t].primary: m[t][tasks[t].primary]} for t in names} for label, m in metrics.items()}
    rows = []
    for label, (graph, params, result) in models.items():
        report = mtgraph.cost(graph, params)
        row = {
            "label": label,
            "params": report.total_params,
            "gmac": report.total_macs / 1e9,
            "delta_mtl": delta_mtl(primary[label], primary["STN"], directions),
            "metrics": {t: dict(v) for t, v in metrics[label].items()},
        }
        if result is not None:
            chosen = result.decisions[0]
            row.update(
                tree=chosen.what.removeprefix("tree "),
                budget=chosen.data["budget"],
                dissimilarity=chosen.data["dissimilarity"],
                groups=chosen.data["groups"],
                first_split=_first_split(chosen.data["groups"]),
                pipeline=result.pipeline,
            )
        rows.append(row)
    out["models"] = rows
    return out


def cluster_check(affinity: Mapping[str, Any], reference: Sequence[Sequence[str]], num_blocks: int) -> dict[str, Any]:
    """Complete-linkage clusters of the affinity at every location (as many as ``reference`` has) and their ARI."""
    tasks, locations = affinity["tasks"], affinity["locations"]
    rows = []
    for d, block in enumerate(locations):
        found = affinity_clusters(affinity["tensor"][d], tasks, len(reference))
        rows.append({"location": d, "block": block, "clusters": found, "ari": adjusted_rand_index(found, reference)})
    mid = mid_depth(locations, num_blocks)
    return {"reference": [list(g) for g in reference], "per_location": rows, "mid_depth": mid, "mid_ari": rows[mid]["ari"]}


def _pair_affinity(
    tensor: Sequence[Any], tasks: Sequence[str], location: int, groups: Sequence[Sequence[str]]
) -> tuple[list[float], list[float]]:
    """Affinities at ``location`` of task pairs inside one group and of pairs in different groups."""
    index = {t: i for i, t in enumerate(tasks)}
    within, across = [], []
    for k, a in enumerate(tasks):
        for b in tasks[k + 1 :]:
            value = tensor[location][index[a]][index[b]]
            (within if any(a in g and b in g for g in groups) else across).append(value)
    return within, across


def summarise(out: dict[str, Any]) -> dict[str, Any]:
    """Print the affinity heatmaps, budget path, result table and claim checks; return the claims."""
    aff = out["affinity"]
    tasks, locations, means = aff["tasks"], aff["locations"], aff["mean"]
    print(f"\nRSA affinity of the trained STNs, K={aff['num_images']} held-out images, per location")
    for d, (b, name) in enumerate(zip(locations, aff["blocks"], strict=True)):
        print(f" location {d}: output of block {b} ({name})")
        print("\n".join(_matrix(tasks, aff["tensor"][d])))
    print(
        "\nMean off-diagonal affinity by location: "
        + "  ".join(f"b{b} {m:.3f}" for b, m in zip(locations, means, strict=True))
    )

    print(f"\nBudget path ({out['kind']}): cost, clustering cost, first split block, groups at the last block")
    for cost_value, dis, groups in out["budget_path"]:
        print(
            f"  {cost_value:>14,.6g}  {dis:7.4f}  split from block {_first_split(groups)}  {_groups_text(groups[-1])}"
        )

    depth_rho = float(spearman(list(range(len(means))), means))
    drops = sum(b < a for a, b in zip(means, means[1:]))
    claims: dict[str, Any] = {
        "mean_affinity_per_location": means,
        "affinity_drop_first_to_last": means[0] - means[-1],
        "affinity_spearman_with_depth": depth_rho,
        "affinity_falls_with_depth": depth_rho < 0 and means[-1] < means[0],
    }
    if "clusters" in out:
        check = out["clusters"]
        reference = " ".join("{" + ",".join(g) + "}" for g in check["reference"])
        print(f"\nComplete-linkage clusters of the affinity per location against {reference} (adjusted Rand index)")
        for row in check["per_location"]:
            mark = "  <- mid depth" if row["location"] == check["mid_depth"] else ""
            print(f"  block {row['block']}: {_groups_text(row['clusters'])}  ARI {row['ari']:+.3f}{mark}")
        claims["ari_per_location"] = [row["ari"] for row in check["per_location"]]
        claims["ari_mid_depth"] = check["mid_ari"]
    print("\nClaims (papers/001)")
    print(
        f"  1. affinity falls with depth: {claims['affinity_falls_with_depth']} (mean {means[0]:.3f} at the first "
        f"location → {means[-1]:.3f} at the last, drop {claims['affinity_drop_first_to_last']:.3f}; Spearman ρ "
        f"with depth {depth_rho:+.3f}; lower than the previous location at {drops} of {len(means) - 1} steps)"
    )
    rows = out["models"]
    if not rows:
        return claims
    task_names = out["tasks"]
    primary = out["primary"]
    print("\nTest metrics (primary metric per task), cost and Δ_MTL vs STN (primary metrics)")
    print(
        f"  {'model':<10} "
        + " ".join(f"{t[:5]}:{primary[t][:7]:<7}" for t in task_names)
        + f" {'params':>9} {'GMac':>8} {'Δ_MTL %':>8}"
    )
    for row in rows:
        cells = " ".join(f"{row['metrics'][t][primary[t]]:>13.4f}" for t in task_names)
        print(f"  {row['label']:<10} {cells} {row['params']:>9,d} {row['gmac']:>8.5f} {row['delta_mtl']:>+8.2f}")
    stn_row = rows[0]
    one_row = next(r for r in rows if r["label"] == "One-Net")
    trees = [r for r in rows if r["label"].startswith("tree@")]
    print(
        f"\n  STN: {stn_row['params']:,} params, {stn_row['gmac']:.5f} GMac; One-Net: {one_row['params']:,} params "
        f"({one_row['params'] / stn_row['params']:.0%} of STN), {one_row['gmac']:.5f} GMac"
    )
    # Location d governs the blocks up to locations[d]; the branching locations of a tree are where it has 2+ groups.
    segment = [
        next(d for d, b in enumerate(locations) if b >= j) if j <= locations[-1] else len(locations) - 1
        for j in range(out["num_blocks"])
    ]
    grouping = {}
    for row in trees:
        print(
            f"  {row['label']}: budget {row['budget']:,.6g} {out['kind']} → {row['params']:,} params "
            f"({row['params'] / stn_row['params']:.0%} of STN), {row['gmac']:.5f} GMac "
            f"({row['gmac'] / stn_row['gmac']:.0%}), clustering cost {row['dissimilarity']:.4f}"
        )
        for b, groups in enumerate(row["groups"]):
            print(f"      block {b}: {_groups_text(groups)}")
        within, across = [], []
        for d in sorted({segment[b] for b, g in enumerate(row["groups"]) if len(g) > 1}):
            groups = row["groups"][locations[d]]
            w, a = _pair_affinity(aff["tensor"], tasks, d, groups)
            within += w
            across += a
        grouping[row["label"]] = (
            sum(within) / len(within) if within else float("nan"),
            sum(across) / len(across) if across else float("nan"),
        )

    splits = [r["first_split"] for r in trees]
    counts = [[len(g) for g in r["groups"]] for r in trees]

    def as_tree(row: Mapping[str, Any]) -> BranchingTree:
        return BranchingTree(tuple(tuple(tuple(g) for g in p) for p in row["groups"]))

    nested = all(as_tree(a).refines(as_tree(b)) for a, b in zip(trees[1:], trees))
    claims |= {
        "groups_per_block": counts,
        "first_split_block_per_budget": splits,
        "shallow_blocks_shared": all(s is not None and s > 0 for s in splits),
        "split_moves_shallower_as_budget_grows": all(
            a is not None and b is not None and b <= a for a, b in zip(splits, splits[1:])
        ),
        "trees_nested_as_budget_grows": nested,
        "mean_affinity_within_vs_across_groups_at_branching_locations": grouping,
        "within_groups_higher": all(w > a for w, a in grouping.values()),
        "delta_mtl": {r["label"]: r["delta_mtl"] for r in rows},
        "trees_beat_one_net": [r["delta_mtl"] > one_row["delta_mtl"] for r in trees],
    }
    print(
        f"  2. shallow blocks shared, deeper blocks split: groups per block {counts}; first split block per budget "
        f"{splits}, moving shallower as the budget grows: {claims['split_moves_shallower_as_budget_grows']}; "
        f"trees nested: {nested}"
    )
    print("     (part of this is built into a branching tree: a split is never undone and the root segment is shared)")
    print(
        "  3. tasks grouped together are the more affine ones at the branching locations (mean within vs across): "
        + ", ".join(f"{k} {w:.3f} vs {a:.3f}" for k, (w, a) in grouping.items())
        + f" → {claims['within_groups_higher']}"
    )
    print(
        f"  Δ_MTL %: One-Net {one_row['delta_mtl']:+.2f}, trees "
        + ", ".join(f"{r['label']} {r['delta_mtl']:+.2f}" for r in trees)
        + " (one seed)"
    )
    return claims


def _command(argv: Sequence[str] | None) -> str:
    """The command line of this run as typed from the repository root (recorded so the docs say how to redo it)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", f"examples/{Path(__file__).name}", *arguments])


def _table_cells(out: Mapping[str, Any]) -> list[list[str]]:
    """The test table (as printed by :func:`summarise`) as rows of cells, header first."""
    primary, up = out["primary"], out["higher_is_better"]
    names = out["tasks"]
    header = ["model"] + [f"{t} {primary[t]}{'↑' if up[t] else '↓'}" for t in names] + ["params", "GMac", "Δ_MTL %"]
    lines = [header]
    for row in out["models"]:
        lines.append(
            [row["label"]]
            + [f"{row['metrics'][t][primary[t]]:.4f}" for t in names]
            + [f"{row['params']:,d}", f"{row['gmac']:.5f}", f"{row['delta_mtl']:+.2f}"]
        )
    return lines


def write_fragment(path: Path, out: Mapping[str, Any]) -> Path:
    """Write the Markdown fragment the affinity tutorial includes: table, mean affinity, trees, wall time, command.

    It links no figure: an included fragment's links resolve against the including page, so the page links the
    figures itself.
    """
    cells = _table_cells(out)
    lines = [f"| {' | '.join(cells[0])} |", "|---|" + "---:|" * (len(cells[0]) - 1)]
    lines += [f"| {' | '.join(row)} |" for row in cells[1:]]
    aff = out["affinity"]
    means = ", ".join(f"block {b} {m:.3f}" for b, m in zip(aff["locations"], aff["mean"], strict=True))
    lines += ["", f"Mean off-diagonal RSA affinity of the trained STNs (K = {aff['num_images']}): {means}.", ""]
    stn = out["models"][0]
    for row in out["models"]:
        if "tree" in row:
            lines.append(f"- {row['label']} ({row['params'] / stn['params']:.0%} of the STN's parameters): {row['tree']}")
    claims = out["claims"]
    within = ", ".join(f"{k} {w:.3f} vs {a:.3f}" for k, (w, a) in claims[
        "mean_affinity_within_vs_across_groups_at_branching_locations"].items())
    lines += [
        "",
        "The paper's claims as the example checks them:",
        "",
        f"- affinity falls with depth: {claims['affinity_falls_with_depth']} (Spearman ρ with depth "
        f"{claims['affinity_spearman_with_depth']:+.3f})",
        f"- first split block per budget {claims['first_split_block_per_budget']}, moving shallower as the budget "
        f"grows: {claims['split_moves_shallower_as_budget_grows']}; trees nested: {claims['trees_nested_as_budget_grows']}",
        f"- tasks grouped together are the more affine ones where the tree branches (mean affinity within vs across "
        f"groups): {within} → {claims['within_groups_higher']}",
    ]
    if "clusters" in out:
        check = out["clusters"]
        reference = " ".join("{" + ",".join(g) + "}" for g in check["reference"])
        aris = ", ".join(f"block {r['block']} {r['ari']:+.2f}" for r in check["per_location"])
        lines.append(f"- complete-linkage clusters of the affinity against {reference}, adjusted Rand index: {aris}")
    seconds = out["seconds"]
    per_model = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total")
    lines += [
        "",
        f"Wall time {seconds['total']:.0f} s ({seconds['total'] / 60:.1f} min) on {out['cpu_count']} CPU cores "
        f"({per_model}). Command: `{out['command']}`",
        "",
    ]
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def plot(out: Mapping[str, Any], stem: Path) -> None:
    """Draw ``<stem>-affinity.png`` (RSA heatmap per location) and ``<stem>-budgets.png`` (Δ_MTL vs parameters)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no figures", file=sys.stderr)
        return
    aff = out["affinity"]
    tasks = aff["tasks"]
    # One colour scale for every location, stretched over the values that occur: affinities are often all close to 1.
    low = min(min(row) for matrix in aff["tensor"] for row in matrix)
    low = max(0.0, math.floor(low * 20) / 20 - 0.05)
    fig, axes = plt.subplots(1, len(aff["locations"]), figsize=(3.3 * len(aff["locations"]), 3.6), squeeze=False,
                             layout="constrained")
    for ax, block, matrix in zip(axes[0], aff["locations"], aff["tensor"], strict=True):
        image = ax.imshow(matrix, vmin=low, vmax=1, cmap="viridis")
        ax.set(xticks=range(len(tasks)), yticks=range(len(tasks)), title=f"after block {block}")
        ax.set_xticklabels(tasks, rotation=45, ha="right", fontsize=8)
        ax.set_yticklabels(tasks, fontsize=8)
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < (low + 1) / 2 else "black")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="RSA affinity")
    fig.savefig(f"{stem}-affinity.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in out["models"]:
        ax.scatter([row["params"] / 1e6], [row["delta_mtl"]], s=40, zorder=3)
        ax.annotate(row["label"], (row["params"] / 1e6, row["delta_mtl"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set(xlabel="parameters (M)", ylabel="Δ_MTL vs STN (%)", title="budgeted trees between One-Net and STN")
    fig.tight_layout()
    fig.savefig(f"{stem}-budgets.png", dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the knobs, run, print, optionally write the JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks (unrelated needs --unrelated)")
    parser.add_argument("--unrelated", type=float, default=0.0,
                        help="amplitude of the scenes' unrelated field (0..0.2; > 0 adds the target 'unrelated')")
    parser.add_argument("--clusters", default="",
                        help="a reference partition such as seg+edges/depth+normals/unrelated: ARI per location")
    parser.add_argument("--affinity-only", action="store_true", help="train the STN and probe the affinity only")
    parser.add_argument("--train", type=int, default=512, help="training scenes")
    parser.add_argument("--val", type=int, default=64, help="held-out scenes for the RSA probe")
    parser.add_argument("--test", type=int, default=256, help="test scenes")
    parser.add_argument("--size", type=int, default=32, help="image size in pixels")
    parser.add_argument("--probe", type=int, default=64, help="K, probe images")
    parser.add_argument("--epochs", type=float, default=6.0, help="epochs of every network")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=8, help="resnet_tiny width")
    parser.add_argument("--hidden", type=int, default=16, help="head hidden channels")
    parser.add_argument("--kind", choices=("params", "gmac"), default="params", help="budget unit")
    parser.add_argument("--locations", default="stages", help="'stages' (the paper's four, after each stage) or 'all'")
    parser.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=[0.2, 0.4, 0.7],
        help="three budgets, as fractions of the way from One-Net to STN",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--cache", type=Path, default=None, help="scene cache folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="write every number to this JSON file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = run(args)
    out["claims"] = summarise(out)
    out["seconds"]["total"] = time.perf_counter() - start
    out["cpu_count"] = os.cpu_count()
    out["command"] = _command(argv)
    print(f"\ntotal {out['seconds']['total']:.0f} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, json.dumps(out, indent=2, default=_jsonable).encode())
        stem = args.out.parent / args.out.stem
        if args.affinity_only:
            print(f"wrote {args.out}")
            return 0
        plot(out, stem)
        write_fragment(Path(f"{stem}.md.inc"), out)
        print(f"wrote {args.out}, {stem}.md.inc and the figures {stem}-*.png")
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
