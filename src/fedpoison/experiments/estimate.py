"""How long a sweep will take here: a short measured calibration, extrapolated.

Runs of the same *shape* (dataset, model, workers, sampling, batch, local rounds, training
subset, rule and pre-aggregators, attack, defense, validation set: what sets the cost of one
iteration) cost the same per iteration. For each shape this module times, on this machine
and with this process's torch threads, ``prepare`` (the data split, the model, a data
attack's preparation) and a few iterations of ``Setup.step`` after a warm-up one, and one
evaluation; a run's estimate is then

    setup + preparation + iterations × per-iteration + evaluations × per-evaluation

plus each dataset's load time once. A data attack's long preparation (a back-gradient poison
set) is timed through its progress bar for a few steps and extrapolated to all of them, and
nothing it would cache is written. Nothing is stored, downloaded or printed.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fedpoison.experiments.worker import Job, dataset_key

#: Config fields that do not change what one iteration costs (the shape ignores them).
COST_FREE = ("seed", "iterations", "eval_every", "lr", "poison_fraction", "compromised", "f",
             "knowledge", "goal", "noniid", "split", "split_options", "attack_options")

HOUR = 3600.0


class _Extrapolated(Exception):
    """Raised by the calibration bar once a long preparation has been timed enough."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"{seconds:.1f} s")
        self.seconds = seconds


class _TimingBar:
    """A progress bar that times its steps and stops the work after ``steps`` of them."""

    def __init__(self, total: int | None = None, steps: int = 3, **_: Any) -> None:
        self.total = total or 0
        self.steps = steps
        self.times: list[float] = []

    def update(self, n: int = 1) -> None:
        self.times.append(time.perf_counter())
        if len(self.times) > self.steps and self.total > len(self.times):
            per_step = (self.times[-1] - self.times[0]) / (len(self.times) - 1)
            raise _Extrapolated(per_step * self.total)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass
class ShapeCost:
    """Measured costs of one shape (seconds) and the runs it stands for."""

    label: str
    setup: float
    preparation: float
    per_iteration: float
    per_evaluation: float
    runs: int = 0
    seconds: float = 0.0  # estimated total of its runs


@dataclass
class Estimate:
    """An estimated wall time for a list of jobs on this machine."""

    runs: int
    seconds: float
    calibration_seconds: float
    shapes: list[ShapeCost] = field(default_factory=list)
    loads: float = 0.0
    per_job: dict[str, float] = field(default_factory=dict)
    partial: bool = False  # stopped early: beyond ``stop_after`` already

    def describe(self, workers: int = 1) -> str:
        """One line: runs, estimated time, how it was measured."""
        total = self.seconds / max(1, workers)
        par = f" over {workers} parallel workers (rough: they share the cores)" \
            if workers > 1 else ""
        more = "more than " if self.partial else "≈ "
        return (f"estimate: {self.runs} runs, {more}{duration(total)} on this machine{par} "
                f"(calibrated {len(self.shapes)} run shape(s) in "
                f"{self.calibration_seconds:.1f} s)")


def duration(seconds: float) -> str:
    """'42 s', '3 min 5 s', '2 h 10 min'."""
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < HOUR:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {(s % 3600) // 60} min"


def shape_of(config: dict[str, Any]) -> str:
    """The key of a job's cost shape (its config without the cost-free fields)."""
    import json

    return json.dumps({k: v for k, v in config.items() if k not in COST_FREE},
                      sort_keys=True, default=str)


def estimate(jobs: Sequence[Job], *, iterations: int = 3,
             stop_after: float | None = None) -> Estimate:
    """Calibrate every shape of ``jobs`` and extrapolate (see the module docstring).

    ``iterations``: timed steps per shape after one warm-up step. ``stop_after``: stop
    calibrating once the estimate passes this many seconds (``Estimate.partial``).
    Raises :class:`~fedpoison.errors.DataError` when a dataset is not in the data home.
    """
    from fedpoison.data import load

    t0 = time.perf_counter()
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(shape_of(job.config), []).append(job)
    datasets: dict[tuple[str, int], Any] = {}
    loads = 0.0
    out = Estimate(runs=len(jobs), seconds=0.0, calibration_seconds=0.0)
    prepared: set[tuple[str, int]] = set()
    for shape_jobs in groups.values():
        first = shape_jobs[0]
        key = dataset_key(first.config)
        if key not in datasets:
            tic = time.perf_counter()
            datasets[key] = load(key[0], seed=key[1], download=False, progress=False)
            loads += time.perf_counter() - tic
        cost = _calibrate(first.config, datasets[key], iterations)
        for job in shape_jobs:
            seconds = _run_seconds(cost, job.config)
            seed_key = (shape_of(job.config), int(job.config.get("seed", 0)))
            if seed_key in prepared:  # a second run with the same seed reuses the cache
                seconds -= cost.preparation
            prepared.add(seed_key)
            out.per_job[job.key] = seconds
            cost.seconds += seconds
        cost.runs = len(shape_jobs)
        out.shapes.append(cost)
        out.seconds = loads + sum(s.seconds for s in out.shapes)
        if stop_after is not None and out.seconds > stop_after:
            out.partial = len(out.shapes) < len(groups)
            break
    out.loads = loads
    out.calibration_seconds = time.perf_counter() - t0
    return out


def _run_seconds(cost: ShapeCost, config: dict[str, Any]) -> float:
    from fedpoison.config import RunConfig

    cfg = RunConfig.from_dict(config).resolve()
    assert cfg.iterations is not None
    evaluations = math.ceil(cfg.iterations / cfg.eval_every)  # and always the last one
    return (cost.setup + cost.preparation + cfg.iterations * cost.per_iteration
            + evaluations * cost.per_evaluation)


def _calibrate(config: dict[str, Any], dataset: Any, iterations: int) -> ShapeCost:
    """Time prepare, 1 + ``iterations`` steps and one evaluation of ``config``."""
    from fedpoison import registry
    from fedpoison.config import RunConfig
    from fedpoison.simulation import PHASES, prepare

    cfg = RunConfig.from_dict(config).resolve()
    label = f"{cfg.dataset}/{cfg.model} {cfg.rule} ← {cfg.attack}" + (
        f" + {cfg.defense}" if cfg.defense != "none" else "")
    preparation = 0.0
    tic = time.perf_counter()
    try:
        setup = prepare(cfg, dataset, progress=_TimingBar)
    except _Extrapolated as e:  # a long data-attack preparation, timed for a few steps
        preparation = e.seconds
        attack = registry.get("attack", cfg.attack)
        assert attack.data
        clean = dataclasses.replace(cfg, attack="none", attack_options={}, knowledge=None,
                                    goal=None)
        tic = time.perf_counter()
        setup = prepare(RunConfig.from_dict(clean.to_dict()).resolve(), dataset)
    setup_seconds = time.perf_counter() - tic
    timings = dict.fromkeys(PHASES, 0.0)
    notes: dict[str, list[float]] = {}
    tic = time.perf_counter()
    w = setup.step(setup.w0, 1, notes, timings)  # warm-up: allocations, first-call costs
    times = [time.perf_counter() - tic]
    last = min(1 + iterations, cfg.iterations or 1)  # the run's own schedule has no more
    if last > 1:
        times = []
    for t in range(2, last + 1):
        tic = time.perf_counter()
        w = setup.step(w, t, notes, timings)
        times.append(time.perf_counter() - tic)
    tic = time.perf_counter()
    setup.task.evaluate(w)
    evaluation = time.perf_counter() - tic
    return ShapeCost(label, setup_seconds, preparation, statistics.median(times), evaluation)
