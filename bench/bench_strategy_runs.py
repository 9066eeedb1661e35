"""Whole strategy runs against One-Net training at the same number of epochs.

A user choosing between "train a One-Net" and "let a strategy learn the
architecture" pays the strategy's whole run. This script times, on one
Problem (``resnet_tiny`` on generated scenes, three dense tasks):

* **One-Net**: :func:`mtgraph.evaluation.retrain` of the One-Net for ``E``
  epochs (the protocol's :class:`~mtgraph.evaluation.Schedule`, batch 16);
* each strategy's ``learn`` with ``config_for(problem, E)``: the strategy's
  own schedule scaled to ``E`` epochs of the training set in all, in its
  paper's proportions. For MTSL that is the whole run (single-task
  networks, alignment, merging, fine-tuning); for AdaShare it is the policy
  search *and* the retraining of the sampled architecture (half of the
  epochs each, see ``AdaShareStrategy.config_for``).

"Equal task epochs": every task sees ``E`` epochs of the training set in
both runs, so the ratio is what the strategy costs over the One-Net it is an
alternative to. Targets (issue 22): MTSL run / One-Net <= 1.25, AdaShare
search + retrain / One-Net <= 1.8.

Runs are interleaved (one run of each per repeat, the order rotating every
repeat) and the median wall time of each is reported with its CPU time; the
load average is printed before and after. Every run starts from the
Problem's fresh weights, so repeats do the same work.

Usage::

    python bench/bench_strategy_runs.py                       # 3 repeats, E = 4, 512 scenes at 64 px, 1 thread
    python bench/bench_strategy_runs.py --quick               # a smoke run (32 px, 64 scenes, E = 1)
    python bench/bench_strategy_runs.py --strategies mtsl adashare smtl affinity
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _timing

_timing.add_paths()

import mtgraph  # noqa: E402
from mtgraph.evaluation import Schedule, retrain  # noqa: E402
from mtgraph.persist import atomic_write_bytes  # noqa: E402
from mtgraph.strategies import get_strategy  # noqa: E402
from mtgraph.strategies.protocol import replay  # noqa: E402
from mtgraph.workflow import scene_problem  # noqa: E402

TASKS = ("seg", "depth", "normals")

#: strategy -> target ratio to One-Net training (None: measured for information)
TARGETS: dict[str, float | None] = {"mtsl": 1.25, "adashare": 1.8, "smtl": None, "affinity": None, "grouping": None}


def runs(problem: mtgraph.Problem, epochs: float, strategies: list[str]) -> dict[str, Callable[[], object]]:
    """One callable per compared run, each training from the Problem's fresh weights."""
    schedule = Schedule(epochs=epochs, batch_size=16)

    def one_net() -> object:
        graph, params = replay(problem, "one_net", "")
        return retrain(problem, graph, params, schedule, seed=0)

    compared: dict[str, Callable[[], object]] = {"one_net": one_net}
    for name in strategies:
        strategy = get_strategy(name)
        config = strategy.config_for(problem, epochs)

        def learn(strategy: Any = strategy, config: Any = config) -> object:
            return strategy.learn(problem, config)
        compared[name] = learn
    return compared


def timed(compared: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds of every run, interleaved; the order rotates each repeat so no run always goes first."""
    names = list(compared)
    samples: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                # Short runs warn (AdaShare's undecided gates, a head still predicting one class): expected here.
                warnings.simplefilter("ignore")
                compared[name]()
            samples[name]["wall"].append(time.perf_counter() - wall)
            samples[name]["cpu"].append(time.process_time() - cpu)
            print(f"  repeat {r + 1}/{repeats}: {name} {samples[name]['wall'][-1]:.1f} s", flush=True)
    return samples


def main(argv: list[str] | None = None) -> int:
    """Time One-Net training and each strategy's whole run interleaved; print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", nargs="+", choices=list(TARGETS), default=["mtsl", "adashare"])
    parser.add_argument("--epochs", type=float, default=None, help="E, epochs of every run (default 4, --quick 1)")
    parser.add_argument("--train", type=int, default=None, help="training scenes (default 512, --quick 64)")
    parser.add_argument("--size", type=int, default=None, help="image size (default 64, --quick 32)")
    parser.add_argument("--width", type=int, default=16, choices=(4, 8, 16), help="resnet_tiny width (default 16)")
    _timing.common_arguments(parser, repeats=3, quick_repeats=1)
    parser.add_argument("--json", type=Path, default=None, help="write every sample to this JSON file")
    args = parser.parse_args(argv)
    epochs = args.epochs or (1.0 if args.quick else 4.0)
    train = args.train or (64 if args.quick else 512)
    size = args.size or (32 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 3)
    warmup = args.warmup or 0  # untimed rounds of every run (default none: a whole run is minutes)

    problem = scene_problem(TASKS, size=size, width=args.width, num_train=train, num_val=32)
    print(f"resnet_tiny(width={args.width}) at {size} px, tasks {', '.join(TASKS)}, {train} training scenes, "
          f"E = {epochs:g} epochs, batch 16")
    for threads in args.threads or [1]:
        print(f"load average before: {_timing.load()}; {threads} thread(s)")
        with _timing.threads(threads):
            compared = runs(problem, epochs, args.strategies)
            if warmup:
                timed(compared, warmup)
            report(timed(compared, repeats), epochs, repeats, threads, args.json)
    return 0


def report(samples: dict[str, dict[str, list[float]]], epochs: float, repeats: int, threads: int,
           json_path: Path | None) -> None:
    """Print the medians and their ratios to One-Net training; write the samples to ``json_path`` when given."""
    print(f"\n## whole runs at E = {epochs:g} epochs, {threads} thread(s) (median of {repeats} interleaved runs; "
          "wall and CPU seconds)")
    one_wall = statistics.median(samples["one_net"]["wall"])
    one_cpu = statistics.median(samples["one_net"]["cpu"])
    rows = []
    for name, s in samples.items():
        wall, cpu = statistics.median(s["wall"]), statistics.median(s["cpu"])
        target = TARGETS.get(name)
        rows.append([name, wall, cpu, wall / one_wall, cpu / one_cpu, "" if target is None else f"<= {target}"])
    print(_timing.table(["run", "wall s", "cpu s", "wall / One-Net", "cpu / One-Net", "target"], rows))
    print(f"(load average after the runs {_timing.load()})")
    if json_path is not None:
        path = json_path.with_name(f"{json_path.stem}-{threads}t{json_path.suffix}") if threads != 1 else json_path
        payload = {"epochs": epochs, "threads": threads, "samples": samples}
        atomic_write_bytes(path, json.dumps(payload, indent=1).encode())


if __name__ == "__main__":
    raise SystemExit(main())
