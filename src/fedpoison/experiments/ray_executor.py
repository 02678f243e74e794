"""The Ray executor: each run is a Ray task; results stream back to the driver.

Without an address a local Ray instance is started (``--jobs`` CPUs, default all cores);
``--address auto`` joins the cluster this machine belongs to and ``ray://host:10001``
connects through Ray Client. The nodes need fedpoison installed, but no data home: the driver
loads each dataset once and puts it in Ray's object store, and every worker process keeps
the last datasets it fetched.

A task whose worker process dies (killed, out of memory, node lost) is retried by Ray up to
``max_retries`` times; an exception raised by the run itself is not retried (the same config
would raise again) and is reported as that run's error.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

from fedpoison.errors import ConfigError
from fedpoison.experiments.worker import (
    DatasetCache,
    Executor,
    Job,
    Loader,
    Outcome,
    Runner,
    dataset_key,
    execute,
    load_dataset,
)

_WORKER_CACHE: DatasetCache | None = None


def _fetch(ref_box: list[Any]) -> Any:
    import ray

    return ray.get(ref_box[0])


def _ray_run(runner: Runner, config: dict[str, Any], ref_box: list[Any]) -> dict[str, Any]:
    """Body of the Ray task. ``ref_box`` wraps the dataset's ObjectRef so that Ray does not
    fetch it before the call: a worker that already holds the dataset skips the transfer."""
    global _WORKER_CACHE
    if _WORKER_CACHE is None:
        _WORKER_CACHE = DatasetCache(_fetch)
    ds = _WORKER_CACHE.get(ref_box[0].hex(), ref_box)
    return runner(config, ds)


class RayExecutor(Executor):
    """Runs jobs as Ray tasks (1 CPU each) and yields outcomes as they finish."""

    name = "ray"

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None,
                 max_retries: int = 3, runner: Runner = execute,
                 loader: Loader = load_dataset) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("executor", "ray is not installed; pip install "
                                          "'fedpoison[ray]'") from None
        if address is not None and num_cpus is not None:
            raise ConfigError("jobs", "sets the CPUs of a local Ray instance; with --address "
                                      "the cluster's resources decide")
        if num_cpus is not None and num_cpus < 1:
            raise ConfigError("jobs", f"must be >= 1, got {num_cpus}")
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self._runner = runner
        self._loader = loader
        self._owns = False
        self._pending: list[Any] = []

    def describe(self) -> str:
        import ray

        where = self.address or "local instance"
        cpus = int(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else "?"
        return f"ray ({where}, {cpus} CPUs)"

    def connect(self) -> None:
        """Start or join Ray unless this process is already connected."""
        import ray

        if ray.is_initialized():
            return
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                   "logging_level": logging.WARNING}
        try:
            if self.address is not None:
                ray.init(address=self.address, **options)
            else:
                ray.init(num_cpus=self.num_cpus, **options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = self.address or "a new local instance"
            raise ConfigError("address", f"cannot start or reach Ray at {where}: {e}") from None
        self._owns = True

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        import ray

        self.connect()
        task = ray.remote(_ray_run).options(
            num_cpus=1, max_retries=self.max_retries, retry_exceptions=False
        )
        # Datasets go into the object store when first needed and are released after
        # their last job was submitted (jobs come grouped by dataset).
        remaining: dict[tuple[str, int], int] = {}
        for job in jobs:
            k = dataset_key(job.config)
            remaining[k] = remaining.get(k, 0) + 1
        refs: dict[tuple[str, int], Any] = {}
        window = 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        queue = list(jobs)[::-1]
        running: dict[Any, Job] = {}
        while queue or running:
            while queue and len(running) < window:
                job = queue.pop()
                k = dataset_key(job.config)
                if k not in refs:
                    refs[k] = ray.put(self._loader(*k))
                running[task.remote(self._runner, job.config, [refs[k]])] = job
                remaining[k] -= 1
                if remaining[k] == 0:
                    del refs[k]  # running tasks keep the object alive
            self._pending = list(running)
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                job = running.pop(ref)
                try:
                    yield Outcome(job, result=ray.get(ref))
                except ray.exceptions.RayTaskError as e:
                    yield Outcome(job, error=str(e))
                except ray.exceptions.RayError:
                    yield Outcome(job, error=traceback.format_exc(),
                                  attempts=self.max_retries + 1)
        self._pending = []

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            for ref in self._pending:
                ray.cancel(ref, force=True)
        self._pending = []
        if self._owns:
            ray.shutdown()
            self._owns = False
