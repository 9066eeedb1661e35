"""Deployment speed and accuracy: torch eager vs onnxruntime float32 and int8, on trained multi-task networks.

For each model (``resnet_tiny`` at 64 px, torchvision ``resnet18`` and
``mobilenet_v3_small`` at 128 px) a One-Net with three dense tasks
(segmentation, depth, normals; the CLI's heads) is trained on generated
scenes, then exported with :func:`mtgraph.exporters.export_onnx` as float32
and as static int8 (calibrated on training images). The script prints

1. every task's metrics on held-out scenes for float32 (torch) and int8
   (onnxruntime), with the relative change of each task's primary metric
   (target: within 1 %);
2. the median latency of torch eager, onnxruntime float32 and int8 (and
   ``torch.compile`` with ``--compiled``), timed round-robin in one process,
   at each thread count and batch size, with ratios to eager and GMac/s;
3. one core's measured float32 peak (a large single-thread matrix product in
   torch) for scale;
4. with ``--formats``, QDQ against QOperator int8 on the same model.

Trained weights are kept in ``--cache`` (a saved architecture folder per
model, usable with ``mtgraph bench`` and ``mtgraph export``), so timing
reruns skip training.

Usage::

    python bench/bench_deploy.py --cache build/bench-deploy                 # all three models
    python bench/bench_deploy.py --models resnet_tiny --quick               # a smoke run
    nice -n 0 python bench/bench_deploy.py --cache build/bench-deploy --repeats 50 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import _timing
import numpy as np
import torch

_timing.add_paths()

import mtgraph  # noqa: E402
from mtgraph.data import SceneDataset  # noqa: E402
from mtgraph.exporters import QuantizationWarning, export_onnx, open_session  # noqa: E402
from mtgraph.exporters.inductor import torch_compile  # noqa: E402
from mtgraph.persist import load, save  # noqa: E402
from mtgraph.spec import ModelSpec, TaskSpec  # noqa: E402
from mtgraph.train import adam, fit  # noqa: E402

#: model name -> (backbone spec, image size)
MODELS = {
    "resnet_tiny": ("resnet_tiny", 64),
    "resnet18": ("torchvision:resnet18", 128),
    "mobilenet_v3_small": ("torchvision:mobilenet_v3_small", 128),
}
TASKS = ("seg", "depth", "normals")
CLASSES = 4  # scene object classes; segmentation has one more (background)


def spec_of(name: str, size: int | None) -> ModelSpec:
    backbone, default_size = MODELS[name]
    s = size or default_size
    seg_classes = SceneDataset(1, size=s, num_classes=CLASSES).config.seg_classes
    tasks = (TaskSpec("seg", "segmentation", {"num_classes": seg_classes}), TaskSpec("depth", "depth"),
             TaskSpec("normals", "normals"))
    return ModelSpec(backbone=backbone, input_shape=(3, s, s), tasks=tasks, seed=0)


def trained(name: str, args: argparse.Namespace) -> tuple[ModelSpec, Any, Any, dict[str, Any]]:
    """(spec, graph, params, tasks): trained now, or read back from the cache."""
    spec = spec_of(name, args.size)
    backbone = spec.build_backbone()
    tasks = spec.build_tasks()
    heads = spec.build_heads(backbone, tasks)
    folder = args.cache / f"{name}-{spec.input_shape[-1]}px-{args.steps}steps" if args.cache else None
    if folder is not None and (folder / "weights.safetensors").is_file():
        graph, params = load(folder, backbone, heads)
        print(f"{name}: trained weights read from {folder}")
        return spec, graph, params, tasks
    graph = mtgraph.one_net(backbone.num_blocks, list(tasks))
    params = mtgraph.ParamStore.create(graph, backbone, heads)
    data = SceneDataset(args.train, size=spec.input_shape[-1], seed=0, num_classes=CLASSES)
    start = time.perf_counter()
    result = fit(graph, params, tasks, data, steps=args.steps, batch_size=args.batch_size, optimizer=adam(1e-3),
                 seed=0, device="cpu", progress=False, phase=f"bench-{name}")
    print(f"{name}: trained {args.steps} steps (batch {args.batch_size}) in {time.perf_counter() - start:.0f} s, "
          f"last losses {({t: round(v, 3) for t, v in result.history.mean_losses(max(0, args.steps - 20)).items()})}")
    if folder is not None:
        save(result.graph, result.params, folder)
        spec.save(folder)
    return spec, result.graph, result.params, tasks


def peak_gmacs(seconds: float = 2.0) -> float:
    """One thread's float32 multiply-accumulate rate on a large matrix product (a practical peak)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    with _timing.threads(1):
        for _ in range(3):
            a @ b
        times = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
    return 1024**3 / min(times) / 1e9


def accuracy(name: str, spec: ModelSpec, graph: Any, params: Any, tasks: dict[str, Any], folder: Path,
             args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any]]:
    """Export float32 and int8; return both paths and the int8 metric comparison."""
    size = spec.input_shape[-1]
    train = SceneDataset(args.calibration, size=size, seed=0, num_classes=CLASSES)
    val = SceneDataset(args.val, size=size, seed=10_000, num_classes=CLASSES)
    calibration = [torch.stack([train[i][0] for i in range(k, min(k + 16, len(train)))]) for k in range(0, len(train), 16)]
    fp32 = export_onnx(graph, params, folder / f"{name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantizationWarning)  # reported below, with every number
        int8 = export_onnx(graph, params, folder / f"{name}.int8.onnx", quantize="int8", calibration=calibration,
                           eval_tasks=tasks, eval_data=val)
    report = int8.quantization
    assert report is not None
    changes = report.relative_changes()
    primary = {t: tasks[t].primary for t in tasks}
    print(f"\n### {name}: metrics on {args.val} held-out scenes, int8 calibrated on {args.calibration} training images")
    print(report.table())
    worst = {t: changes[t][primary[t]] for t in tasks}
    print("primary metrics, relative change int8 vs fp32: " + ", ".join(
        f"{t} {primary[t]} {100 * c:+.2f}%" for t, c in worst.items()))
    print(f"fp32 file: {fp32.optimization}, dynamic axes {fp32.dynamic_axes}, BatchNorm left {fp32.batchnorm_nodes}, "
          f"max |ORT - torch| {fp32.worst_diff:.1e}")
    return fp32.path, int8.path, {"metrics_fp32": report.metrics_fp32, "metrics_int8": report.metrics_low,
                                  "primary_change": worst, "output_error": report.output_error}


def timing(name: str, graph: Any, params: Any, fp32: Path, int8: Path, macs: int,
           args: argparse.Namespace) -> list[dict[str, Any]]:
    module = mtgraph.compile(graph, params).eval()
    shape = tuple(params.backbone.input_shape)
    rows = []
    for n in _timing.thread_counts(args.threads):
        sessions = {"ort-fp32": open_session(fp32, providers="cpu", threads=n),
                    "ort-int8": open_session(int8, providers="cpu", threads=n)}
        with _timing.threads(n):
            compiled = None
            if args.compiled:
                torch._dynamo.reset()
                compiled = torch_compile(module)
            for batch in args.batches:
                x = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(batch))
                array = x.numpy()
                fns = {"eager": lambda x=x: module(x)}
                if compiled is not None:
                    fns["compiled"] = lambda x=x, c=compiled: c(x)
                fns.update({k: (lambda s=s, a=array: s.run(a)) for k, s in sessions.items()})
                load_before = _timing.load()
                with torch.inference_mode():
                    samples = _timing.interleaved(fns, args.warmup, args.repeats)
                med = {k: statistics.median(v) for k, v in samples.items()}
                for k, ms in med.items():
                    rows.append({"model": name, "variant": k, "threads": n, "batch": batch, "median_ms": ms,
                                 "eager_over_this": med["eager"] / ms, "gmacs": macs * batch / ms / 1e6,
                                 "load": load_before})
    return rows


def load_time(name: str, graph: Any, params: Any, stored: Path, folder: Path, repeats: int) -> None:
    """Seconds to open a session: the stored full optimisation (nothing left to do) vs a portable file."""
    portable = export_onnx(graph, params, folder / f"{name}.basic.onnx", optimize="basic").path
    samples: dict[str, list[float]] = {"stored 'all'": [], "'basic' + optimised at load": []}
    for _ in range(repeats):
        for label, path in (("stored 'all'", stored), ("'basic' + optimised at load", portable)):
            start = time.perf_counter()
            open_session(path, providers="cpu", threads=1)
            samples[label].append(time.perf_counter() - start)
    print(f"{name}: open_session median of {repeats}: " + ", ".join(
        f"{label} {1e3 * statistics.median(v):.1f} ms" for label, v in samples.items()) + f" (load {_timing.load()})")


def formats(name: str, graph: Any, params: Any, folder: Path, batches: list[np.ndarray], args: argparse.Namespace) -> None:
    """QDQ vs QOperator int8 of the same float32 export, timed round-robin at 1 thread, batch 1.

    Both use mtgraph's settings (weights per channel in a 7-bit range, each output's last layer float32).
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mtgraph.exporters.onnx import quiet
    from mtgraph.exporters.optimize import optimize_onnx
    from mtgraph.exporters.quantize import _Reader, output_layers

    fp32 = export_onnx(graph, params, folder / f"{name}.plain.onnx", optimize="none").path
    prepared = folder / f"{name}.prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    keep = output_layers(onnx.load(str(prepared)))
    paths = {}
    for fmt in ("QDQ", "QOperator"):
        raw = folder / f"{name}.{fmt}.raw.onnx"
        with quiet():  # the quantiser logs a warning per integer shape tensor it leaves alone, as the export does
            quantize_static(str(prepared), str(raw), _Reader("input", batches), quant_format=getattr(QuantFormat, fmt),
                            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=keep)
        paths[fmt] = folder / f"{name}.{fmt}.onnx"
        optimize_onnx(raw, paths[fmt], "all")
    x = batches[0][:1]
    sessions = {fmt: open_session(p, providers="cpu", threads=1) for fmt, p in paths.items()}
    samples = _timing.interleaved({fmt: (lambda s=s: s.run(x)) for fmt, s in sessions.items()}, args.warmup,
                                  args.repeats)
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"{name}: int8 QDQ {med['QDQ']:.3f} ms, QOperator {med['QOperator']:.3f} ms "
          f"(QOperator / QDQ = {med['QOperator'] / med['QDQ']:.3f}; 1 thread, batch 1, load {_timing.load()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--size", type=int, default=None, help="image size for every model (default: per model)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 600, --quick 20)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train", type=int, default=2048, help="training scenes")
    parser.add_argument("--val", type=int, default=None, help="held-out scenes for metrics (default 256, --quick 32)")
    parser.add_argument("--calibration", type=int, default=64, help="training images for int8 calibration")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--compiled", action="store_true", help="also time torch.compile (minutes of compilation)")
    parser.add_argument("--formats", action="store_true", help="also time QDQ against QOperator int8")
    parser.add_argument("--no-timing", action="store_true", help="accuracy only (training, export, metrics)")
    parser.add_argument("--load-time", action="store_true", help="also time opening a session (stored vs portable)")
    parser.add_argument("--cache", type=Path, default=None, help="folder keeping the trained weights between runs")
    parser.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    _timing.common_arguments(parser, repeats=30, quick_repeats=5)
    args = parser.parse_args()
    args.repeats, args.warmup = _timing.resolve(args, 30, 5)
    args.steps = args.steps if args.steps is not None else (20 if args.quick else 600)
    args.val = args.val if args.val is not None else (32 if args.quick else 256)
    torch.set_num_threads(1)

    print(f"load average {_timing.load()}; {_timing.all_threads()} cores; torch {torch.__version__}; "
          f"cpu {mtgraph.exporters.cpu_family()}")
    peak = peak_gmacs()
    print(f"one core's float32 peak (1024^3 matrix product in torch, best of 2 s): {peak:.1f} GMac/s")
    results: dict[str, Any] = {"peak_gmacs": peak, "models": {}}
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mtgraph-bench-deploy-")))
        for name in args.models:
            spec, graph, params, tasks = trained(name, args)
            macs = mtgraph.cost(graph, params).total_macs
            fp32, int8, acc = accuracy(name, spec, graph, params, tasks, folder, args)
            results["models"][name] = {"gmac": macs / 1e9, **acc}
            if args.no_timing:
                continue
            _timing.header(f"{name}: latency ({macs / 1e9:.3f} GMac/image)", args.repeats, args.warmup)
            model_rows = timing(name, graph, params, fp32, int8, macs, args)
            print(_timing.table(
                ["variant", "threads", "batch", "median ms", "eager/this", "GMac/s", "% of peak", "load"],
                [(r["variant"], r["threads"], r["batch"], r["median_ms"], r["eager_over_this"], r["gmacs"],
                  100 * r["gmacs"] / (peak * r["threads"]), r["load"]) for r in model_rows]))
            rows += model_rows
            if args.load_time:
                load_time(name, graph, params, fp32, folder, max(5, args.repeats // 3))
            if args.formats:
                train = SceneDataset(args.calibration, size=spec.input_shape[-1], seed=0, num_classes=CLASSES)
                batches = [torch.stack([train[i][0] for i in range(k, min(k + 16, len(train)))]).numpy()
                           for k in range(0, len(train), 16)]
                formats(name, graph, params, folder, batches, args)
    results["rows"] = rows
    print(f"\nload average at the end {_timing.load()}")
    if args.json:
        from mtgraph.persist import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(results, indent=2).encode())


if __name__ == "__main__":
    main()
