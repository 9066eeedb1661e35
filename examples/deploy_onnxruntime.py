"""Deploy an exported network with onnxruntime: one session, one output per task, provider choice.

Run after ``mtgraph demo --quick --out demo``:
``python examples/deploy_onnxruntime.py demo/model.onnx``. With
onnxruntime-gpu installed (instead of onnxruntime) and a GPU present,
``--providers auto`` picks TensorRT, then CUDA, then the CPU; a requested
provider that is missing falls back with one warning.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from mtgraph.exporters.runtime import open_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an ONNX file written by mtgraph (export or demo)")
    parser.add_argument("--providers", default="auto", help="auto, or comma-separated: tensorrt,cuda,cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own choice)")
    args = parser.parse_args()

    providers = "auto" if args.providers == "auto" else args.providers.split(",")
    session = open_session(args.model, providers=providers, threads=args.threads)
    print(f"providers: {session.providers}; input {session.input_name} {session.input_shape}; tasks {session.tasks}")

    # Height and width may be dynamic; the traced size is in the file's metadata (as is the normalisation, if any).
    traced = [int(d) for d in session.metadata.get("input_shape", "").split(",") if d]
    shape = [args.batch, *traced] if traced else [args.batch if d is None else d for d in session.input_shape]
    print(f"dynamic axes: {session.dynamic_axes}; input normalisation: {session.normalization}")
    images = np.random.default_rng(0).random(shape, dtype=np.float32)
    outputs = session.run(images)
    for task, value in outputs.items():
        print(f"{task:>12}: {list(value.shape)} mean {float(value.mean()):+.4f}")

    # Per-task deployment: a session can return only the tasks a caller needs.
    first = session.tasks[0]
    only = session.run(images, tasks=[first])
    print(f"only {first!r}: {list(only)}")

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        session.run(images)
        times.append(time.perf_counter() - start)
    print(f"median latency at batch {args.batch}: {statistics.median(times) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
