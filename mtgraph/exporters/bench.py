"""``mtgraph bench``: inference latency of one architecture in every deployment form, side by side.

Variants (any subset, in this order):

* ``eager`` -- the compiled network (:func:`mtgraph.compile`) in torch, eval mode, no gradients;
* ``compiled`` -- the same under ``torch.compile`` (:func:`~mtgraph.exporters.inductor`);
* ``ort-fp32`` -- the exported float32 ONNX file in onnxruntime (CPU provider);
* ``ort-int8`` -- its static int8 quantisation in onnxruntime.

For every thread count and batch size the variants are timed round-robin
(one call of each per repeat, after warm-up calls), so that background load
hits all of them alike and their ratios stay meaningful on a shared machine;
each row reports the median. torch runs on ``torch.set_num_threads(n)``
threads and onnxruntime on ``intra_op_num_threads=n`` (one inter-op thread):
every side of a comparison uses the same ``n``, and the table prints it.
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtgraph.analysis.cost import cost
from mtgraph.compile import compile as compile_graph
from mtgraph.errors import ConfigError
from mtgraph.ir.graph import MTGraph
from mtgraph.params import ParamStore

__all__ = ["VARIANTS", "BenchRow", "BenchReport", "bench_architecture"]

#: Every variant :func:`bench_architecture` knows, in table order.
VARIANTS = ("eager", "compiled", "ort-fp32", "ort-int8")

#: Images drawn for int8 calibration when none are given (timing only: values do not change the speed).
_TIMING_CALIBRATION = 16


@dataclass(frozen=True)
class BenchRow:
    """The median latency of one variant at one thread count and batch size.

    Attributes:
        variant: one of :data:`VARIANTS`.
        runtime: ``"torch"`` or ``"onnxruntime"``.
        threads: the threads that runtime was given (torch intra-op, or onnxruntime intra-op).
        batch: images per call.
        median_ms: median milliseconds per call.
        ratio: the eager row's median divided by this one's (speed-up over eager; None without an eager row).
        gmacs: billions of multiply-accumulates per second (per-image MACs x batch / median).

    Examples:
        >>> from mtgraph.exporters import BenchRow
        >>> BenchRow("ort-fp32", "onnxruntime", 1, 1, 2.0, 2.5, 40.0).median_ms
        2.0
    """

    variant: str
    runtime: str
    threads: int
    batch: int
    median_ms: float
    ratio: float | None
    gmacs: float


@dataclass(frozen=True)
class BenchReport:
    """What :func:`bench_architecture` measured; ``str()`` is the table ``mtgraph bench`` prints.

    Attributes:
        rows: one :class:`BenchRow` per variant, thread count and batch.
        macs: multiply-accumulates per image of the architecture.
        repeats: timed calls per variant and setting (the median is reported).
        warmup: untimed calls before timing (and compilation for ``compiled``).
        load_before: the machine's 1/5/15-minute load average before timing ("n/a" where unknown).
        load_after: the same after timing.
        notes: remarks printed under the table (calibration used, fallbacks).

    Examples:
        >>> from mtgraph.exporters import BenchReport, BenchRow
        >>> report = BenchReport((BenchRow("eager", "torch", 1, 1, 4.0, 1.0, 10.0),
        ...                       BenchRow("ort-fp32", "onnxruntime", 1, 1, 2.0, 2.0, 20.0)), macs=40_000_000,
        ...                      repeats=20, warmup=3, load_before="0.50 0.40 0.30", load_after="0.60 0.40 0.30")
        >>> print(report)  # doctest: +NORMALIZE_WHITESPACE
        0.0400 GMac/image; median of 20 interleaved calls after 3 warm-up calls; load average 0.50 0.40 0.30 before, 0.60 0.40 0.30 after
        variant   runtime      threads  batch  median ms  x eager  GMac/s
        eager     torch              1      1      4.000     1.00    10.0
        ort-fp32  onnxruntime        1      1      2.000     2.00    20.0
    """

    rows: tuple[BenchRow, ...]
    macs: int
    repeats: int
    warmup: int
    load_before: str
    load_after: str
    notes: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        lines = [
            f"{self.macs / 1e9:.4f} GMac/image; median of {self.repeats} interleaved calls after {self.warmup} warm-up "
            f"calls; load average {self.load_before} before, {self.load_after} after"
        ]
        header = ("variant", "runtime", "threads", "batch", "median ms", "x eager", "GMac/s")
        cells = [header] + [
            (r.variant, r.runtime, str(r.threads), str(r.batch), f"{r.median_ms:.3f}",
             "-" if r.ratio is None else f"{r.ratio:.2f}", f"{r.gmacs:.1f}")
            for r in self.rows
        ]
        widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
        for c in cells:
            left = "  ".join(c[i].ljust(widths[i]) for i in range(2))
            right = "  ".join(c[i].rjust(widths[i]) for i in range(2, len(header)))
            lines.append(f"{left}  {right}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return {
            "macs": self.macs, "repeats": self.repeats, "warmup": self.warmup,
            "load_before": self.load_before, "load_after": self.load_after, "notes": list(self.notes),
            "rows": [r.__dict__ for r in self.rows],
        }


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _check(variants: Sequence[str], threads: Sequence[int], batches: Sequence[int], repeats: int, warmup: int) -> None:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ConfigError(f"unknown bench variants {unknown}; choose among {', '.join(VARIANTS)}")
    for name, values in (("threads", threads), ("batches", batches)):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ConfigError(f"{name} must be positive integers, got {list(values)}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be an integer >= 0, got {warmup!r}")


def _interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, float]:
    """Median ms of each function, called round-robin after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_architecture(
    graph: MTGraph,
    params: ParamStore,
    *,
    variants: Sequence[str] = VARIANTS,
    threads: Sequence[int] | None = None,
    batches: Sequence[int] = (1, 16),
    repeats: int = 20,
    warmup: int = 3,
    calibration: Iterable[Any] | None = None,
) -> BenchReport:
    """Median inference latency of ``graph`` in every form in ``variants``, per thread count and batch size.

    The float32 and int8 ONNX files are exported (parity-checked) into a
    temporary folder. int8 is calibrated on ``calibration`` (batches of
    training images); without it, on uniform random images, which is enough
    for timing (a note says so) but not for accuracy.

    Args:
        graph: the architecture.
        params: its weights.
        variants: a subset of :data:`VARIANTS`.
        threads: thread counts to measure (default: 1 and every core).
        batches: batch sizes to measure.
        repeats: timed calls per variant and setting.
        warmup: untimed calls first (they include ``torch.compile``'s compilation).
        calibration: int8 calibration batches (see :func:`~mtgraph.exporters.calibration_arrays`).

    Returns:
        A :class:`BenchReport`; ``str()`` of it is a table.

    Raises:
        ConfigError: an unknown variant or a bad count.
        ExportError: the ONNX export fails its checks.

    Examples:
        >>> import torch, mtgraph
        >>> from torch import nn
        >>> from mtgraph.exporters import bench_architecture
        >>> backbone = mtgraph.trace(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()), torch.randn(1, 3, 16, 16))
        >>> graph = mtgraph.one_net(backbone.num_blocks, ["S", "D"])
        >>> params = mtgraph.ParamStore.create(graph, backbone, {"S": nn.Conv2d(8, 2, 1), "D": nn.Conv2d(8, 1, 1)})
        >>> report = bench_architecture(graph, params, variants=["eager", "ort-fp32"], threads=[1], batches=[1],
        ...                             repeats=3, warmup=1)
        >>> [(row.variant, row.runtime, row.threads, row.batch) for row in report.rows]
        [('eager', 'torch', 1, 1), ('ort-fp32', 'onnxruntime', 1, 1)]
    """
    from mtgraph.exporters.inductor import torch_compile
    from mtgraph.exporters.onnx import export_onnx
    from mtgraph.exporters.runtime import open_session

    counts = sorted(set(threads)) if threads is not None else sorted({1, os.cpu_count() or 1})
    _check(list(variants), counts, list(batches), repeats, warmup)
    variants = [v for v in VARIANTS if v in variants]
    module = compile_graph(graph, params).eval()
    macs = cost(graph, params).total_macs
    shape = tuple(params.backbone.input_shape)
    notes: list[str] = []
    generator = torch.Generator().manual_seed(0)
    rows: list[BenchRow] = []
    before = torch.get_num_threads()
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="mtgraph-bench-") as folder:
        files: dict[str, Path] = {}
        if "ort-fp32" in variants:
            files["ort-fp32"] = export_onnx(graph, params, Path(folder) / "fp32.onnx").path
        if "ort-int8" in variants:
            if calibration is None:
                calibration = [torch.rand((_TIMING_CALIBRATION, *shape), generator=generator)]
                notes.append("int8 calibrated on uniform random images: right for timing, not for accuracy "
                             "(give calibration batches of training images to judge accuracy)")
            files["ort-int8"] = export_onnx(graph, params, Path(folder) / "int8.onnx", quantize="int8",
                                            calibration=calibration).path
        try:
            for n in counts:
                torch.set_num_threads(n)
                sessions = {v: open_session(path, providers="cpu", threads=n) for v, path in files.items()}
                compiled = None
                if "compiled" in variants:
                    torch._dynamo.reset()  # inductor's kernels take the thread count they were compiled with
                    compiled = torch_compile(module)
                for batch in batches:
                    x = torch.rand((batch, *shape), generator=generator)
                    array = np.ascontiguousarray(x.numpy())
                    fns: dict[str, Callable[[], object]] = {}
                    for v in variants:
                        if v == "eager":
                            fns[v] = functools.partial(module, x)
                        elif v == "compiled":
                            assert compiled is not None
                            fns[v] = functools.partial(compiled, x)
                        else:
                            fns[v] = functools.partial(sessions[v].run, array)
                    with torch.inference_mode():
                        medians = _interleaved(fns, max(warmup, 1 if compiled is not None else 0), repeats)
                    if compiled is not None and compiled.fallback_reason:
                        notes.append(f"compiled ran eagerly: {compiled.fallback_reason}")
                    eager = medians.get("eager")
                    for v in variants:
                        ms = medians[v]
                        rows.append(BenchRow(
                            v, "torch" if v in ("eager", "compiled") else "onnxruntime", n, batch, ms,
                            None if eager is None else eager / ms, macs * batch / (ms * 1e-3) / 1e9,
                        ))
        finally:
            torch.set_num_threads(before)
    return BenchReport(tuple(rows), macs, repeats, warmup, load_before, _load(), tuple(dict.fromkeys(notes)))
