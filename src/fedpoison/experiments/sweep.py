"""The sweep driver: plan a spec, skip stored runs, execute the rest, store each as it ends.

The driver is the only writer of the store. Each finished run is committed on arrival, so an
interrupted sweep (Ctrl-C, ``kill -9``, power loss) resumes where it stopped when run again:
runs that were stored are skipped, runs that were in flight are run again.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedpoison.experiments.executors import Executor, Job
from fedpoison.experiments.spec import SweepSpec
from fedpoison.experiments.store import ResultStore
from fedpoison.experiments.worker import dataset_key


@dataclass
class SweepOutcome:
    """What one invocation of a sweep did."""

    name: str
    planned: int  # distinct runs in the plan
    skipped: int  # already in the store
    stored: int = 0  # stored by this invocation
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, error)
    seconds: float = 0.0
    store_seconds: list[float] = field(default_factory=list)  # per stored run
    run_seconds: list[float] = field(default_factory=list)  # the runs' own time

    @property
    def complete(self) -> bool:
        return self.skipped + self.stored == self.planned

    def summary(self) -> str:
        s = (f"{self.name}: {self.planned} runs planned, {self.skipped} already stored, "
             f"{self.stored} run and stored in {self.seconds:.1f} s")
        if self.failed:
            s += f", {len(self.failed)} FAILED"
        return s


def plan_jobs(spec: SweepSpec, store: ResultStore | None) -> tuple[list[Job], int, int]:
    """(jobs still to run, distinct runs planned, runs already stored); validates the spec.
    ``store`` None: nothing is stored yet."""
    unique = {}
    for planned in spec.plan():
        unique.setdefault(planned.key, planned)
    stored = store.keys() if store is not None else set()
    jobs = [Job(k, p.config.to_dict()) for k, p in unique.items() if k not in stored]
    jobs.sort(key=lambda j: dataset_key(j.config))  # stable: keeps trial-major order
    return jobs, len(unique), len(unique) - len(jobs)


def run_sweep(
    spec: SweepSpec,
    store: ResultStore,
    executor: Executor,
    *,
    progress: bool = True,
    record: bool = True,
) -> SweepOutcome:
    """Run every planned run of ``spec`` (an ``effective()`` spec) not yet in ``store``.

    With ``progress``, a bar over the runs (``tqdm.auto``) and, on executors that can show
    it, a nested bar over the iterations of the run in flight (with its ETA).
    """
    from tqdm.auto import tqdm

    from fedpoison.progress import tqdm_bar

    t0 = time.perf_counter()
    jobs, planned, skipped = plan_jobs(spec, store)
    if record:
        store.record_sweep(spec.record_name, dict(spec.raw), dict(spec.options), planned)
    out = SweepOutcome(spec.record_name, planned, skipped)
    if not jobs:
        out.seconds = time.perf_counter() - t0
        return out
    bar = tqdm(total=len(jobs), desc=spec.record_name, unit="run", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    if skipped:
        bar.set_postfix_str(f"{skipped} already stored", refresh=False)
    if progress:
        executor.show_progress(tqdm_bar)
    try:
        for outcome in executor.run(jobs):
            if outcome.result is not None:
                tic = time.perf_counter()
                store.put(outcome.job.key, outcome.result, executor=executor.name)
                out.store_seconds.append(time.perf_counter() - tic)
                out.run_seconds.append(float(outcome.result.get("seconds", 0.0)))
                out.stored += 1
                value = outcome.result.get(spec.metric)
                if isinstance(value, float):
                    bar.set_postfix_str(f"last {spec.metric} {value:.3f}", refresh=False)
            else:
                out.failed.append((outcome.job.key, outcome.error or "unknown error"))
                last = (outcome.error or "").strip().splitlines()[-1:] or ["?"]
                bar.write(f"run {outcome.job.key} failed: {last[0]}", file=sys.stderr)
            bar.update(1)
    finally:
        bar.close()
        executor.close()
        out.seconds = time.perf_counter() - t0
    return out


@dataclass
class AblationOutcome:
    """What ``run_ablation`` did: per value of the option, its effective spec and outcome."""

    option: str
    values: tuple[Any, ...]
    specs: list[SweepSpec]
    outcomes: list[SweepOutcome]

    @property
    def seconds(self) -> float:
        return sum(o.seconds for o in self.outcomes)

    @property
    def skipped(self) -> int:
        return sum(o.skipped for o in self.outcomes)

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [f for o in self.outcomes for f in o.failed]


def ablation_specs(spec: SweepSpec, option: str, *, trials: int | None = None,
                   quick: bool = False, variant: str | None = None,
                   choices: Mapping[str, Any] | None = None,
                   ) -> tuple[tuple[Any, ...], list[SweepSpec]]:
    """(the alternatives of ``option``, ``spec`` made effective once per alternative on top
    of ``choices``); every run of every alternative is validated."""
    from fedpoison.errors import ConfigError
    from fedpoison.experiments.spec import alternatives

    values = alternatives(option)
    base = dict(choices or {})
    if option in base:
        raise ConfigError("ablation", f"{option} is both ablated and set by --choices")
    specs = [spec.effective(trials=trials, quick=quick, variant=variant,
                            choices={**base, option: v}) for v in values]
    for s in specs:
        s.plan()
    return tuple(values), specs


def run_ablation(spec: SweepSpec, option: str, store: ResultStore,
                 make_executor: Callable[[], Executor], *, trials: int | None = None,
                 quick: bool = False, variant: str | None = None,
                 choices: Mapping[str, Any] | None = None,
                 progress: bool = True) -> AblationOutcome:
    """Run ``spec`` (as written) once per alternative of ``option`` (``spec.alternatives``),
    on top of ``choices``; every run of every alternative is validated before any starts.
    Runs an alternative shares with another (points the option does not reach) run once."""
    values, specs = ablation_specs(spec, option, trials=trials, quick=quick,
                                   variant=variant, choices=choices)
    outcomes = [run_sweep(s, store, make_executor(), progress=progress) for s in specs]
    return AblationOutcome(option, values, specs, outcomes)
