"""Training steps at 1 and 2 torch threads, with and without one other busy process, two OpenMP wait policies.

Why mtgraph.threads exists: on a 2-core machine, a 2-thread pool whose
threads spin while waiting (OpenMP's default) crawls as soon as another
process takes one core. Each configuration runs in a fresh subprocess (the
OpenMP wait policy is read when torch is imported) that trains One-Net on the
demo's backbone and tasks for ``--steps`` steps after a warm-up; the "busy"
rows start one ``while True: pass`` process first. Prints the median wall
time per configuration and its ratio to 1 thread without a neighbour.

    python bench/bench_threads.py [--steps 16] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

_CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, {root!r})
from mtgraph.ir.builders import one_net
from mtgraph.params import ParamStore
from mtgraph.train import fit
from mtgraph.workflow import scene_problem
torch.set_num_threads({threads})
problem = scene_problem(size=32, width=4, num_train=64, num_val=4)
graph = one_net(problem.backbone.num_blocks, problem.task_names)
params = ParamStore.create(graph, problem.backbone, problem.heads)
fit(graph, params, problem.tasks, problem.train_data, steps=2, batch_size=16, progress=False)
start = time.perf_counter()
fit(graph, params, problem.tasks, problem.train_data, steps={steps}, batch_size=16, progress=False, seed=1)
print(json.dumps(time.perf_counter() - start))
"""


def run_once(threads: int, policy: str | None, busy: bool, steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(0.2 if busy else 0.0)
        code = _CHILD.format(root=str(_timing.ROOT), threads=threads, steps=steps)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return float(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 steps, 1 repeat")
    args = parser.parse_args()
    steps, repeats = (4, 1) if args.quick else (args.steps, args.repeats)
    configs = [(t, p, b) for b in (False, True) for t in (1, 2) for p in (None, "PASSIVE")]
    times: dict[tuple[int, str | None, bool], list[float]] = {c: [] for c in configs}
    print(f"## {steps} One-Net training steps (demo backbone, 5 tasks, batch 16), median of {repeats}   "
          f"load {_timing.load()}")
    for _ in range(repeats):  # round-robin: background load hits every configuration alike
        for config in configs:
            times[config].append(run_once(*config, steps))
    base = statistics.median(times[(1, None, False)])
    rows = []
    for threads, policy, busy in configs:
        median = statistics.median(times[(threads, policy, busy)])
        rows.append((threads, policy or "default (spin)", "one busy process" if busy else "none", f"{median:.2f}",
                     f"{median / base:.2f}x"))
    print(_timing.table(("threads", "OMP_WAIT_POLICY", "neighbour", "seconds", "vs 1 thread alone"), rows))


if __name__ == "__main__":
    main()
