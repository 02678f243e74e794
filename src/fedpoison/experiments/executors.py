"""Executors: where the runs of a sweep execute. Results always come back to the driver.

``local``   in this process, one run after another (the default).
``process`` a pool of worker processes on this machine (``--jobs N``, each with
            ``cores / N`` torch threads); a worker that dies gets its runs resubmitted, and
            the workers exit when the driver dies (even by SIGKILL).
``ray``     Ray tasks on a local instance or a cluster (``--address``): see
            :mod:`fedpoison.experiments.ray_executor`.

An executor turns jobs into :class:`Outcome` objects and yields them as runs finish, in
completion order; it never writes the store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fedpoison.errors import ConfigError
from fedpoison.experiments.worker import (
    RUN_PROGRESS,
    DatasetCache,
    Executor,
    Job,
    Loader,
    Outcome,
    Runner,
    call,
    execute,
    load_dataset,
)
from fedpoison.progress import BarFactory

__all__ = ["EXECUTORS", "Executor", "Job", "LocalExecutor", "Outcome", "ProcessExecutor",
           "make_executor"]

EXECUTORS = ("local", "process", "ray")


class LocalExecutor(Executor):
    """Runs in this process, one run at a time; datasets are loaded once."""

    name = "local"

    def __init__(self, runner: Runner = execute, loader: Loader = load_dataset) -> None:
        self._runner = runner
        self._cache = DatasetCache(lambda key: loader(*key))
        self._progress: BarFactory | None = None

    def show_progress(self, factory: BarFactory | None) -> None:
        self._progress = factory

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        for job in jobs:
            token = RUN_PROGRESS.set(self._progress)
            try:
                outcome = call(self._runner, self._cache, job)
            finally:
                RUN_PROGRESS.reset(token)
            yield outcome


# ------------------------------------------------------------------ process pool
_PROCESS_STATE: dict[str, Any] = {}


def _init_process(runner: Runner, loader: Loader, threads: int, driver: int) -> None:
    _exit_with_driver(driver)
    import torch

    torch.set_num_threads(threads)
    _PROCESS_STATE["runner"] = runner
    _PROCESS_STATE["cache"] = DatasetCache(lambda key: loader(*key))


def _exit_with_driver(driver: int) -> None:
    """Make this pool worker exit as soon as the driver process ``driver`` dies.

    A driver killed with SIGKILL cannot shut its pool down, and the workers would wait for
    work forever (each holding a dataset and torch, hundreds of MB), keeping the
    multiprocessing resource tracker alive with them. On Linux the kernel sends SIGKILL to
    the worker when its parent dies (``prctl(PR_SET_PDEATHSIG)``); everywhere, a daemon
    thread waits on the pipe to the parent that multiprocessing keeps open, which reaches
    end-of-file when the parent dies, and ends the process. The runs in flight are lost as
    with the driver; the store only ever holds finished runs. (The kernel signal follows the
    thread that started the worker: the pool is started by the thread iterating ``run``.)
    """
    import multiprocessing
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass  # no prctl: the watcher thread below still ends the worker
    if os.getppid() != driver:  # the driver died before the request above took effect
        os._exit(1)
    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)

    def watch() -> None:
        if sentinel is not None:
            from multiprocessing.connection import wait as wait_for

            wait_for([sentinel])
        else:  # no pipe to the parent: poll its pid
            import time

            while os.getppid() == driver:
                time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="fedpoison-driver-watch", daemon=True).start()


def _process_job(job: Job) -> Outcome:
    return call(_PROCESS_STATE["runner"], _PROCESS_STATE["cache"], job)


class ProcessExecutor(Executor):
    """A pool of ``jobs`` worker processes (spawned, so torch state is never forked).

    If a worker process dies (killed, out of memory), the pool breaks: the runs that were
    in flight are resubmitted to a fresh pool, each at most ``max_retries`` times.
    """

    name = "process"

    def __init__(self, jobs: int | None = None, *, max_retries: int = 3,
                 runner: Runner = execute, loader: Loader = load_dataset) -> None:
        cores = os.cpu_count() or 1
        self.jobs = jobs if jobs is not None else cores
        if self.jobs < 1:
            raise ConfigError("jobs", f"must be >= 1, got {self.jobs}")
        self.max_retries = max_retries
        self._args = (runner, loader, max(1, cores // self.jobs), os.getpid())
        self._pool: ProcessPoolExecutor | None = None

    def describe(self) -> str:
        return f"process pool of {self.jobs}"

    def _new_pool(self) -> ProcessPoolExecutor:
        import multiprocessing as mp

        return ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("spawn"),
                                   initializer=_init_process, initargs=self._args)

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        queue = list(jobs)[::-1]
        attempts: dict[str, int] = {}
        self._pool = self._new_pool()
        running: dict[Future[Outcome], Job] = {}
        while queue or running:
            # A few runs queued per worker: enough to stay busy, few to resubmit on a crash.
            while queue and len(running) < 8 * self.jobs:
                job = queue.pop()
                attempts[job.key] = attempts.get(job.key, 0) + 1
                running[self._pool.submit(_process_job, job)] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                job = running.pop(fut)
                try:
                    out = fut.result()
                except BrokenProcessPool:
                    broken = True
                    queue.append(job)
                    continue
                yield Outcome(out.job, out.result, out.error, attempts[job.key])
            if broken:
                # Every run still in flight is lost with the pool: resubmit them all.
                queue.extend(running.values())
                running.clear()
                self._pool.shutdown(wait=False, cancel_futures=True)
                for job in list(queue):
                    if attempts.get(job.key, 0) > self.max_retries:
                        queue.remove(job)
                        yield Outcome(job, error=f"worker process died {attempts[job.key]} "
                                                 "times running this job", attempts=attempts[
                                                     job.key])
                self._pool = self._new_pool()
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def make_executor(name: str, *, jobs: int | None = None, address: str | None = None,
                  max_retries: int = 3, runner: Runner = execute,
                  loader: Loader = load_dataset) -> Executor:
    """The executor called ``name`` (``local``, ``process`` or ``ray``)."""
    if name not in EXECUTORS:
        raise ConfigError("executor", f"got {name!r}; allowed: {', '.join(EXECUTORS)}")
    if address is not None and name != "ray":
        raise ConfigError("address", "only the ray executor takes an address")
    if max_retries < 0:
        raise ConfigError("max_retries", f"must be >= 0, got {max_retries}")
    if name == "local":
        if jobs not in (None, 1):
            raise ConfigError("jobs", "the local executor runs one job at a time; use "
                                      "--executor process or ray for more")
        return LocalExecutor(runner, loader)
    if name == "process":
        return ProcessExecutor(jobs, max_retries=max_retries, runner=runner, loader=loader)
    from fedpoison.experiments.ray_executor import RayExecutor

    return RayExecutor(address=address, num_cpus=jobs, max_retries=max_retries,
                       runner=runner, loader=loader)
