"""Every benchmark script still imports (a renamed module must not rot them unnoticed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
