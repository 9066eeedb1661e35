"""torch.compile (inductor) on the CPU: the compiled network's inference and training step, against eager.

For a three-task One-Net (``--model``: resnet_tiny at 64 px, or a torchvision
model), the script measures

1. inference (eval mode, no gradients) at each batch size: eager vs
   :func:`mtgraph.exporters.torch_compile` of the same module;
2. one training step (forward, MSE losses, backward, Adam): eager vs the
   forward under torch.compile, which is what ``fit(torch_compile=True)`` runs;

as medians of round-robin calls after warm-up, with each compilation's time
(its first call) reported separately. Inductor's kernels use the thread
count they were compiled with, so each thread count compiles anew.

Usage::

    python bench/bench_torch_compile.py                      # resnet_tiny, 64 px, 1 thread and all cores
    python bench/bench_torch_compile.py --model torchvision:resnet18 --size 128 --threads 1
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Mapping

import _timing
import torch
from torch import nn

_timing.add_paths()

import mtgraph  # noqa: E402
from mtgraph.exporters import TorchCompileWarning, torch_compile  # noqa: E402
from mtgraph.zoo import resolve_model  # noqa: E402

TASKS = ("seg", "depth", "normal")
CHANNELS = {"seg": 13, "depth": 1, "normal": 3}


def network(spec: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    backbone = mtgraph.trace(resolve_model(spec), torch.randn(2, 3, size, size))
    c = backbone.output_shape[0]
    heads = {t: nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, CHANNELS[t], 1)) for t in TASKS}
    graph = mtgraph.one_net(backbone.num_blocks, TASKS)
    return mtgraph.compile(graph, mtgraph.ParamStore.create(graph, backbone, heads))


def train_step(module: nn.Module, x: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> Callable[[], object]:
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)

    def run() -> object:
        optimizer.zero_grad(set_to_none=True)
        out = module(x)
        loss = sum(nn.functional.mse_loss(out[t], targets[t]) for t in TASKS)
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()
        return loss
    return run


def first_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet_tiny", help="backbone (default resnet_tiny)")
    parser.add_argument("--size", type=int, default=64, help="image size (default 64)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="inference batch sizes")
    parser.add_argument("--train-batch", type=int, default=8, help="training batch size (default 8)")
    _timing.common_arguments(parser, repeats=20, quick_repeats=4)
    args = parser.parse_args()
    repeats, warmup = _timing.resolve(args, 20, 4)
    net = network(args.model, args.size)
    print(f"{args.model} One-Net, 3 tasks, {args.size} px; load average {_timing.load()}; torch {torch.__version__}")
    rows = []
    for n in _timing.thread_counts(args.threads):
        with _timing.threads(n), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TorchCompileWarning)
            torch._dynamo.reset()
            net.eval()
            compiled = torch_compile(net)
            for batch in args.batches:
                x = torch.rand(batch, 3, args.size, args.size)
                with torch.no_grad():
                    seconds = first_call(lambda x=x, c=compiled: c(x))
                    med = _timing.medians({"eager": lambda x=x: net(x), "compiled": lambda x=x, c=compiled: c(x)},
                                          warmup, repeats)
                rows.append(("inference", n, batch, seconds, med["eager"], med["compiled"],
                             med["eager"] / med["compiled"]))
            torch._dynamo.reset()
            net.train()
            x = torch.rand(args.train_batch, 3, args.size, args.size)
            with torch.no_grad():
                targets = {t: torch.randn_like(v) for t, v in net(x).items()}
            compiled = torch_compile(net)
            steps = {"eager": train_step(net, x, targets), "compiled": train_step(compiled, x, targets)}
            seconds = first_call(steps["compiled"])
            med = _timing.medians(steps, warmup, repeats)
            rows.append(("train step", n, args.train_batch, seconds, med["eager"], med["compiled"],
                         med["eager"] / med["compiled"]))
        for w in caught:
            print(f"warning: {w.message}")
    _timing.header("torch.compile (inductor) vs eager on the CPU", repeats, warmup)
    print(_timing.table(["what", "threads", "batch", "compile s", "eager ms", "compiled ms", "eager/compiled"], rows))
    print(f"(load average after the runs {_timing.load()})")


if __name__ == "__main__":
    main()
