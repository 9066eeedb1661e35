"""How building grows with the number of blocks and tasks: trace, partition, store, compile, pass pipeline, memory.

For the synthetic residual chain of ``tests/backbones.py`` (``chain(n)``), and
for the same chain with multi-tensor boundaries (``skip_chain(n)``: three
block outputs kept alive to the end, so boundaries carry up to four tensors,
as an encoder-decoder's decoder levels do):

* ``trace`` (torch.fx trace + partition + shapes/MACs) vs blocks;
* ``ParamStore.create`` + ``compile`` of the single-task networks (STN, the
  largest graph: blocks x tasks nodes) vs blocks and tasks;
* a pass pipeline (fuse every task at the first 10 blocks, then cse, dce,
  each verified by the pass manager) and the recompile, vs blocks and tasks;
* peak Python allocation of one full build (tracemalloc, measured in a run of
  its own because tracing allocations slows everything down) and the
  process's maximum resident set size so far (``resource.getrusage``).

Times are medians of ``--repeats`` builds after one warm-up build, with 1
thread and all threads (building is Python-bound: the two should agree).

A second section times what a user does first with a real network (the classifier as torchvision builds it):
``mtgraph.trace`` + ``ParamStore.create`` + ``mtgraph.compile`` of a
three-task One-Net on torchvision ``resnet50`` (random weights, 224 px, one
thread; target < 0.5 s), in wall-clock and CPU seconds (CPU seconds are what
other processes on a shared machine disturb least).

Usage::

    python bench/bench_scaling.py             # blocks 100 300 1000 (3 tasks), tasks 2 5 10 (100 blocks), resnet50
    python bench/bench_scaling.py --quick     # blocks 100 300, tasks 2 5, resnet50
    python bench/bench_scaling.py --model chain   # one of the two chains only
    python bench/bench_scaling.py --only resnet50 --repeats 10
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
import tracemalloc

import _timing

_timing.add_paths()

import backbones  # noqa: E402

import mtgraph  # noqa: E402
from mtgraph.ir import stn  # noqa: E402
from mtgraph.passes import CSEPass, DCEPass, FusePass, run_passes  # noqa: E402

FUSED_BLOCKS = 10


def task_names(count: int) -> tuple[str, ...]:
    return tuple(f"t{k}" for k in range(count))


#: The chains measured: name -> factory of ``(model, example input)`` for a block count.
MODELS = {"chain": backbones.chain, "skip_chain": backbones.skip_chain}


def build_once(blocks: int, tasks: int, model_name: str = "chain") -> dict[str, float]:
    """One full build; seconds of each stage."""
    model, x = MODELS[model_name](blocks)
    names = task_names(tasks)
    t0 = time.perf_counter()
    backbone = mtgraph.trace(model, x)
    t1 = time.perf_counter()
    heads = backbones.make_heads(backbone.output_shape, names)
    graph = stn(backbone.num_blocks, names)
    store = mtgraph.ParamStore.create(graph, backbone, heads)
    mtgraph.compile(graph, store)
    t2 = time.perf_counter()
    pipeline = [FusePass(tasks=names, block=b) for b in range(min(FUSED_BLOCKS, blocks))] + [CSEPass(), DCEPass()]
    result = run_passes(graph, store, pipeline)
    t3 = time.perf_counter()
    mtgraph.compile(result.graph, result.params)
    t4 = time.perf_counter()
    return {"trace": t1 - t0, "store+compile": t2 - t1, "passes": t3 - t2, "recompile": t4 - t3,
            "nodes": float(len(graph.nodes)), "arity": float(max(len(b.signature.outputs) for b in backbone.blocks))}


def build_resnet50(model: object, x: object) -> dict[str, float]:
    """trace + ParamStore.create + compile of a three-task One-Net on ``model``: wall and CPU seconds of each."""
    from torch import nn

    marks = [(time.perf_counter(), time.process_time())]
    backbone = mtgraph.trace(model, x)  # type: ignore[arg-type]
    marks.append((time.perf_counter(), time.process_time()))
    names = task_names(3)
    graph = mtgraph.one_net(backbone.num_blocks, names)
    store = mtgraph.ParamStore.create(graph, backbone, {t: nn.Linear(backbone.output_shape[0], 2) for t in names})
    marks.append((time.perf_counter(), time.process_time()))
    mtgraph.compile(graph, store)
    marks.append((time.perf_counter(), time.process_time()))
    out = {}
    for k, label in enumerate(("trace", "store", "compile")):
        out[f"{label} wall"] = marks[k + 1][0] - marks[k][0]
        out[f"{label} cpu"] = marks[k + 1][1] - marks[k][1]
    out["total wall"] = marks[-1][0] - marks[0][0]
    out["total cpu"] = marks[-1][1] - marks[0][1]
    return out


def resnet50_section(repeats: int) -> None:
    try:
        import torchvision
    except ImportError:
        print("\n## resnet50\nskipped: torchvision is not installed")
        return
    import torch

    model = torchvision.models.resnet50(weights=None)
    x = torch.randn(1, 3, 224, 224)
    _timing.header("trace + ParamStore.create + compile: torchvision resnet50, 224 px, One-Net of 3 tasks, 1 thread",
                   repeats, 1)
    with _timing.threads(1):
        build_resnet50(model, x)  # warm-up (imports, fx caches)
        runs = [build_resnet50(model, x) for _ in range(repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    rows = [[label, med[f"{label} wall"], med[f"{label} cpu"]] for label in ("trace", "store", "compile", "total")]
    print(_timing.table(["stage", "wall s", "cpu s"], rows))
    print(f"target: total < 0.5 s; minimum over the runs: {min(r['total wall'] for r in runs):.3f} s wall, "
          f"{min(r['total cpu'] for r in runs):.3f} s cpu (load average after the runs {_timing.load()})")


def peak_python_mib(blocks: int, tasks: int, model_name: str) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        build_once(blocks, tasks, model_name)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def max_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def main(argv: list[str] | None = None) -> int:
    """Measure every (blocks, tasks) point with every thread count and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _timing.common_arguments(parser, repeats=3, quick_repeats=1)
    parser.add_argument("--blocks", type=int, nargs="+", default=None, help="chain lengths at 3 tasks")
    parser.add_argument("--tasks", type=int, nargs="+", default=None, help="task counts at 100 blocks")
    parser.add_argument("--model", choices=sorted(MODELS), nargs="+", default=list(MODELS), help="chains to measure")
    parser.add_argument("--only", choices=("chains", "resnet50"), nargs="+", default=("chains", "resnet50"))
    args = parser.parse_args(argv)
    repeats, _ = _timing.resolve(args, 3, 1)
    if "resnet50" in args.only:
        resnet50_section(max(repeats, 5))
    if "chains" not in args.only:
        return 0
    blocks = args.blocks or ([100, 300] if args.quick else [100, 300, 1000])
    tasks = args.tasks or ([2, 5] if args.quick else [2, 5, 10])
    points = [(b, 3) for b in blocks] + [(100, t) for t in tasks if t != 3]
    _timing.header("build time vs blocks and tasks (seconds; builds run one after another)", repeats, 1)
    print(f"(pipeline: fuse all tasks at the first {FUSED_BLOCKS} blocks of the STN, cse, dce; "
          "STN graph = blocks x tasks block nodes)")
    print("(max live: the most tensors one boundary carries; skip_chain keeps 3 block outputs alive to its end)")
    rows = []
    for name in args.model:
        for b, t in points:
            peak = peak_python_mib(b, t, name)
            for threads in _timing.thread_counts(args.threads):
                with _timing.threads(threads):
                    build_once(min(b, 50), t, name)  # warm-up (imports, fx caches)
                    runs = [build_once(b, t, name) for _ in range(repeats)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                total = med["trace"] + med["store+compile"] + med["passes"] + med["recompile"]
                rows.append([name, b, t, int(med["arity"]), int(med["nodes"]), threads, med["trace"],
                             med["store+compile"], med["passes"], med["recompile"], total, 1e3 * total / b, peak,
                             max_rss_mib()])
    print(_timing.table(["model", "blocks", "tasks", "max live", "STN nodes", "threads", "trace", "store+compile",
                         "passes", "recompile", "total", "ms/block", "peak py MiB", "max RSS MiB"], rows))
    print(f"(load average after the runs {_timing.load()})")
    print("\n## GPU\nskipped: no GPU" if not _timing.has_gpu() else "\n## GPU\nbuilding runs on the CPU only")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
