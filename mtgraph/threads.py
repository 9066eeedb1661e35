"""How many torch threads a training job should use on a machine it may share.

torch's CPU kernels run on an OpenMP thread pool whose threads, between
parallel regions, spin on their core waiting for the next one. When another
process holds one of those cores, every parallel region waits for a thread
that is not running: on 2 cores with one other busy process, a 2-thread pool
measured 8-10x slower than a single thread (BENCHMARKS.md, "Thread policy").
One thread per core that is actually free avoids it.

:func:`choose_threads` picks that number: the cores this process may use,
minus the cores other processes keep busy (measured from ``/proc/stat`` over
a short interval, or since the last measurement of a :class:`CpuMonitor`),
rounded, at least one (under ``torchrun``, the cores divided among the
job's processes on the machine). An explicit request (``--threads``) or an
``OMP_NUM_THREADS`` set by the user wins. The ``demo``, ``learn`` and
``evaluate`` commands apply the choice and print it; ``evaluate`` measures
again before every unit, so a neighbour that starts later is seen at the next unit.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from mtgraph.errors import ConfigError

__all__ = ["ThreadChoice", "CpuMonitor", "available_cores", "choose_threads", "apply_threads"]


@dataclass(frozen=True)
class ThreadChoice:
    """A torch thread count and why it was chosen.

    Attributes:
        threads: the number of torch threads.
        cores: the cores this process may run on.
        busy: cores other processes kept busy when measured (None: not measured).
        reason: what decided it, in words.

    Examples:
        >>> from mtgraph.threads import ThreadChoice
        >>> ThreadChoice(1, 2, 1.0, "2 cores, 1.0 busy with other processes").describe()
        'torch threads: 1 (2 cores, 1.0 busy with other processes)'
    """

    threads: int
    cores: int
    busy: float | None
    reason: str

    def describe(self) -> str:
        """One line for the command line's output."""
        return f"torch threads: {self.threads} ({self.reason})"


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one).

    Examples:
        >>> from mtgraph.threads import available_cores
        >>> available_cores() >= 1
        True
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _snapshot() -> tuple[float, float, float] | None:
    """(wall seconds, CPU seconds all processes were busy, CPU seconds of this process), or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 8:
        return None
    values = [int(v) for v in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already in user.
    busy = sum(values[:3]) + sum(values[5:8])
    return time.monotonic(), busy / ticks, time.process_time()


class CpuMonitor:
    """How many cores *other* processes kept busy since the last reading.

    It reads the machine's busy CPU time (``/proc/stat``) and subtracts this
    process's own, so it can be read right after a training step without
    counting the step. Off Linux every reading is None.

    Examples:
        >>> import time
        >>> from mtgraph.threads import CpuMonitor
        >>> monitor = CpuMonitor()
        >>> time.sleep(0.05)
        >>> busy = monitor.busy_others()
        >>> busy is None or busy >= 0
        True
    """

    def __init__(self) -> None:
        self._last = _snapshot()

    def busy_others(self) -> float | None:
        """Cores busy with other processes, averaged since the previous reading (or construction)."""
        now = _snapshot()
        previous, self._last = self._last, now
        if now is None or previous is None or now[0] - previous[0] <= 0:
            return None
        others = (now[1] - previous[1]) - (now[2] - previous[2])
        return max(0.0, others / (now[0] - previous[0]))


def _requested(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be an integer >= 1, got {value!r}")
    return value


def choose_threads(
    requested: int | None = None, *, monitor: CpuMonitor | None = None, sample_seconds: float = 0.2
) -> ThreadChoice:
    """The torch thread count for a job starting now (see the module docstring).

    Args:
        requested: an explicit count (``--threads``); it wins.
        monitor: read the load since this monitor's last reading instead of
            sampling now (no waiting).
        sample_seconds: how long to sample the load without a monitor.

    Returns:
        The :class:`ThreadChoice`.

    Raises:
        ConfigError: ``requested`` is not an integer >= 1.

    Examples:
        >>> from mtgraph.threads import choose_threads
        >>> choose_threads(3).threads, choose_threads(3).reason
        (3, 'asked for')
        >>> 1 <= choose_threads(sample_seconds=0.05).threads
        True
    """
    cores = available_cores()
    if requested is not None:
        return ThreadChoice(_requested(requested, "threads"), cores, None, "asked for")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return ThreadChoice(int(env), cores, None, f"OMP_NUM_THREADS={env} is set")
    if cores == 1:
        return ThreadChoice(1, 1, None, "1 core")
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    if local.isdigit() and int(local) > 1:  # torchrun: the job's processes on this machine share the cores
        return ThreadChoice(max(1, cores // int(local)), cores, None, f"{cores} cores shared by {local} torchrun processes")
    if monitor is None:
        monitor = CpuMonitor()
        time.sleep(sample_seconds)
    busy = monitor.busy_others()
    if busy is None and hasattr(os, "getloadavg"):
        busy = max(0.0, os.getloadavg()[0])  # a slower signal where /proc/stat is missing
    if busy is None:
        return ThreadChoice(cores, cores, None, f"{cores} cores, load unknown")
    threads = max(1, min(cores, math.floor(cores - busy + 0.5)))
    return ThreadChoice(threads, cores, busy, f"{cores} cores, {busy:.1f} busy with other processes")


def apply_threads(choice: ThreadChoice) -> ThreadChoice:
    """Set torch's intra-op thread count to ``choice.threads``; return the choice.

    Examples:
        >>> import torch
        >>> from mtgraph.threads import ThreadChoice, apply_threads
        >>> before = torch.get_num_threads()
        >>> _ = apply_threads(ThreadChoice(1, 2, None, "asked for"))
        >>> torch.get_num_threads()
        1
        >>> torch.set_num_threads(before)
    """
    import torch

    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    return choice
