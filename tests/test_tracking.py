"""Tracking: every evaluation logged to TensorBoard and MLflow (local file backends); the
core imports neither unless asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fedpoison
from fedpoison import RunConfig, cli
from fedpoison.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src"
BASE = {"dataset": "breast-cancer", "workers": 12, "compromised": 2, "iterations": 9,
        "eval_every": 3, "rule": "krum", "attack": "krum", "knowledge": "partial"}


def test_core_imports_no_tracking_library() -> None:
    code = ("import sys, fedpoison\n"
            "fedpoison.run(fedpoison.RunConfig(dataset='breast-cancer', workers=10, "
            "compromised=2, iterations=2), progress=False)\n"
            "print(sorted(m for m in ('mlflow', 'tensorboard', 'torch.utils.tensorboard') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_bad_targets_and_missing_libraries_are_one_line_errors(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--log", "wandb", "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--log: got 'wandb'; allowed: tensorboard:DIR" in err
    assert cli.main(["run", "--log", "tensorboard", "--iterations", "1"]) == 2
    assert "needs a folder" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ConfigError, match=r"fedpoison\[tracking\]"):
        fedpoison.run(RunConfig(**BASE), progress=False, track=["mlflow"])


def test_tensorboard_logs_every_evaluation(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = fedpoison.run(RunConfig(**BASE), progress=False, track=[f"tensorboard:{tmp_path}"])
    (run_dir,) = tmp_path.iterdir()
    assert r.config_hash in run_dir.name
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"test/error", "test/loss", "time/seconds", "diagnostics/selected_crafted",
            "diagnostics/against_mean_direction", "final/error", "final/best_error"} <= tags
    logged = [(e.step, e.value) for e in acc.Scalars("test/error")]
    assert [s for s, _ in logged] == [t for t, _ in r.curve] == [3, 6, 9]
    assert [v for _, v in logged] == pytest.approx([e for _, e in r.curve])
    assert "config" in " ".join(acc.Tags()["tensors"])


def test_mlflow_logs_every_evaluation_and_marks_interrupted_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")
    with pytest.raises(ConfigError, match="MLFLOW_ALLOW_FILE_STORE=true"):
        fedpoison.run(RunConfig(**BASE), progress=False, track=[f"mlflow:{uri}"])
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the local file backend
    r = fedpoison.run(RunConfig(**BASE), progress=False, track=[f"mlflow:{uri}"])
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("fedpoison")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["fedpoison.run_key"] == r.config_hash
    assert run.data.params["rule"] == "krum" and run.data.params["noniid"] == "0.5"
    history = client.get_metric_history(run.info.run_id, "test/error")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (t, pytest.approx(e)) for t, e in r.curve]
    assert "diagnostics/selected_crafted" in run.data.metrics
    assert run.data.metrics["final/best_error"] == pytest.approx(r.best_error)

    def stop(t: int, error: float) -> None:
        if t == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fedpoison.run(RunConfig(**BASE), progress=False, track=[f"mlflow:{uri}"],
                      on_evaluate=stop)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    assert runs[0].info.status == "KILLED"
    kept = client.get_metric_history(runs[0].info.run_id, "test/error")
    assert sorted(m.step for m in kept) == [3]  # logged before the interrupt, kept


def test_cli_log_to_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    args = ["run", "--dataset", "breast-cancer", "--workers", "10", "--compromised", "2",
            "--iterations", "4", "--no-progress", "--log", f"tensorboard:{tmp_path / 'tb'}",
            "--log", f"mlflow:{uri}"]
    assert cli.main(args) == 0
    assert len(list((tmp_path / "tb").iterdir())) == 1
    assert (tmp_path / "mlruns").is_dir()
