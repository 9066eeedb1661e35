"""Benchmark of the foundation: tracing, partitioning and compiling, and the compiled network's speed.

Three measurements:

1. ``trace`` (torch.fx trace + partition + shapes/MACs), ``ParamStore.create``
   and ``compile`` of a One-Net with three heads, for every test backbone of
   ``tests/backbones.py`` (wall-clock and CPU seconds, torch on 1 thread);
2. the same for a synthetic chain of 100, 300 and 1000 residual blocks, as
   time per block, to show that the frontend grows about linearly;
3. forward time of the compiled One-Net against the plain ``backbone`` then
   ``heads`` forward it replaces (the same weights), median over repeats after
   warm-up, with 1 thread and with all threads, in wall-clock and CPU time.
   The target is a ratio <= 1.02.

Run from the repository root::

    python bench/bench_foundation.py                # everything
    python bench/bench_foundation.py --quick        # fewer repeats, chains of 100 and 300
    python bench/bench_foundation.py --json out.json
    python bench/bench_foundation.py --only forward --repeats 100

Numbers depend on the machine and on its load: the script prints the load
average next to the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

_ROOT = Path(__file__).resolve().parent.parent
for _path in (_ROOT, _ROOT / "tests"):  # run from a checkout without installing
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import backbones  # noqa: E402

import mtgraph  # noqa: E402
from mtgraph.ir import one_net  # noqa: E402
from mtgraph.persist import atomic_write_bytes  # noqa: E402

TASKS = ("S", "E", "D")


def _load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # not available on every platform
        return "n/a"


def _seconds(fn: Callable[[], object]) -> tuple[float, float, object]:
    """Wall-clock and CPU seconds of ``fn()`` (CPU time is robust to other processes' load), and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def build(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Time trace, ParamStore.create and compile of a three-task One-Net (1 thread); check the chain is exact."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # building is Python-bound; extra threads only add scheduling noise
    try:
        t_trace, c_trace, backbone = _seconds(lambda: mtgraph.trace(model, x))
        heads = backbones.make_heads(backbone.output_shape, TASKS)
        graph = one_net(backbone.num_blocks, TASKS)
        t_store, c_store, store = _seconds(lambda: mtgraph.ParamStore.create(graph, backbone, heads))
        t_compile, c_compile, _ = _seconds(lambda: mtgraph.compile(graph, store))
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        exact = torch.equal(backbone(x), model(x))
    if not exact:
        raise SystemExit(f"the traced chain does not reproduce {type(model).__name__}: a bug")
    return {
        "blocks": backbone.num_blocks,
        "trace_s": t_trace,
        "store_s": t_store,
        "compile_s": t_compile,
        "total_s": t_trace + t_store + t_compile,
        "cpu_s": c_trace + c_store + c_compile,
    }


def bench_backbones() -> dict[str, dict[str, float]]:
    """Measurement 1: every test backbone."""
    print(f"\n## trace + partition + compile, every test backbone (3 tasks, One-Net)   load {_load()}")
    print(f"{'backbone':<24}{'blocks':>7}{'trace s':>10}{'store s':>10}{'compile s':>11}{'total s':>10}{'cpu s':>8}")
    results = {}
    for name, factory in backbones.ALL.items():
        model, x = factory()
        r = build(model, x)
        results[name] = r
        print(f"{name:<24}{r['blocks']:>7}{r['trace_s']:>10.3f}{r['store_s']:>10.3f}{r['compile_s']:>11.3f}"
              f"{r['total_s']:>10.3f}{r['cpu_s']:>8.3f}")
    return results


def bench_chains(sizes: list[int]) -> dict[int, dict[str, float]]:
    """Measurement 2: synthetic chains, time per block."""
    print(f"\n## synthetic chain of residual blocks: time per block   load {_load()}")
    print(f"{'blocks':>7}{'trace s':>10}{'store s':>10}{'compile s':>11}{'total s':>10}{'ms/block':>10}"
          f"{'cpu ms/block':>14}")
    results = {}
    for n in sizes:
        model, x = backbones.chain(n)
        r = build(model, x)
        r["ms_per_block"] = 1000 * r["total_s"] / n
        r["cpu_ms_per_block"] = 1000 * r["cpu_s"] / n
        results[n] = r
        print(f"{n:>7}{r['trace_s']:>10.3f}{r['store_s']:>10.3f}{r['compile_s']:>11.3f}{r['total_s']:>10.3f}"
              f"{r['ms_per_block']:>10.2f}{r['cpu_ms_per_block']:>14.2f}")
    return results


def _medians(fn: Callable[[], object], other: Callable[[], object], warmup: int, repeats: int) -> dict[str, float]:
    """Median wall and CPU milliseconds of ``fn`` and ``other``, interleaved so that load changes hit both alike.

    The two alternate which runs first, so that neither always meets the
    caches the other left behind.

    CPU time is the process's (all threads); with one torch thread it is the
    work done for the call, which other processes on the machine barely change.
    """
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    samples: dict[str, list[float]] = {f"{who}_{clock}": [] for who in ("plain", "compiled") for clock in clocks}
    with torch.no_grad():
        for _ in range(warmup):
            fn()
            other()
        for k in range(repeats):
            order = (("plain", fn), ("compiled", other))
            for who, call in order if k % 2 == 0 else order[::-1]:
                start = {clock: read() for clock, read in clocks.items()}
                call()
                for clock, read in clocks.items():
                    samples[f"{who}_{clock}"].append(read() - start[clock])
    return {f"{key}_ms": 1000 * statistics.median(values) for key, values in samples.items()}


def bench_forward(names: list[str], batch: int, warmup: int, repeats: int) -> dict[str, dict[str, float]]:
    """Measurement 3: compiled One-Net vs plain backbone + heads, 1 thread and all threads."""
    all_threads = torch.get_num_threads()
    print(f"\n## forward: compiled One-Net vs plain backbone + heads (batch {batch}, median of {repeats})"
          f"   load {_load()}")
    print(f"{'backbone':<24}{'threads':>8}{'plain ms':>10}{'compiled ms':>13}{'ratio':>8}"
          f"{'plain cpu ms':>14}{'compiled cpu ms':>17}{'cpu ratio':>11}")
    results = {}
    for name in names:
        model, x = backbones.ALL[name]()
        x = x[:1].expand(batch, *x.shape[1:]).contiguous()
        backbone = mtgraph.trace(model, x)
        heads = backbones.make_heads(backbone.output_shape, TASKS)
        graph = one_net(backbone.num_blocks, TASKS)
        net = mtgraph.compile(graph, mtgraph.ParamStore.create(graph, backbone, heads)).eval()

        def plain(model: nn.Module = model, heads: dict[str, nn.Module] = heads, x: torch.Tensor = x) -> dict:
            features = model(x)
            return {t: h(features) for t, h in heads.items()}

        def compiled(net: nn.Module = net, x: torch.Tensor = x) -> dict:
            return net(x)

        for threads in sorted({1, all_threads}):
            torch.set_num_threads(threads)
            r = _medians(plain, compiled, warmup, repeats)
            r["ratio"] = r["compiled_wall_ms"] / r["plain_wall_ms"]
            r["cpu_ratio"] = r["compiled_cpu_ms"] / r["plain_cpu_ms"]
            results[f"{name}/{threads}"] = r
            print(f"{name:<24}{threads:>8}{r['plain_wall_ms']:>10.3f}{r['compiled_wall_ms']:>13.3f}{r['ratio']:>8.3f}"
                  f"{r['plain_cpu_ms']:>14.3f}{r['compiled_cpu_ms']:>17.3f}{r['cpu_ratio']:>11.3f}")
        torch.set_num_threads(all_threads)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print (optionally save) the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and chains of 100 and 300 blocks only")
    parser.add_argument("--sizes", type=int, nargs="*", help="chain lengths (default 100 300 1000)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the forward comparison (default 8)")
    parser.add_argument("--repeats", type=int, help="timed repeats per forward measurement (default 50, quick 15)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--only", choices=["backbones", "chains", "forward"], nargs="*",
                        help="run only these measurements (default: all three)")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([100, 300] if args.quick else [100, 300, 1000])
    repeats = args.repeats or (15 if args.quick else 50)
    warmup = 3 if args.quick else 10
    forward_names = [n for n in ("resnet_basic", "mobilenet_v2", "vit_matmul", "convnext", "unet", "tv_resnet18",
                                 "tv_convnext_tiny") if n in backbones.ALL]
    print(f"mtgraph foundation benchmark: torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads")
    only = set(args.only or ["backbones", "chains", "forward"])
    results: dict[str, object] = {}
    if "backbones" in only:
        results["backbones"] = bench_backbones()
    if "chains" in only:
        results["chains"] = bench_chains(sizes)
    if "forward" in only:
        results["forward"] = bench_forward(forward_names, args.batch, warmup, repeats)
    results["load"] = _load()
    if args.json:
        atomic_write_bytes(args.json, json.dumps(results, indent=2).encode())
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
