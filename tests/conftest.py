"""Shared test set-up: makes ``from backbones import ...`` work and provides fixtures.

Fixtures:

* ``traced(name, cuts="auto")`` — a cached ``(model, example_input, Backbone)``
  for a backbone of :data:`backbones.ALL` (tracing each backbone once per
  session keeps the suite fast; tests must not modify what they get).
* ``tasks`` — the three task names used across tests: ``("S", "E", "D")``.

Tests run torch single-threaded: the models are tiny, so threads only add
scheduling overhead, and on a busy 2-core machine (CI, or teammates' jobs)
spinning worker threads made the suite several times slower.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

_TESTS = Path(__file__).resolve().parent
for _folder in (_TESTS, _TESTS / "scripts"):  # shared test modules: backbones, cli_models, train_run
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))
_ROOT = _TESTS.parent
if str(_ROOT) not in sys.path:  # run from any folder without installing the package
    sys.path.insert(0, str(_ROOT))

import backbones  # noqa: E402

import mtgraph  # noqa: E402

torch.set_num_threads(1)

#: Most pytest-xdist workers ``-n auto`` (pyproject.toml) starts: each holds torch and the test models, about 1 GB.
MAX_WORKERS = 8


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per core this process may run on, at most :data:`MAX_WORKERS`.

    xdist's own choice is every core of the machine, which on a large machine
    would start dozens of 1 GB workers. ``PYTEST_XDIST_AUTO_NUM_WORKERS``
    still wins (None hands the choice back to xdist, which reads it).
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_WORKERS, cores))


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Put torch back on one thread after every test.

    Library calls set the process's thread count (the thread policy of the
    demo, ``learn`` and ``evaluate`` picks 2 on an idle 2-core machine, 1 on a
    busy one): without this a later test would run with whatever an earlier one
    left, and results that depend on the thread count (a convolution's
    reduction order) would depend on test order and machine load.
    """
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


Traced = tuple[torch.nn.Module, torch.Tensor, mtgraph.Backbone]


@pytest.fixture(scope="session")
def traced() -> Callable[..., Traced]:
    """Return a function ``(name, cuts="auto") -> (model, example_input, backbone)``, cached per session."""
    cache: dict[tuple[str, str], Traced] = {}

    def get(name: str, cuts: str = "auto") -> Traced:
        key = (name, cuts)
        if key not in cache:
            model, x = backbones.ALL[name]()
            cache[key] = (model, x, mtgraph.trace(model, x, cuts=cuts))
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tasks() -> tuple[str, ...]:
    """The task names used across the foundation tests."""
    return ("S", "E", "D")
