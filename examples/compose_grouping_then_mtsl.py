"""Compose strategies: task grouping decides which tasks share a network, then MTSL learns each group's tree.

Run: ``python examples/compose_grouping_then_mtsl.py --out compose-out`` (a few
minutes on 2 cores). Task grouping (papers/003) trains a network per task
subset and picks the set that minimises total validation loss within a budget
of networks. Inside every chosen network that serves several tasks, MTSL
(papers/000) then starts from single-task networks and fuses them layer by
layer where the task nodes are similar. The result is one tree per group;
their costs add up, since the groups share nothing. Both strategies are
reached through the registry with one :class:`mtgraph.Problem` (one per group
for MTSL: the same backbone, data and seed, the group's tasks and heads).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import mtgraph
from mtgraph.data import SceneDataset
from mtgraph.exporters import render
from mtgraph.strategies import registry
from mtgraph.strategies.grouping import GroupingConfig, budget_of_networks
from mtgraph.strategies.mtsl import MTSLConfig
from mtgraph.tasks import depth as depth_task
from mtgraph.tasks import normals as normals_task
from mtgraph.tasks import regression, segmentation
from mtgraph.threads import apply_threads, choose_threads
from mtgraph.zoo import resnet_tiny


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: one per core not busy with other processes, printed; see mtgraph.threads)")
    parser.add_argument("--out", type=Path, default=Path("compose-out"))
    parser.add_argument("--epochs", type=float, default=3.0, help="epochs per candidate network and per MTSL run")
    parser.add_argument("--budget", type=float, default=2.0, help="inference budget, in full-size networks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(apply_threads(choose_threads(args.threads)).describe(), flush=True)
    torch.manual_seed(args.seed)

    train = SceneDataset(256, size=32, seed=args.seed, unrelated_strength=0.15)
    val = SceneDataset(96, size=32, seed=args.seed + 10_000, unrelated_strength=0.15)
    tasks = {
        "seg": segmentation(train.config.seg_classes),
        "depth": depth_task(),
        "normals": normals_task(),
        "unrelated": regression(name="unrelated"),
    }
    backbone = mtgraph.trace(resnet_tiny(width=4), torch.zeros(1, 3, 32, 32))
    problem = mtgraph.Problem.create(backbone, tasks, train, val_data=val, seed=args.seed)

    grouping = registry()["grouping"].learn(
        problem, GroupingConfig(epochs=args.epochs, folder=str(args.out / "candidates")),
        budget_of_networks(problem, args.budget),
    )
    serving: dict[str, str] = grouping.history["serving"]
    groups: dict[str, list[str]] = {}
    for task, network in serving.items():
        groups.setdefault(network, []).append(task)
    print(f"task grouping at budget {args.budget} networks: {list(groups.values())} (pipeline {grouping.pipeline!r})")

    total = 0
    args.out.mkdir(parents=True, exist_ok=True)
    for network, members in groups.items():
        sub = mtgraph.Problem(backbone, {m: problem.heads[m] for m in members}, {m: tasks[m] for m in members}, train,
                              val, seed=args.seed)
        if len(members) == 1:
            # A single task keeps its own network: nothing to fuse.
            graph = mtgraph.stn(backbone.num_blocks, members)
            params = mtgraph.ParamStore.create(graph, backbone, sub.heads)
        else:
            result = registry()["mtsl"].learn(sub, MTSLConfig(lr=1e-3, batch_size=16, grouping_images=96).with_budget(args.epochs))
            graph, params = result.graph, result.params
        report = mtgraph.cost(graph, params)
        total += report.total_macs
        name = "+".join(members)
        render(graph, params, args.out / f"{name}.svg")
        print(f"group {name} (from network {network}): {report.gmac:.5f} GMac, {report.total_params / 1e6:.3f} M params")
        print(graph)
    print(f"all groups: {total / 1e9:.5f} GMac; the grouping solution alone: {grouping.history['cost']['gmac']:.5f} GMac")


if __name__ == "__main__":
    main()
