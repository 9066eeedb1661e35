"""Run a tiny evaluation (``mtgraph.evaluate``); the protocol tests run it in a subprocess and interrupt it.

It is also imported by those tests for its builders, so every run evaluates
exactly the same problem with the same settings:

* :func:`tiny_problem`: generated scenes, the built-in ResNet at width 4
  (width-scalable), three tasks, 8 training and 4 validation images;
* :class:`FixedTreeStrategy`: a test double of a strategy that "learns" one
  fixed tree (after one short ``fit`` call, so its run checkpoints like a
  real one) and draws random trees through MTSL's sampler: the structure,
  and hence every unit, is known in advance.

Examples::

    python tests/scripts/evaluation_run.py --out OUT
    python tests/scripts/evaluation_run.py --out OUT --kill-after-units 3   # SIGKILLs itself before unit 4
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

if __name__ == "__main__" and __package__ is None:
    # Run as a file from a source checkout: import the checkout's mtgraph.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import mtgraph  # noqa: E402
from mtgraph.evaluation import Evaluation, Schedule  # noqa: E402
from mtgraph.strategies import registry  # noqa: E402
from mtgraph.strategies.protocol import Architecture  # noqa: E402
from mtgraph.strategies.random_trees import tree_pipeline  # noqa: E402
from mtgraph.strategies.result import Decision, StrategyResult  # noqa: E402
from mtgraph.train import fit  # noqa: E402
from mtgraph.workflow import scene_problem  # noqa: E402

TASKS = ("seg", "depth", "edges")
#: What the test double learns: every task shares blocks 0-4, seg and edges share 5-6, all split from block 7.
TREE = [[TASKS]] * 5 + [[("seg", "edges"), ("depth",)]] * 2 + [[("seg",), ("depth",), ("edges",)]] * 2
SETTINGS: dict[str, Any] = {"seeds": 2, "randoms": 2, "schedule": Schedule(epochs=1, batch_size=8)}
CLUSTERS = (("seg", "edges"), ("depth",))


def tiny_problem() -> mtgraph.Problem:
    return scene_problem(TASKS, size=32, width=4, num_train=8, num_val=4)


@dataclass(frozen=True)
class FixedConfig:
    steps: int = 1
    device: str | None = None


class FixedTreeStrategy:
    """A strategy whose result is known: :data:`TREE`, trained for ``steps`` steps."""

    name: ClassVar[str] = "fixed-tree"
    paper: ClassVar[str] = "a test double"
    search_space: ClassVar[str] = "trees over the backbone's blocks"
    config_type: ClassVar[type] = FixedConfig
    uses_budget: ClassVar[bool] = False

    def config_for(self, problem: mtgraph.Problem, epochs: float) -> FixedConfig:
        return FixedConfig()

    def learn(self, problem: mtgraph.Problem, config: FixedConfig | None = None, budget: Any = None, *,
              progress: bool = False) -> StrategyResult:
        config = config or FixedConfig()
        arch = Architecture.build(problem, "stn", tree_pipeline(problem, TREE))
        trained = fit(arch.graph, arch.params, problem.tasks, problem.train_data, steps=config.steps, batch_size=8,
                      seed=problem.seed, phase="fixed-tree", progress=False)
        decision = Decision("block 5", "split depth from seg+edges", True, "fixed by the test double")
        return StrategyResult(self.name, trained.graph, trained.params, (decision,), arch.pipeline, start="stn")

    def sample_random(self, problem: mtgraph.Problem, rng: random.Random, budget: Any = None) -> Architecture:
        return registry()["mtsl"].sample_random(problem, rng, budget)

    def architecture(self, problem: mtgraph.Problem, result: StrategyResult) -> Architecture:
        return registry()["mtsl"].architecture(problem, result)


def run(out: Path, kill_after_units: int | None = None, **overrides: Any) -> Evaluation:
    """Evaluate the test double on :func:`tiny_problem`; SIGKILL this process before unit ``kill_after_units + 1``."""
    if kill_after_units is not None:
        import mtgraph.evaluation.units as units

        real = units.retrain
        calls = {"n": 0}

        def retrain_then_die(*args: Any, **kwargs: Any) -> Any:
            if calls["n"] == kill_after_units:
                os.kill(os.getpid(), signal.SIGKILL)
            calls["n"] += 1
            return real(*args, **kwargs)

        units.retrain = retrain_then_die  # type: ignore[assignment]
    settings = {**SETTINGS, "clusters": CLUSTERS, **overrides}
    return mtgraph.evaluate(FixedTreeStrategy(), tiny_problem(), out=out, **settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--kill-after-units", type=int, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    run(Path(args.out), args.kill_after_units)
    return 0


if __name__ == "__main__":
    sys.exit(main())
