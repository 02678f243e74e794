"""Killing the driver of a process-pool sweep leaves no process behind (issue 15, class 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from robust_helpers import children_of, process_state

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

# A sweep on a pool of 2 workers whose runs block; each run announces its worker's pid.
DRIVER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import torch
    from fedpoison.data import Dataset
    from fedpoison.experiments.executors import ProcessExecutor
    from fedpoison.experiments.spec import parse_spec
    from fedpoison.experiments.store import ResultStore
    from fedpoison.experiments.sweep import run_sweep

    def loader(name, seed):
        x, y = torch.zeros(20, 4), torch.zeros(20, dtype=torch.long)
        return Dataset(name, x, y, x, y, 2)

    def runner(config, ds):
        Path(sys.argv[2], f"running-{os.getpid()}").touch()
        time.sleep(600)

    if __name__ == "__main__":
        spec = parse_spec({"name": "kill", "base": {"workers": 10, "iterations": 3},
                           "grid": {"compromised": [1, 2, 3, 4]}})
        with ResultStore(sys.argv[1]) as store:
            run_sweep(spec.effective(), store, ProcessExecutor(2, runner=runner, loader=loader),
                      progress=False)
""")


def _alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z")  # a zombie has exited (init reaps it)


def test_sigkill_of_the_driver_leaves_no_worker_and_no_resource_tracker(tmp_path: Path) -> None:
    script = tmp_path / "driver.py"  # a file: spawned workers re-import it as __mp_main__
    script.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    driver = subprocess.Popen([sys.executable, str(script), str(tmp_path / "s.sqlite"),
                               str(tmp_path)], env=env)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while len(list(tmp_path.glob("running-*"))) < 2:
            assert driver.poll() is None, "the driver ended before it could be killed"
            assert time.monotonic() < deadline, "the pool never started its runs"
            time.sleep(0.05)
        children = children_of(driver.pid)
        workers = {int(p.name.split("-")[1]) for p in tmp_path.glob("running-*")}
        assert workers <= set(children)
        assert len(children) >= 3  # two workers and multiprocessing's resource tracker
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in children if _alive(pid)] == [], "left behind"
    finally:
        if driver.poll() is None:
            driver.kill()
        for pid in children:  # never leave them running, even when the test fails
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
