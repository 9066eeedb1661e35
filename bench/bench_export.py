"""Latency of exported multi-task networks: ONNX Runtime (CPU) vs torch eager, and branching overhead.

For One-Net, single-task networks (STN) and a branched tree over a small
ResNet-style backbone (three tasks), the script exports each architecture with
:func:`mtgraph.exporters.export_onnx` and measures the median latency of

* ONNX Runtime on the CPU and torch eager running the same compiled module,
  with 1 thread and with all threads, at batch 1 and 16 (ratio torch / ORT);
* the branched network as one module vs the sum of its unique blocks (every
  IR node) each run alone, which is what branching would cost if sharing were
  free of overhead (ratio full / sum).

Every weight key gets its own values before export: fresh copies are equal,
and ONNX Runtime's optimizer would merge STN's identical copies and their
compute, which a trained network never allows.

Usage::

    python bench/bench_export.py                # defaults: 64 px, width 16, 20 repeats
    python bench/bench_export.py --repeats 50 --size 96 --batches 1 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

import mtgraph
from mtgraph.exporters import export_onnx, open_session
from mtgraph.ir import MTGraph, from_groups, one_net, stn

TASKS = ("seg", "depth", "cls")


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 convolutions and a (projected when needed) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.down is None else self.down(x)
        return torch.relu(out + shortcut)


class SmallResNet(nn.Module):
    """A ResNet-18-shaped backbone (stem + 4 stages of 2 basic blocks), widths w, 2w, 4w, 8w."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        cin = width
        for k, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**k
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def make_heads(channels: int) -> dict[str, nn.Module]:
    return {
        "seg": nn.Sequential(nn.Conv2d(channels, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 19, 1)),
        "depth": nn.Sequential(nn.Conv2d(channels, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 1, 1)),
        "cls": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)),
    }


def distinct(params: mtgraph.ParamStore) -> None:
    """Give every weight key its own parameter values and BatchNorm statistics."""
    with torch.no_grad():
        for k, (_, module) in enumerate(params.items()):
            torch.manual_seed(1000 + k)
            for p in module.parameters():
                p.mul_(1.0 + 0.1 * torch.randn_like(p))
            for name, b in module.named_buffers():
                if name.endswith("running_mean"):
                    b.normal_(0.0, 0.05)
                elif name.endswith("running_var"):
                    b.uniform_(0.8, 1.2)


def branched(num_blocks: int) -> MTGraph:
    """Share the first half, then split off cls, then give every task its own last quarter."""
    groups: list[list[list[str]]] = []
    for b in range(num_blocks):
        if b < num_blocks // 2:
            groups.append([list(TASKS)])
        elif b < (3 * num_blocks) // 4:
            groups.append([["seg", "depth"], ["cls"]])
        else:
            groups.append([[t] for t in TASKS])
    return from_groups(num_blocks, TASKS, groups)


def timings_ms(fns: Sequence[Callable[[], object]], warmup: int, repeats: int) -> list[tuple[float, float]]:
    """(median, minimum) latency in ms of each function, timed round-robin.

    Interleaving the compared runs exposes all of them to the same background
    load, so their ratios stay meaningful on a busy machine. The minimum is
    the cost without interruptions; a sum of per-call medians leaves out the
    interruptions that a longer run almost always contains, so sums are
    compared by minimum too.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return [(1e3 * statistics.median(t), 1e3 * min(t)) for t in times]


def call_sites(module: torch.fx.GraphModule, x: torch.Tensor) -> list[Callable[[], object]]:
    """One closure per call site of the compiled module, running that block (or head) alone on its real input."""
    values: dict[str, torch.Tensor] = {}
    calls: list[Callable[[], object]] = []
    with torch.inference_mode():
        for node in module.graph.nodes:
            if node.op == "placeholder":
                values[node.name] = x
            elif node.op == "call_module":
                sub = module.get_submodule(str(node.target))
                inputs = [values[a.name] for a in node.args if isinstance(a, torch.fx.Node)]
                values[node.name] = sub(*inputs)
                calls.append(lambda sub=sub, inputs=inputs: sub(*inputs))
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    parser.add_argument("--width", type=int, default=16, help="backbone width of the first stage (default 16)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 and all cores)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="folder for the ONNX files (default: a temporary one)")
    args = parser.parse_args()

    all_threads = os.cpu_count() or 1
    thread_counts = sorted(set(args.threads or (1, all_threads)))
    torch.manual_seed(0)
    backbone = mtgraph.trace(SmallResNet(args.width).eval(), torch.randn(2, 3, args.size, args.size))
    heads = make_heads(backbone.output_shape[0])
    n = backbone.num_blocks
    archs = {"One-Net": one_net(n, TASKS), "STN": stn(n, TASKS), "branched": branched(n)}
    print(
        f"backbone: {n} blocks, {backbone.macs / 1e9:.3f} GMac, {args.size}px; cpu_count={all_threads}; "
        f"median of {args.repeats} runs after {args.warmup} warm-up runs"
    )

    folder = args.out or Path(tempfile.mkdtemp(prefix="mtgraph_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    modules = {}
    for name, graph in archs.items():
        params = mtgraph.ParamStore.create(graph, backbone, heads)
        distinct(params)
        start = time.perf_counter()
        result = export_onnx(graph, params, folder / f"{name}.onnx")
        export_s = time.perf_counter() - start
        module = mtgraph.compile(graph, params).eval()
        modules[name] = module
        print(
            f"{name:>9}: {result.macs / 1e9:.3f} GMac, {result.params / 1e6:.2f} M params, "
            f"{result.initializer_bytes / 2**20:.1f} MiB of initializers, exported in {export_s:.1f} s "
            f"(max |diff| {result.worst_diff:.1e})"
        )
        for threads in thread_counts:
            torch.set_num_threads(threads)
            session = open_session(result.path, providers=["cpu"], threads=threads)
            for batch in args.batches:
                x = torch.randn(batch, 3, args.size, args.size)
                x_np = x.numpy()
                with torch.inference_mode():
                    ort, eager = timings_ms(
                        [lambda s=session, a=x_np: s.run(a), lambda m=module, a=x: m(a)], args.warmup, args.repeats
                    )
                rows.append((name, threads, batch, ort, eager))

    print()
    print(f"{'arch':>9} {'threads':>7} {'batch':>5} {'ORT ms':>9} {'torch ms':>9} {'torch/ORT':>9}   (median; min)")
    for name, threads, batch, ort, eager in rows:
        for label, k in (("median", 0), ("min", 1)):
            print(
                f"{name:>9} {threads:>7} {batch:>5} {ort[k]:>9.2f} {eager[k]:>9.2f} {eager[k] / ort[k]:>9.2f}   {label}"
            )

    print()
    print("branched net as one module vs the sum of its unique blocks (IR nodes) each run alone, torch eager")
    print(
        f"{'threads':>7} {'batch':>5} {'full ms':>9} {'sum ms':>9} {'full/sum':>9}   (median; min)  {'ORT median':>11}"
    )
    module = modules["branched"]
    ort_full = {(t, b): o[0] for name, t, b, o, _ in rows if name == "branched"}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size)
            with torch.inference_mode():
                full, *alone = timings_ms([lambda a=x: module(a), *call_sites(module, x)], args.warmup, args.repeats)
            for label, k in (("median", 0), ("min", 1)):
                total = sum(t[k] for t in alone)
                print(
                    f"{threads:>7} {batch:>5} {full[k]:>9.2f} {total:>9.2f} {full[k] / total:>9.2f}   {label:<14} "
                    f"{ort_full[(threads, batch)]:>11.2f}"
                )
    print(f"\nONNX files in {folder}")


if __name__ == "__main__":
    main()
