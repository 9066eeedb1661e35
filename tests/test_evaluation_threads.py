"""The thread policy: one torch thread per core other processes leave idle; explicit requests and the environment win."""

from __future__ import annotations

import pytest

import mtgraph.threads as threads
from mtgraph.cli import build_parser
from mtgraph.errors import ConfigError


class FixedLoad:
    """A stand-in for CpuMonitor whose reading is given (the policy's input, without measuring the machine)."""

    def __init__(self, busy: float | None) -> None:
        self.busy = busy

    def busy_others(self) -> float | None:
        return self.busy


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    for name in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("busy", "expected"), [(0.0, 2), (0.3, 2), (0.6, 1), (1.0, 1), (2.0, 1), (5.0, 1)])
def test_one_thread_per_idle_core(two_cores: None, busy: float, expected: int) -> None:
    choice = threads.choose_threads(monitor=FixedLoad(busy))  # type: ignore[arg-type]
    assert choice.threads == expected
    assert choice.reason == f"2 cores, {busy:.1f} busy with other processes"


def test_an_explicit_request_and_the_environment_win(two_cores: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert threads.choose_threads(3, monitor=FixedLoad(2.0)).threads == 3  # type: ignore[arg-type]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    choice = threads.choose_threads(monitor=FixedLoad(0.0))  # type: ignore[arg-type]
    assert (choice.threads, choice.reason) == (1, "OMP_NUM_THREADS=1 is set")
    with pytest.raises(ConfigError, match="threads must be an integer >= 1, got 0"):
        threads.choose_threads(0)


def test_torchrun_processes_share_the_cores(two_cores: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    choice = threads.choose_threads(monitor=FixedLoad(0.0))  # type: ignore[arg-type]
    assert choice.threads == 1 and "2 torchrun processes" in choice.reason


def test_an_unknown_load_keeps_every_core(two_cores: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(threads.os, "getloadavg", raising=False)
    assert threads.choose_threads(monitor=FixedLoad(None)).threads == 2  # type: ignore[arg-type]


def test_the_monitor_does_not_count_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # Machine busy time grows by 3 CPU-seconds in 2 s, this process's by 1: others kept 1 core busy.
    readings = iter([(100.0, 50.0, 10.0), (102.0, 53.0, 11.0)])
    monkeypatch.setattr(threads, "_snapshot", lambda: next(readings))
    monitor = threads.CpuMonitor()
    assert monitor.busy_others() == pytest.approx(1.0)


@pytest.mark.parametrize("command", ["demo", "learn", "evaluate"])
def test_demo_learn_and_evaluate_take_threads(command: str) -> None:
    args = build_parser().parse_args([command, "--threads", "2"])
    assert args.threads == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--threads", "0"])
