"""What an executor runs for one job: a config dict in, the run's result JSON out.

Datasets are loaded once per process and kept in a small cache keyed by (name, split seed):
a dataset with a fixed train/test split (MNIST, Fashion-MNIST) ignores the seed, the
others (``seeded_split`` in their spec) are split by the run's seed.
"""

from __future__ import annotations

import traceback
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from fedpoison.data import Dataset
from fedpoison.progress import BarFactory

#: ``runner(config, dataset) -> result JSON`` (default :func:`execute`).
Runner = Callable[[dict[str, Any], Dataset], dict[str, Any]]
#: ``loader(name, split_seed) -> Dataset`` (default :func:`load_dataset`).
Loader = Callable[[str, int], Dataset]

def dataset_key(config: Mapping[str, Any]) -> tuple[str, int]:
    """(dataset, split seed): runs with the same key share one loaded dataset (a dataset
    whose train/test split does not depend on the seed is loaded once)."""
    from fedpoison import registry

    name = str(config.get("dataset", "mnist"))
    seeded = registry.get("dataset", name).seeded_split
    return name, int(config.get("seed", 0)) if seeded else 0


def load_dataset(name: str, seed: int) -> Dataset:
    """The default loader: the data home, no download progress bar."""
    from fedpoison.data import load

    return load(name, seed=seed, progress=False)


#: The progress bar factory of the run the default runner executes (set by an executor that
#: shows each run's progress, e.g. the local one under a sweep's bar); None shows nothing.
RUN_PROGRESS: ContextVar[BarFactory | None] = ContextVar("fedpoison_run_progress",
                                                         default=None)


def execute(config: dict[str, Any], dataset: Dataset) -> dict[str, Any]:
    """The default runner: simulate the run and return ``RunResult.to_json()``."""
    from fedpoison.config import RunConfig
    from fedpoison.simulation import run

    progress = RUN_PROGRESS.get()
    return run(RunConfig.from_dict(config), dataset=dataset,
               progress=progress if progress is not None else False).to_json()


class DatasetCache:
    """The last ``size`` datasets loaded, by key (LRU)."""

    def __init__(self, loader: Callable[[Any], Dataset], size: int = 2) -> None:
        self._loader = loader
        self._size = size
        self._items: OrderedDict[Hashable, Dataset] = OrderedDict()

    def get(self, key: Hashable, arg: Any) -> Dataset:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        ds = self._loader(arg)
        self._items[key] = ds
        while len(self._items) > self._size:
            self._items.popitem(last=False)
        return ds


def synthetic_result(config: Mapping[str, Any], error: float, seconds: float = 0.0
                     ) -> dict[str, Any]:
    """A result JSON for ``config`` without running it: for engine tests and benchmarks."""
    from fedpoison import __version__
    from fedpoison.config import RunConfig

    cfg = RunConfig.from_dict(dict(config))
    resolved = cfg.resolved()
    return {
        "final_error": error, "final_loss": error, "best_error": error,
        "best_iteration": resolved.iterations, "curve": [[resolved.iterations, error]],
        "loss_curve": [[resolved.iterations, error]], "seconds": seconds, "timings": {},
        "config": resolved.to_dict(), "config_hash": cfg.config_hash(), "version": __version__,
    }


@dataclass(frozen=True)
class Job:
    """One run to execute: its store key and its config (a ``RunConfig.to_dict()``)."""

    key: str
    config: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """A finished job: ``result`` (the run's JSON) or ``error`` (a formatted traceback)."""

    job: Job
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 1


class Executor(ABC):
    """Runs jobs and yields their outcomes as they finish."""

    name: str = ""

    @abstractmethod
    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Yield one Outcome per job, in completion order."""

    def close(self) -> None:
        """Release workers (called once the sweep is done or interrupted)."""
        return None

    def describe(self) -> str:
        return self.name

    def show_progress(self, factory: BarFactory | None) -> None:
        """Show each run's own progress with ``factory`` where this executor can (the local
        one does; pools of other processes show only the sweep's bar)."""
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def call(runner: Runner, cache: DatasetCache, job: Job) -> Outcome:
    try:
        ds = cache.get(dataset_key(job.config), dataset_key(job.config))
        return Outcome(job, result=runner(job.config, ds))
    except Exception:  # reported per run; the sweep goes on with the others
        return Outcome(job, error=traceback.format_exc())
