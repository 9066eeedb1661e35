"""Shared helpers of the benchmark scripts: interleaved medians after warm-up, thread settings, load, GPU check.

Every script times the variants it compares *round-robin* (one call of each
per repeat) so that background load on a shared machine hits all of them
alike and their ratios stay meaningful, and reports the median over repeats
after warm-up calls that are not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def add_paths() -> None:
    """Put the checkout and ``tests/`` on ``sys.path`` so the scripts run without installing anything."""
    for path in (ROOT, ROOT / "tests"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def load() -> str:
    """The 1, 5 and 15 minute load averages as text ("n/a" where the platform has none)."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def all_threads() -> int:
    """The number of CPU cores torch may use."""
    return os.cpu_count() or 1


def thread_counts(requested: Sequence[int] | None) -> list[int]:
    """The thread counts to measure: the requested ones, else 1 and all cores."""
    return sorted(set(requested or (1, all_threads())))


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run torch's intra-op work on ``n`` threads inside the block, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def common_arguments(parser: argparse.ArgumentParser, repeats: int, quick_repeats: int) -> None:
    """Add ``--repeats``, ``--warmup``, ``--threads`` and ``--quick`` to a script's parser."""
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed repeats per measurement (default {repeats}, --quick {quick_repeats})")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up calls (default 5, --quick 2)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch thread counts to measure (default: 1 and all cores)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes (a smoke run)")


def resolve(args: argparse.Namespace, repeats: int, quick_repeats: int) -> tuple[int, int]:
    """(repeats, warm-up) from the parsed common arguments."""
    r = args.repeats if args.repeats is not None else (quick_repeats if args.quick else repeats)
    w = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    return r, w


def interleaved(fns: Mapping[str, Callable[[], object]], warmup: int, repeats: int,
                sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Per-call milliseconds of each function, timed round-robin after ``warmup`` untimed rounds.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before each clock read
    so that asynchronous devices are timed to completion.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if sync:
                sync()
            start = time.perf_counter()
            fn()
            if sync:
                sync()
            samples[name].append(1e3 * (time.perf_counter() - start))
    return samples


def medians(fns: Mapping[str, Callable[[], object]], warmup: int, repeats: int,
            sync: Callable[[], None] | None = None) -> dict[str, float]:
    """Median milliseconds of each function (see :func:`interleaved`)."""
    return {name: statistics.median(s) for name, s in interleaved(fns, warmup, repeats, sync).items()}


def has_gpu() -> bool:
    """Whether a CUDA device is usable."""
    return torch.cuda.is_available()


def cuda_medians(fns: Mapping[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, float]:
    """Median milliseconds of each function on the GPU, measured with CUDA events (round-robin)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    torch.cuda.synchronize()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end))
    return {name: statistics.median(s) for name, s in samples.items()}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain, right-aligned text table (floats with 3 significant decimals)."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[k]) for r in cells)) if cells else len(h) for k, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def header(title: str, repeats: int, warmup: int) -> None:
    """Print a section title with the load average and the timing protocol."""
    print(f"\n## {title}\n(median of {repeats} interleaved runs after {warmup} warm-up runs; "
          f"load average {load()}; {all_threads()} cores; torch {torch.__version__})")
