"""Train a tiny 3-task network with ``mtgraph.train.fit``; run by the training tests in subprocesses.

It is also imported by those tests for its builders (tiny backbone, tasks,
data, the split rewrite hook), so every run builds exactly the same network.

Examples::

    python tests/scripts/train_run.py --out OUT --steps 40 --every 5
    python tests/scripts/train_run.py --out OUT --steps 40 --every 5 --kill-at 23   # SIGKILLs itself
    python tests/scripts/train_run.py --out OUT --steps 40 --every 5 --resume
    python -m torch.distributed.run --nproc_per_node=2 tests/scripts/train_run.py --out OUT --steps 20

At the end rank 0 saves the final architecture into ``OUT/final`` (IR text +
weights.safetensors) and the loss history into ``OUT/history.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

if __name__ == "__main__" and __package__ is None:
    # Run as a file from a source checkout: import the checkout's mtgraph.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import mtgraph  # noqa: E402
from mtgraph.data import SceneDataset  # noqa: E402
from mtgraph.ir import from_groups, group_key, one_net  # noqa: E402
from mtgraph.passes import SplitPass  # noqa: E402
from mtgraph.persist import atomic_write_bytes  # noqa: E402
from mtgraph.tasks import Task, depth, normals, segmentation  # noqa: E402
from mtgraph.train import CheckpointConfig, Hook, OptimizerGroup, Rewrite, TrainState, adam, fit, sgd, shutdown  # noqa: E402

SIZE = 32
NUM_CLASSES = 3
TASKS = ("seg", "depth", "normals")


class TinyNet(nn.Module):
    """Three conv blocks (stride 2, 2, 1); optional BatchNorm and dropout."""

    def __init__(self, norm: bool = True, dropout: float = 0.0, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1)]
            if norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            return nn.Sequential(*layers)

        self.blocks = nn.Sequential(block(3, width, 2), block(width, width, 2), block(width, width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def build_tasks() -> dict[str, Task]:
    """Segmentation (background + 3 shapes), depth and normals, with small heads."""
    return {
        "seg": segmentation(NUM_CLASSES + 1, hidden=16),
        "depth": depth(hidden=16),
        "normals": normals(hidden=16),
    }


def build_model(
    tasks: dict[str, Task], *, norm: bool = True, dropout: float = 0.0, seed: int = 0
) -> tuple[mtgraph.MTGraph, mtgraph.ParamStore]:
    """A One-Net over the traced TinyNet with one head per task (weights drawn from ``seed``)."""
    torch.manual_seed(seed)
    net = TinyNet(norm=norm, dropout=dropout)
    backbone = mtgraph.trace(net, torch.zeros(2, 3, SIZE, SIZE), cuts="blocks")
    channels = backbone.output_shape[0]
    heads = {name: task.make_head(channels, (SIZE, SIZE)) for name, task in tasks.items()}
    graph = one_net(backbone.num_blocks, list(tasks))
    return graph, mtgraph.ParamStore.create(graph, backbone, heads)


def build_data(n: int, seed: int) -> SceneDataset:
    """Generated 32 px scenes with 3 object classes."""
    return SceneDataset(n, size=SIZE, seed=seed, num_classes=NUM_CLASSES)


def split_rewrite(graph: mtgraph.MTGraph, params: mtgraph.ParamStore, first: int, group: Sequence[str]) -> Rewrite:
    """Split every shared block from ``first`` on into ``group`` and the rest, by hand, with a plain-dict lineage."""
    tasks = graph.tasks
    rest = [t for t in tasks if t not in group]
    num_blocks = params.backbone.num_blocks
    groups = [[list(tasks)] if b < first else [list(group), rest] for b in range(num_blocks)]
    new_graph = from_groups(num_blocks, tasks, groups)
    add, lineage, drop = {}, {}, []
    for b in range(first, num_blocks):
        shared = f"b{b}.shared"
        for part in (group, rest):
            key = group_key(b, part, tasks)
            add[key] = copy.deepcopy(params[shared])
            lineage[key] = [shared]
        drop.append(shared)
    return Rewrite(new_graph, params.updated(add=add, drop=drop), lineage, note=f"split blocks {first}.. into {list(group)} / {rest}")


class SplitHook(Hook):
    """At the end of epoch ``epoch``, split blocks from ``first`` on into ``group`` and the rest (the ``split`` pass)."""

    def __init__(self, epoch: int = 0, first: int = 1, group: Sequence[str] = ("seg",)) -> None:
        self.epoch, self.first, self.group = epoch, first, tuple(group)
        self.done = False

    def on_epoch_end(self, state: TrainState) -> Rewrite | None:
        if self.done or state.epoch != self.epoch:
            return None
        self.done = True
        rest = tuple(t for t in state.graph.tasks if t not in self.group)
        result = SplitPass(block=self.first, groups=(self.group, rest))(state.graph, state.params)
        return Rewrite.from_pass(result, note=f"split block {self.first}")

    def state_dict(self) -> dict[str, object]:
        return {"done": self.done}

    def load_state_dict(self, state) -> None:  # type: ignore[no-untyped-def]
        self.done = bool(state["done"])


class KillHook(Hook):
    """SIGKILLs this process right after step ``at`` (as an out-of-memory killer or a preemption would)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, state: TrainState) -> None:
        if state.step == self.at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--samples", type=int, default=48, help="training scenes")
    parser.add_argument("--batch", type=int, default=8, help="global batch size")
    parser.add_argument("--every", type=int, help="checkpoint every this many steps")
    parser.add_argument("--kill-at", type=int, help="SIGKILL this process after this many steps")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-norm", action="store_true", help="no BatchNorm (exact comparison across world sizes)")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--split-epoch", type=int, help="split blocks 1.. into seg / rest at the end of this epoch")
    parser.add_argument("--alternate", action="store_true", help="alternate heads (SGD) and trunk (Adam) groups")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    tasks = build_tasks()
    graph, params = build_model(tasks, norm=not args.no_norm, dropout=args.dropout, seed=args.seed)
    data = build_data(args.samples, seed=args.seed)
    hooks: list[Hook] = []
    if args.split_epoch is not None:
        hooks.append(SplitHook(args.split_epoch))
    if args.kill_at is not None:
        hooks.append(KillHook(args.kill_at))
    options: dict[str, object] = {}
    if args.alternate:
        options["groups"] = [
            OptimizerGroup("trunk", lambda key, _: not key.startswith("head."), adam(2e-3), steps=3),
            OptimizerGroup("heads", None, sgd(0.02), data=build_data(16, seed=args.seed + 1), steps=2,
                           scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)),
        ]
    else:
        options["optimizer"] = adam(2e-3)
        options["scheduler"] = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.7)
    result = fit(
        graph, params, tasks, data,
        steps=args.steps, epochs=args.epochs, batch_size=args.batch, seed=args.seed,
        hooks=hooks, checkpoint=CheckpointConfig(args.out / "ckpt", every=args.every) if args.every else None,
        resume=args.resume, progress=False, **options,  # type: ignore[arg-type]
    )
    if int(os.environ.get("RANK", "0")) == 0:
        mtgraph.save(result.graph, result.params, args.out / "final")
        summary = {"total": result.history.total, "losses": result.history.losses, "groups": result.history.groups,
                   "step": result.step, "resumed": result.resumed, "graph": mtgraph.print_graph(result.graph)}
        atomic_write_bytes(args.out / "history.json", json.dumps(summary).encode())
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
