"""Every benchmark script still imports, and the iteration benchmark still runs (a renamed
module or a changed signature must not rot them unnoticed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_benchmark_imports() -> None:
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    assert scripts
    code = (
        "import importlib.util, sys\n"
        "for path in sys.argv[1:]:\n"
        "    spec = importlib.util.spec_from_file_location('bench_' + str(abs(hash(path))), path)\n"
        "    module = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(module)\n"
        "print('ok', len(sys.argv) - 1)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"),
                                                         str(ROOT / "src")])}
    out = subprocess.run([sys.executable, "-c", code, *map(str, scripts)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"ok {len(scripts)}"


def test_the_iteration_benchmark_runs() -> None:
    """One repeat of every part: its calls into private helpers (``Task._gather``,
    ``sgd_step_``) must follow their signatures."""
    home = os.environ.get("FEDPOISON_DATA")
    if not home or not (Path(home) / "mnist").is_dir():
        pytest.skip("needs FEDPOISON_DATA with MNIST (CI: ../shared/datasets)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_iteration.py"),
                          "--repeats", "2", "--runs", "0", "--rules", "mean,bulyan"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for part in ("sample_batches", "gather inputs", "SGD step", "aggregate bulyan",
                 "Krum attack", "evaluate"):
        assert part in out.stdout, part
