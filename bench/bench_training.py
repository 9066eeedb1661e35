"""Cost of one training step of the learned-architecture methods against their plain baselines.

On ``mtgraph.zoo.resnet_tiny`` with three tasks (MSE losses against fixed
random targets, Adam), medians of interleaved steps after warm-up, 1 thread
and all threads:

1. MTSL's task-learning step — the compiled single-task networks (T task
   paths) plus the CKA alignment term between sibling task nodes
   (``mtgraph.strategies.mtsl.FeatureTap`` + ``alignment_loss``) — vs T
   separate single-task steps (target <= 1.05x);
2. AdaShare's soft-policy step — the relaxed network of
   ``mtgraph.strategies.adashare.soft_graph`` (one Gumbel gate per task and
   skippable block, every gate mixing execute and skip) plus the sparsity and
   sharing losses — vs a One-Net step (target <= 1.3x);
3. One-Net vs LibMTL's hard-parameter-sharing model, when LibMTL is installed.

Usage::

    python bench/bench_training.py            # 64 px, batch 8, 20 repeats
    python bench/bench_training.py --quick    # 32 px, batch 4, 6 repeats
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
from collections.abc import Callable, Mapping

import _timing
import torch
from torch import nn

_timing.add_paths()

import mtgraph  # noqa: E402
from mtgraph.ir import one_net, stn  # noqa: E402
from mtgraph.strategies.adashare import (  # noqa: E402
    gated_blocks,
    make_gates,
    policy_logits,
    policy_regularization,
    soft_graph,
)
from mtgraph.strategies.mtsl import FeatureTap, alignment_loss, alignment_pairs, task_nodes  # noqa: E402
from mtgraph.zoo import resnet_tiny  # noqa: E402

TASKS = ("seg", "depth", "normal")
CKA_WEIGHT = 0.2  # papers/000's λ


def make_heads(channels: int) -> dict[str, nn.Module]:
    torch.manual_seed(1)
    return {t: nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, k, 1))
            for t, k in zip(TASKS, (13, 1, 3), strict=True)}


def task_loss(out: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return sum(nn.functional.mse_loss(out[t], targets[t]) for t in TASKS)  # type: ignore[return-value]


def step_fn(module: nn.Module, x: torch.Tensor, targets: Mapping[str, torch.Tensor],
            extra: Callable[[], torch.Tensor] | None = None) -> Callable[[], object]:
    """One optimiser step: forward, task losses (+ extra terms), backward, Adam update."""
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)

    def run() -> object:
        optimizer.zero_grad(set_to_none=True)
        loss = task_loss(module(x), targets)
        if extra is not None:
            loss = loss + extra()
        loss.backward()
        optimizer.step()
        return loss
    return run


def separate_steps(model: nn.Module, heads: Mapping[str, nn.Module], x: torch.Tensor,
                   targets: Mapping[str, torch.Tensor]) -> Callable[[], object]:
    """T single-task steps, each on its own model copy with its own optimiser."""
    steps = []
    for t, head in heads.items():
        net = nn.Sequential(copy.deepcopy(model), copy.deepcopy(head)).train()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

        def run(net: nn.Module = net, optimizer: torch.optim.Optimizer = optimizer, t: str = t) -> None:
            optimizer.zero_grad(set_to_none=True)
            nn.functional.mse_loss(net(x), targets[t]).backward()
            optimizer.step()
        steps.append(run)

    def all_steps() -> None:
        for s in steps:
            s()
    return all_steps


def build(size: int, batch: int, width: int) -> dict[str, Callable[[], object]]:
    """Every compared training step, keyed by name."""
    torch.manual_seed(0)
    model = resnet_tiny(width=width)
    x = torch.randn(batch, 3, size, size)
    backbone = mtgraph.trace(model.eval(), x[:2])
    heads = make_heads(backbone.output_shape[0])
    n = backbone.num_blocks
    with torch.no_grad():
        features = model(x)
        targets = {t: torch.randn_like(h(features)) for t, h in heads.items()}
    model.train()

    # MTSL: the single-task networks with the CKA alignment of sibling task nodes.
    graph = stn(n, TASKS)
    store = mtgraph.ParamStore.create(graph, backbone, heads)
    mtsl_net = mtgraph.compile(graph, store).train()
    pairs = alignment_pairs(graph)
    nodes = task_nodes(graph)
    tap = FeatureTap(store, {t: graph.nodes[i].weights for t, i in nodes.items()})  # type: ignore[union-attr]
    mtsl = step_fn(mtsl_net, x, targets, lambda: alignment_loss(tap.features, pairs, CKA_WEIGHT))
    mtsl_no_cka = step_fn(copy.deepcopy(mtsl_net), x, targets)

    # AdaShare: the relaxed One-Net with one gate per (task, skippable block).
    gated, _ = gated_blocks(backbone)
    gates = make_gates(TASKS, gated)
    soft = soft_graph(backbone, TASKS)
    soft_store = mtgraph.ParamStore.create(soft, backbone, heads, gates=gates)
    soft_net = mtgraph.compile(soft, soft_store).train()

    def policy_terms() -> torch.Tensor:
        logits = policy_logits(gates, TASKS, gated)
        return policy_regularization(logits, lambda_sparsity=0.05, lambda_sharing=0.5)
    adashare = step_fn(soft_net, x, targets, policy_terms)

    one = one_net(n, TASKS)
    one_store = mtgraph.ParamStore.create(one, backbone, heads)
    one_net_step = step_fn(mtgraph.compile(one, one_store).train(), x, targets)
    return {
        "mtsl": mtsl, "mtsl_no_cka": mtsl_no_cka, "separate": separate_steps(model, heads, x, targets),
        "adashare": adashare, "one_net": one_net_step,
        "_info": f"{n} blocks, {len(pairs)} CKA pairs, {len(gated)} gated blocks x {len(TASKS)} tasks",  # type: ignore[dict-item]
    }


def libmtl_section() -> None:
    if importlib.util.find_spec("LibMTL") is None:
        print("\n## One-Net vs LibMTL hard parameter sharing\nskipped: LibMTL is not installed")
        return
    print("\n## One-Net vs LibMTL hard parameter sharing\nLibMTL is installed but this comparison is not written yet")


def main(argv: list[str] | None = None) -> int:
    """Build every step, time them interleaved, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _timing.common_arguments(parser, repeats=20, quick_repeats=6)
    parser.add_argument("--size", type=int, default=None, help="image side (default 64, --quick 32)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 8, --quick 4)")
    parser.add_argument("--width", type=int, default=16, help="resnet_tiny width (default 16)")
    args = parser.parse_args(argv)
    repeats, warmup = _timing.resolve(args, 20, 6)
    size, batch = args.size or (32 if args.quick else 64), args.batch or (4 if args.quick else 8)
    steps = build(size, batch, args.width)
    info = steps.pop("_info")
    print(f"resnet_tiny(width={args.width}) at {size} px, batch {batch}, tasks {', '.join(TASKS)}: {info}")
    _timing.header("one training step (forward, losses, backward, Adam), CPU", repeats, warmup)
    rows = []
    for threads in _timing.thread_counts(args.threads):
        with _timing.threads(threads):
            med = _timing.medians(steps, warmup, repeats)
        rows += [
            ["MTSL (STN + CKA) / T single-task steps", threads, med["mtsl"], med["separate"],
             med["mtsl"] / med["separate"], "<= 1.05"],
            ["  MTSL without CKA / T single-task steps", threads, med["mtsl_no_cka"], med["separate"],
             med["mtsl_no_cka"] / med["separate"], ""],
            ["AdaShare soft policy / One-Net", threads, med["adashare"], med["one_net"],
             med["adashare"] / med["one_net"], "<= 1.3"],
        ]
    print(_timing.table(["comparison (a / b)", "threads", "a ms", "b ms", "a/b", "target"], rows))
    print(f"(load average after the runs {_timing.load()})")
    libmtl_section()
    print("\n## GPU")
    if not _timing.has_gpu():
        print("skipped: no GPU")
    else:
        print("not measured: the CPU steps above are the reference; rerun with CUDA tensors to compare")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
