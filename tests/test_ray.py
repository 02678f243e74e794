"""The Ray executor on a local 2-CPU instance: same numbers as in-process, retries, errors."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'fedpoison[ray]')")

from fedpoison.data import Dataset  # noqa: E402
from fedpoison.experiments.executors import LocalExecutor, make_executor  # noqa: E402
from fedpoison.experiments.ray_executor import RayExecutor  # noqa: E402
from fedpoison.experiments.spec import parse_spec  # noqa: E402
from fedpoison.experiments.store import ResultStore  # noqa: E402
from fedpoison.experiments.sweep import run_sweep  # noqa: E402
from fedpoison.experiments.worker import execute  # noqa: E402

SPEC = {"name": "ray-tiny", "trials": 2,
        "base": {"dataset": "mnist", "workers": 10, "compromised": 1, "iterations": 3,
                 "eval_every": 3, "batch_size": 8},
        "grid": {"rule": ["mean", "median"], "attack": ["none", "label-flip"]}}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def _toy_loader() -> Any:
    """A toy dataset loader: a closure, so Ray ships it by value (this module is not
    importable in Ray's workers)."""
    import torch

    def loader(name: str, seed: int) -> Dataset:
        g = torch.Generator().manual_seed(1234)
        x = torch.rand(240, 12, generator=g)
        y = x[:, :4].argmax(1).long()
        return Dataset(name, x[:200], y[:200], x[200:], y[200:], 4)

    return loader


def test_ray_sweep_matches_local_retries_and_reports(tmp_path: Path, local_ray: None) -> None:
    loader = _toy_loader()
    marker = str(tmp_path / "killed")
    attempts_dir = str(tmp_path)

    def runner(config: dict[str, Any], ds: Dataset) -> dict[str, Any]:
        tag = f"{config['rule']}-{config['attack']}-{config['seed']}"
        with open(os.path.join(attempts_dir, f"attempt-{tag}"), "a") as fh:
            fh.write("x")
        if tag == "median-none-0" and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-run
        if tag == "mean-label-flip-1":
            raise ValueError("deterministic failure")
        return execute(config, ds)

    spec = parse_spec(SPEC).effective()
    with ResultStore(tmp_path / "local.sqlite") as a, ResultStore(tmp_path / "ray.sqlite") as b:
        run_sweep(spec, a, LocalExecutor(execute, loader), progress=False)
        ex = RayExecutor(max_retries=2, runner=runner, loader=loader)
        out = run_sweep(spec, b, ex, progress=False)
        assert os.path.exists(marker)
        # the killed run was retried on a new worker; the raising run was not retried
        assert (tmp_path / "attempt-median-none-0").read_text() == "xx"
        assert (tmp_path / "attempt-mean-label-flip-1").read_text() == "x"
        assert out.stored == 7 and len(out.failed) == 1
        assert "deterministic failure" in out.failed[0][1]
        assert len(b) == 7
        for key in b:
            ra, rb = a.get(key), b.get(key)
            assert ra is not None and rb is not None
            assert (ra["curve"], ra["loss_curve"], ra["final_error"]) == (
                rb["curve"], rb["loss_curve"], rb["final_error"])
        # rerun: only the failed run is left to do
        out2 = run_sweep(spec, b, RayExecutor(runner=execute, loader=loader), progress=False)
        assert (out2.skipped, out2.stored) == (7, 1) and len(b) == 8


def test_ray_executor_option_errors() -> None:
    from fedpoison.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        make_executor("ray", jobs=2, address="auto")
    assert e.value.field == "jobs"
