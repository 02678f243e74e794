"""Runs you keep: `fedpoison run --store`, `--save-model`, and the model in RunResult."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

import fedpoison
from fedpoison import RunConfig, cli
from fedpoison.experiments.executors import LocalExecutor
from fedpoison.experiments.spec import parse_spec
from fedpoison.experiments.store import ResultStore
from fedpoison.experiments.sweep import plan_jobs, run_sweep

BASE = {"dataset": "breast-cancer", "workers": 10, "compromised": 2, "iterations": 4,
        "eval_every": 2}
ARGS = ["run", "--dataset", "breast-cancer", "--workers", "10", "--compromised", "2",
        "--iterations", "4", "--eval-every", "2", "--no-progress"]


def _rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT key, config, result, executor FROM runs").fetchall()


def test_run_store_is_a_sweep_row_and_is_not_run_twice(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "runs.sqlite"
    assert cli.main([*ARGS, "--store", str(store), "--json"]) == 0
    out, err = capsys.readouterr()
    first = json.loads(out)
    assert f"stored in {store} (key {first['config_hash']})" in err
    # the same key a sweep of the same config plans, and the same row a sweep writes
    spec = parse_spec({"name": "one", "base": BASE, "grid": {"rule": ["mean"]}}).effective()
    with ResultStore(store) as s:
        jobs, planned, stored = plan_jobs(spec, s)
    assert (len(jobs), planned, stored) == (0, 1, 1)
    swept = tmp_path / "swept.sqlite"
    with ResultStore(swept) as s:
        run_sweep(spec, s, LocalExecutor(), progress=False)
    (key, config, result, executor), = _rows(store)
    (key2, config2, result2, executor2), = _rows(swept)
    assert (key, config, executor) == (key2, config2, executor2)
    r1, r2 = json.loads(result), json.loads(result2)
    for volatile in ("seconds", "timings"):
        r1.pop(volatile), r2.pop(volatile)
    assert r1 == r2

    # stored: shown from the store, not run again
    import fedpoison.simulation as sim

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("ran a stored run again")

    monkeypatch.setattr(sim, "run", refuse)
    assert cli.main([*ARGS, "--store", str(store), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == first and "already stored" in err and "not run again" in err
    monkeypatch.undo()
    # --force runs it again, keeps the first row, and says the numbers are identical
    assert cli.main([*ARGS, "--store", str(store), "--force"]) == 0
    err = capsys.readouterr().err
    assert "keeps its first row" in err and "identical to it" in err
    assert len(_rows(store)) == 1


def test_interrupted_run_stores_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import fedpoison.simulation as sim

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sim, "run", interrupted)
    store = tmp_path / "runs.sqlite"
    assert cli.main([*ARGS, "--store", str(store)]) == 130
    with ResultStore(store, create=False) as s:
        assert len(s) == 0  # a valid store, nothing half-written


def test_saved_model_loads_safely_into_the_module(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "models" / "lr.pt"
    assert cli.main([*ARGS, "--save-model", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    entry = torch.load(path, weights_only=True)
    assert entry["format"] == "fedpoison-model"
    assert entry["metadata"]["config_hash"] == result["config_hash"]
    assert entry["metadata"]["final_error"] == result["final_error"]
    linear = torch.nn.Linear(30, 2)
    linear.load_state_dict(entry["tensors"])  # LR's names are nn.Linear's
    saved = fedpoison.load_model(path)
    again = fedpoison.run(RunConfig(**BASE))
    assert torch.equal(saved.flat, again.model)
    # the module gives the run's own test error
    ds = fedpoison.data.load("breast-cancer")
    err = (linear(ds.x_test.reshape(len(ds.x_test), -1)).argmax(1) != ds.y_test).double().mean()
    assert float(err) == pytest.approx(result["final_error"])
    assert not list(path.parent.glob(".*tmp"))  # written atomically


def test_model_in_run_result_and_json_stays_plain() -> None:
    r = fedpoison.run(RunConfig(**BASE, model="mlp", lr=0.05))
    assert r.model is not None and r.model.shape == (sum(
        torch.Size(s).numel() for _, s in r.model_layout),)
    tensors = r.model_tensors()
    assert [n for n, _ in r.model_layout] == list(tensors)
    assert "model" not in r.to_json()
    json.dumps(r.to_json(), allow_nan=False)
    with pytest.raises(fedpoison.ConfigError, match="not a fedpoison model file"):
        fedpoison.load_model(__file__)


def test_report_lists_stored_single_runs(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "runs.sqlite"
    assert cli.main([*ARGS, "--store", str(store)]) == 0
    assert cli.main([*ARGS, "--store", str(store), "--split", "iid"]) == 0
    capsys.readouterr()
    assert cli.main(["report", str(store), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "### Stored runs (2)" in out and "| split |" in out and "| iid |" in out
    assert (tmp_path / "rep" / "runs.csv").read_text().count("\n") == 3
