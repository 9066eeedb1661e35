"""Cost of one AdaShare search step against a One-Net step, per curriculum phase and in the hard mode.

On ``mtgraph.zoo.resnet_tiny`` (8 gated blocks) with three tasks (MSE
losses against fixed random targets; Adam over every parameter), medians of
interleaved steps after warm-up, on one thread by default:

* **soft (paper) mode, per curriculum phase**: the relaxed network with the
  last k of the 8 gated blocks unlocked (one Gumbel gate per task), plus the
  sparsity and sharing terms. The forced-execute blocks before them are
  computed once for all tasks (``soft_graph``'s shared prefix); the
  ``unshared`` rows compute every task's copy, for contrast. Target: <= 1.3x
  a One-Net step while most blocks are forced.
* **hard (straight-through) mode**: a weight-turn step with every gate
  routing its sampled input and repeated calls on the same tensor computed
  once (``mtgraph.strategies.adashare.routing``), all 8 blocks unlocked:
  with undecided gates (α = 0.5: the tasks' sampled paths rarely agree), with
  decided gates on which all tasks agree, and with two groups of tasks; and a
  policy-turn step (straight-through, every task's own path).

Usage::

    python bench/bench_adashare_step.py            # 64 px, batch 8, 20 repeats, 1 thread
    python bench/bench_adashare_step.py --quick    # 32 px, batch 4, 6 repeats
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

import _timing
import torch
from torch import nn

_timing.add_paths()

import mtgraph  # noqa: E402
from mtgraph.ir import one_net  # noqa: E402
from mtgraph.strategies.adashare import (  # noqa: E402
    gate_key,
    gated_blocks,
    make_gates,
    policy_logits,
    policy_regularization,
    share_repeated_calls,
    soft_graph,
)
from mtgraph.zoo import resnet_tiny  # noqa: E402

TASKS = ("seg", "depth", "normal")


def make_heads(channels: int) -> dict[str, nn.Module]:
    torch.manual_seed(1)
    return {t: nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, k, 1))
            for t, k in zip(TASKS, (13, 1, 3), strict=True)}


def training_step(module: nn.Module, x: torch.Tensor, targets: Mapping[str, torch.Tensor],
                  extra: Callable[[], torch.Tensor] | None = None,
                  before: Callable[[], None] | None = None) -> Callable[[], object]:
    """One optimiser step: forward, task losses (+ extra terms), backward, Adam update."""
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)

    def run() -> object:
        if before is not None:
            before()
        optimizer.zero_grad(set_to_none=True)
        out = module(x)
        loss = sum(nn.functional.mse_loss(out[t], targets[t]) for t in TASKS)
        if extra is not None:
            loss = loss + extra()
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()
        return loss
    return run


def build(size: int, batch: int, width: int) -> dict[str, Callable[[], object]]:
    """Every compared training step, keyed by name."""
    torch.manual_seed(0)
    model = resnet_tiny(width=width)
    x = torch.randn(batch, 3, size, size)
    backbone = mtgraph.trace(model.eval(), x[:2])
    heads = make_heads(backbone.output_shape[0])
    with torch.no_grad():
        features = model(x)
        targets = {t: torch.randn_like(h(features)) for t, h in heads.items()}
    gated, _ = gated_blocks(backbone)
    steps: dict[str, Callable[[], object]] = {}

    one = one_net(backbone.num_blocks, TASKS)
    steps["one_net"] = training_step(mtgraph.compile(one, mtgraph.ParamStore.create(one, backbone, heads)).train(),
                                     x, targets)

    def soft(unlocked: int, shared_prefix: bool) -> Callable[[], object]:
        gates = make_gates(TASKS, gated)
        learnable = gated[len(gated) - unlocked:]
        graph = soft_graph(backbone, TASKS, learnable=learnable, shared_prefix=shared_prefix)
        store = mtgraph.ParamStore.create(graph, backbone, heads, gates=gates)
        mask = torch.tensor([b in learnable for b in gated])

        def regularisers() -> torch.Tensor:
            logits = policy_logits(gates, TASKS, gated, trainable=learnable)
            return policy_regularization(logits, lambda_sparsity=0.05, lambda_sharing=0.05, blocks=mask,
                                         sparsity_form="code", sharing_form="code")
        return training_step(mtgraph.compile(graph, store).train(), x, targets, regularisers)

    for k in range(1, len(gated) + 1):
        steps[f"soft {k}"] = soft(k, True)
        steps[f"unshared {k}"] = soft(k, False)

    def hard(policy: Callable[[str, int], float | None], route: bool) -> Callable[[], object]:
        """A hard-mode step; ``policy(task, block)``: the execute probability to set (None: 0.5)."""
        gates = make_gates(TASKS, gated, straight_through=True)
        with torch.no_grad():
            for t in TASKS:
                for b in gated:
                    p = policy(t, b)
                    if p is not None:
                        gates[gate_key(t, b)].logits.copy_(torch.tensor([p, 1.0 - p]).log())
        graph = soft_graph(backbone, TASKS)
        net = mtgraph.compile(graph, mtgraph.ParamStore.create(graph, backbone, heads, gates=gates)).train()
        for gate in gates.values():
            gate.route = route
        if not route:
            return training_step(net, x, targets)
        wrappers = share_repeated_calls(net)

        def clear() -> None:
            for wrapper in wrappers:
                wrapper.clear()
        return training_step(net, x, targets, before=clear)

    decided = 0.999  # about one sampled flip in a thousand gates
    steps["hard undecided"] = hard(lambda t, b: None, True)
    steps["hard agree"] = hard(lambda t, b: 1.0 - decided if b in (3, 6) else decided, True)
    steps["hard two groups"] = hard(
        lambda t, b: 1.0 - decided if b in (3, 6) or (t == "normal" and b == 2) else decided, True)
    steps["hard policy turn"] = hard(lambda t, b: None, False)
    return steps


def main(argv: list[str] | None = None) -> int:
    """Build every step, time them interleaved, print the ratios to the One-Net step."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _timing.common_arguments(parser, repeats=20, quick_repeats=6)
    parser.add_argument("--size", type=int, default=None, help="image side (default 64, --quick 32)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 8, --quick 4)")
    parser.add_argument("--width", type=int, default=16, help="resnet_tiny width (default 16)")
    args = parser.parse_args(argv)
    repeats, warmup = _timing.resolve(args, 20, 6)
    size, batch = args.size or (32 if args.quick else 64), args.batch or (4 if args.quick else 8)
    steps = build(size, batch, args.width)
    print(f"resnet_tiny(width={args.width}) at {size} px, batch {batch}, tasks {', '.join(TASKS)}: 8 gated blocks")
    _timing.header("one AdaShare search step / one One-Net step (forward, losses, backward, Adam), CPU", repeats, warmup)
    rows = []
    for threads in args.threads or [1]:
        with _timing.threads(threads):
            med = _timing.medians(steps, warmup, repeats)
        one = med["one_net"]
        rows.append(["One-Net", threads, one, 1.0, ""])
        for k in range(1, 9):
            rows.append([f"soft, last {k} of 8 unlocked ({8 - k} forced)", threads, med[f"soft {k}"],
                         med[f"soft {k}"] / one, "<= 1.3" if k <= 4 else ""])
            rows.append([f"  unshared relaxed network, {k} unlocked", threads, med[f"unshared {k}"],
                         med[f"unshared {k}"] / one, ""])
        for name, label in (("hard undecided", "hard weight turn, α = 0.5 (paths rarely agree)"),
                            ("hard agree", "hard weight turn, decided, all tasks agree"),
                            ("hard two groups", "hard weight turn, decided, two groups of tasks"),
                            ("hard policy turn", "hard policy turn (straight-through, own paths)")):
            rows.append([label, threads, med[name], med[name] / one, ""])
    print(_timing.table(["step", "threads", "ms", "/ One-Net", "target"], rows))
    print(f"(load average after the runs {_timing.load()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
