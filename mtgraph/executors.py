"""Run independent jobs one after another, in a local process pool, or on Ray.

The one executor behind the evaluation protocol's units and task grouping's
candidate trainings (:mod:`mtgraph.strategies.grouping.candidates`): a job function ``function(setup, job) -> result`` defined at module level, a
``setup`` that every job shares (pickled *once* and sent to each worker when
it starts) and small picklable jobs. Results come back in completion order
through ``on_result``; nothing with weights needs to cross a process
boundary when the jobs write their outputs to a shared folder.

* ``"sequential"``: in this process, in order (the setup is not pickled);
* ``"process"``: a pool of ``workers`` processes started with ``spawn`` (a
  script calling this must guard its entry point with ``if __name__ ==
  "__main__":``); each worker gets ``threads`` torch threads and
  ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets a policy (idle
  OpenMP threads then sleep instead of spinning on a shared core);
* ``"ray"``: one Ray task per job on the cluster ``ray.init()`` connects to
  (the optional package ``ray``).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mtgraph.errors import ConfigError, MTGraphError

__all__ = ["EXECUTORS", "run_jobs", "check_executor"]

#: How jobs run.
EXECUTORS = ("sequential", "process", "ray")

Job = TypeVar("Job")
Result = TypeVar("Result")

_WORKER: tuple[Callable[[Any, Any], Any], Any] | None = None


def check_executor(executor: str, workers: int) -> None:
    """Raise ConfigError for an unknown executor, a worker count below 1, or Ray missing.

    Examples:
        >>> from mtgraph.executors import check_executor
        >>> check_executor("process", 2)
        >>> check_executor("threads", 2)
        Traceback (most recent call last):
        ...
        mtgraph.errors.ConfigError: executor must be one of ['sequential', 'process', 'ray'], got 'threads'
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if executor == "ray":
        _import_ray()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "executor='ray' needs the optional package ray, which is not installed; install it with "
            "`pip install 'mtgraph[ray]'`, or use executor='process' (local processes) or 'sequential'"
        ) from exc
    return ray


def _pickled(setup: Any) -> bytes:
    try:
        return pickle.dumps(setup)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"executor 'process'/'ray' sends the shared setup (backbone, heads, tasks, datasets) to worker processes, "
            f"but it cannot be pickled ({type(exc).__name__}: {exc}); define models, datasets and task functions at "
            "module level (no lambdas or local classes), or use executor='sequential'"
        ) from exc


def _init_worker(function: Callable[[Any, Any], Any], blob: bytes, threads: int) -> None:
    global _WORKER
    import torch

    torch.set_num_threads(threads)
    _WORKER = (function, pickle.loads(blob))


def _worker_job(job: Any) -> Any:
    if _WORKER is None:  # pragma: no cover - the initializer always runs first
        raise ConfigError("internal error: a worker started without its setup")
    function, setup = _WORKER
    return function(setup, job)


def _ray_job(function: Callable[[Any, Any], Any], blob: bytes, job: Any, threads: int) -> Any:  # pragma: no cover
    import torch

    torch.set_num_threads(threads)
    return function(pickle.loads(blob), job)


def run_jobs(
    function: Callable[[Any, Job], Result],
    setup: Any,
    jobs: Sequence[Job],
    *,
    executor: str = "sequential",
    workers: int = 1,
    threads: int = 1,
    on_result: Callable[[Job, Result], None] | None = None,
) -> list[Result]:
    """Run ``function(setup, job)`` for every job; return the results in the order of ``jobs``.

    Args:
        function: a module-level function (it is sent to workers by reference).
        setup: what every job shares.
        jobs: the jobs.
        executor: ``"sequential"``, ``"process"`` or ``"ray"``.
        workers: processes of the ``"process"`` pool.
        threads: torch threads in each worker process or Ray task.
        on_result: called in this process with each job and its result as it finishes.

    Returns:
        One result per job, in the order of ``jobs``.

    Raises:
        ConfigError: an unknown executor, ray missing, an unpicklable setup, or a worker that died.
        MTGraphError: what a job raised (the first failure stops the run).

    Examples:
        >>> from mtgraph.executors import run_jobs
        >>> run_jobs(pow, 2, [3, 4, 5])
        [8, 16, 32]
    """
    check_executor(executor, workers)
    results: dict[int, Result] = {}

    def done(index: int, result: Result) -> None:
        results[index] = result
        if on_result is not None:
            on_result(jobs[index], result)

    if executor == "sequential" or not jobs:
        for index, job in enumerate(jobs):
            done(index, function(setup, job))
    elif executor == "process":
        _run_in_processes(function, setup, jobs, min(workers, len(jobs)), threads, done)
    else:  # pragma: no cover - needs ray
        _run_on_ray(function, setup, jobs, threads, done)
    return [results[i] for i in range(len(jobs))]


def _run_in_processes(
    function: Callable[[Any, Any], Any], setup: Any, jobs: Sequence[Any], workers: int, threads: int,
    done: Callable[[int, Any], None],
) -> None:
    blob = _pickled(setup)
    context = multiprocessing.get_context("spawn")
    # Spawned workers read the environment when they import torch: idle OpenMP threads should sleep, not spin.
    previous = os.environ.get("OMP_WAIT_POLICY")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(function, blob, threads)
        ) as pool:
            futures = {pool.submit(_worker_job, job): index for index, job in enumerate(jobs)}
            try:
                for future in concurrent.futures.as_completed(futures):
                    try:
                        result = future.result()
                    except MTGraphError:
                        raise
                    except concurrent.futures.process.BrokenProcessPool as exc:
                        raise ConfigError(f"a worker process died while running job {futures[future]}: {exc}") from exc
                    done(futures[future], result)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        if previous is None:
            os.environ.pop("OMP_WAIT_POLICY", None)


def _run_on_ray(
    function: Callable[[Any, Any], Any], setup: Any, jobs: Sequence[Any], threads: int, done: Callable[[int, Any], None]
) -> None:  # pragma: no cover - needs ray
    ray = _import_ray()
    blob = _pickled(setup)
    if not ray.is_initialized():
        ray.init()
    shared = ray.put(blob)
    task: Any = ray.remote(num_cpus=threads)(_ray_job)
    pending = {task.remote(function, shared, job, threads): index for index, job in enumerate(jobs)}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            index = pending.pop(ref)
            done(index, ray.get(ref))
