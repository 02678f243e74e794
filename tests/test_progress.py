"""Feedback on long work: run and poison-set progress, nested bars in sweeps, dry-run
estimates and the confirmation before more than an hour of work."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch

import fedpoison
from fedpoison import RunConfig, cli
from fedpoison.attacks import DataAttackContext, TrainingData, poison_cache
from fedpoison.experiments import estimate as est
from fedpoison.experiments.executors import LocalExecutor
from fedpoison.experiments.spec import parse_spec
from fedpoison.experiments.store import ResultStore
from fedpoison.experiments.sweep import plan_jobs, run_sweep
from fedpoison.experiments.worker import RUN_PROGRESS, Job

BASE = {"dataset": "breast-cancer", "workers": 10, "compromised": 2, "iterations": 6,
        "eval_every": 3}


class Recorder:
    """A bar factory that records what it was asked to show."""

    def __init__(self) -> None:
        self.bars: list[dict[str, Any]] = []

    def __call__(self, **kw: Any) -> Recorder:
        self.bars.append({**kw, "updates": 0, "closed": False, "postfix": ""})
        return self

    def update(self, n: int = 1) -> None:
        self.bars[-1]["updates"] += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.bars[-1]["postfix"] = s

    def close(self) -> None:
        self.bars[-1]["closed"] = True


def test_run_progress_counts_iterations_with_a_custom_bar() -> None:
    rec = Recorder()
    fedpoison.run(RunConfig(**BASE), progress=rec)
    (bar,) = rec.bars
    assert bar["total"] == 6 and bar["updates"] == 6 and bar["closed"]
    assert bar["postfix"].startswith("error=")
    quiet = Recorder()
    fedpoison.run(RunConfig(**BASE), progress=False)
    assert quiet.bars == []


def test_poison_set_generation_shows_progress(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(poison_cache.ENV_CACHE, str(tmp_path / "cache"))
    g = torch.Generator().manual_seed(4)
    data = TrainingData(torch.rand(100, 1, 2, 2, generator=g),
                        torch.randint(3, (100,), generator=g),
                        torch.randint(10, (100,), generator=g))
    rec = Recorder()
    ctx = DataAttackContext(data, torch.tensor([2, 5]), 3, torch.Generator().manual_seed(1),
                            seed=0, dataset="toy", progress=rec)
    options = {"budget": 0.05, "inner_steps": 3, "outer_steps": 4, "warm_steps": 5}
    fedpoison.registry.get("attack", "bga").impl(ctx, **options)
    (bar,) = rec.bars
    assert bar["desc"] == "bga poison" and bar["total"] == 4 and bar["updates"] == 4
    assert bar["closed"] and bar["postfix"].startswith("val_loss=")
    cached = Recorder()
    fedpoison.registry.get("attack", "bga").impl(
        DataAttackContext(data, torch.tensor([2, 5]), 3, torch.Generator().manual_seed(1),
                          seed=0, dataset="toy", progress=cached), **options)
    assert cached.bars[0]["updates"] == 0 and cached.bars[0]["closed"]  # a cache hit


def test_local_executor_shows_the_running_runs_progress(tmp_path: Path) -> None:
    seen: list[Any] = []

    def runner(config: dict[str, Any], dataset: Any) -> dict[str, Any]:
        seen.append(RUN_PROGRESS.get())
        from fedpoison.experiments.worker import synthetic_result

        return synthetic_result(config, 0.5)

    spec = parse_spec({"name": "p", "base": BASE, "grid": {"rule": ["mean", "median"]}})
    with ResultStore(tmp_path / "a.sqlite") as store:
        run_sweep(spec.effective(), store, LocalExecutor(runner, lambda n, s: None),
                  progress=True)
    with ResultStore(tmp_path / "b.sqlite") as store:
        run_sweep(spec.effective(), store, LocalExecutor(runner, lambda n, s: None),
                  progress=False)
    assert len(seen) == 4 and all(callable(s) for s in seen[:2]) and seen[2:] == [None, None]
    assert RUN_PROGRESS.get() is None  # reset after the sweep


def _jobs(spec: dict[str, Any]) -> list[Job]:
    return plan_jobs(parse_spec(spec).effective(), None)[0]


def test_estimate_extrapolates_per_iteration_cost() -> None:
    jobs = _jobs({"name": "e", "base": {**BASE, "eval_every": 10}, "trials": 2,
                  "grid": {"iterations": [100, 300]}})
    e = est.estimate(jobs, iterations=2)
    (shape,) = e.shapes  # trials and iteration counts share one shape
    assert shape.runs == 4 and shape.per_iteration > 0 and shape.per_evaluation > 0
    by = {(j.config["iterations"], j.config["seed"]): e.per_job[j.key] for j in jobs}
    extra = by[(300, 0)] - by[(100, 0)]
    assert extra == pytest.approx(200 * shape.per_iteration + 20 * shape.per_evaluation)
    assert by[(100, 1)] == pytest.approx(by[(100, 0)])
    assert e.seconds == pytest.approx(e.loads + sum(e.per_job.values()))
    assert e.describe().startswith("estimate: 4 runs, ≈ ")
    one = est.estimate(_jobs({"name": "one", "base": {**BASE, "iterations": 1},
                              "grid": {"rule": ["mean"]}}), iterations=3)
    assert one.shapes[0].per_iteration > 0  # no step beyond the run's own schedule


def test_estimate_times_a_poison_set_without_generating_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(poison_cache.ENV_CACHE, str(tmp_path / "cache"))
    jobs = _jobs({"name": "b", "base": {**BASE, "attack": "bga", "attack_options": {
        "outer_steps": 400, "inner_steps": 3, "warm_steps": 2}}, "grid": {"rule": ["mean"]}})
    e = est.estimate(jobs, iterations=1)
    (shape,) = e.shapes
    assert shape.preparation > 0  # four steps timed, 400 extrapolated
    assert not list((tmp_path / "cache").rglob("*.pt"))  # nothing generated or cached


SPEC = "name: tiny\nbase: {dataset: breast-cancer, workers: 10, compromised: 2, " \
       "iterations: 2}\ngrid:\n  rule: [mean, median]\n"


def test_dry_run_counts_and_estimates_without_a_store(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    store = tmp_path / "runs.sqlite"
    assert cli.main(["sweep", str(spec), "--store", str(store), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 distinct runs; 0 stored" in out and "estimate: 2 runs, ≈ " in out
    assert "× breast-cancer/lr mean ← none:" in out and not store.exists()
    assert cli.main(["reproduce", "table2a", "--quick", "--dry-run", "--store",
                     str(store), "--calibrate", "1"]) == 0
    assert "estimate: " in capsys.readouterr().out and not store.exists()


def _long(monkeypatch: pytest.MonkeyPatch, hours: float) -> list[int]:
    calls: list[int] = []

    def fake(jobs: Any, **kw: Any) -> est.Estimate:
        calls.append(len(jobs))
        return est.Estimate(runs=len(jobs), seconds=hours * 3600, calibration_seconds=0.1)

    monkeypatch.setattr(est, "estimate", fake)
    return calls


def test_more_than_an_hour_asks_on_a_terminal_and_warns_elsewhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    store = tmp_path / "runs.sqlite"
    args = ["sweep", str(spec), "--store", str(store), "--no-progress"]
    calls = _long(monkeypatch, 5)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "warning: tiny: estimate: 2 runs, ≈ 5 h 0 min" in err and "not started" in err
    with ResultStore(store, create=False) as s:
        assert len(s) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal: warn, then run
    assert cli.main(args) == 0
    assert "warning" in capsys.readouterr().err
    with ResultStore(store, create=False) as s:
        assert len(s) == 2
    calls.clear()
    assert cli.main([*args, "--yes"]) == 0 and calls == []  # --yes: no estimate at all
    calls = _long(monkeypatch, 0.5)
    monkeypatch.setattr("sys.stdin", Terminal(""))
    store.unlink()
    assert cli.main(args) == 0 and "warning" not in capsys.readouterr().err
    assert calls == [2]  # estimated, under an hour: started without a question


def test_ablation_dry_run_runs_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _long(monkeypatch, 0.1)
    store = tmp_path / "runs.sqlite"
    assert cli.main(["reproduce", "table7b", "--ablation", "copies", "--trials", "1",
                     "--dry-run", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "table7b-copies=exact (copies=exact): 3 points × 1 trial(s)" in out
    # the no-attack cell, which copies does not reach, is one run for all three alternatives
    assert "ablation of copies: 7 distinct runs over 3 alternatives" in out
    assert "estimate: " in out
    assert len(calls) == 1 and not store.exists()
