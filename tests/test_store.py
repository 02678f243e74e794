"""The results store: keys, exactly-once writes, exports, and crash safety under kill -9."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedpoison.config import RunConfig
from fedpoison.errors import ConfigError, ProvenanceError
from fedpoison.experiments.store import ResultStore
from fedpoison.experiments.worker import synthetic_result

CFG = {"dataset": "mnist", "workers": 10, "compromised": 1, "iterations": 3}


def test_put_get_and_exactly_once(tmp_path: Path) -> None:
    key = RunConfig.from_dict(CFG).config_hash()
    with ResultStore(tmp_path / "s.sqlite") as s:
        assert s.put(key, synthetic_result(CFG, 0.25), executor="local")
        assert not s.put(key, synthetic_result(CFG, 0.99))  # second write ignored
        assert len(s) == 1 and key in s and s.keys() == {key}
        got = s.get(key)
        assert got is not None and got["final_error"] == 0.25
        assert s.metrics([key, "nope"], "final_error") == {key: 0.25}
        with pytest.raises(ProvenanceError, match="other fedpoison source"):
            s.put("0" * 16, synthetic_result(CFG, 0.1))
        assert len(s) == 1
    db = sqlite3.connect(tmp_path / "s.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = db.execute("SELECT version, executor, created_at FROM runs").fetchone()
    assert row[0] and row[1] == "local" and row[2]


def test_non_finite_numbers_are_stored_as_null(tmp_path: Path) -> None:
    """A diverged run (inf/NaN loss) is stored as standard JSON with nulls."""
    key = RunConfig.from_dict(CFG).config_hash()
    result = synthetic_result(CFG, 1.0)
    result["final_loss"] = float("inf")
    result["loss_curve"] = [[1, 2.5], [2, float("nan")], [3, float("-inf")]]
    with ResultStore(tmp_path / "s.sqlite") as s:
        s.put(key, result)
        assert s.metrics([key], "final_loss") == {key: None}
        assert s.metrics([key], "final_error") == {key: 1.0}
    raw = sqlite3.connect(tmp_path / "s.sqlite").execute("SELECT result FROM runs").fetchone()[0]

    def reject(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    stored = json.loads(raw, parse_constant=reject)
    assert stored["final_loss"] is None
    assert stored["loss_curve"] == [[1, 2.5], [2, None], [3, None]]


def test_seed_is_part_of_the_key() -> None:
    a = RunConfig.from_dict({**CFG, "seed": 0}).config_hash()
    b = RunConfig.from_dict({**CFG, "seed": 1}).config_hash()
    assert a != b


def test_export_csv_and_parquet(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s.sqlite") as s:
        for seed in range(3):
            cfg = {**CFG, "seed": seed}
            s.put(RunConfig.from_dict(cfg).config_hash(), synthetic_result(cfg, 0.1 * seed))
        assert s.export(tmp_path / "runs.csv") == 3
        rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
        assert sorted(int(r["seed"]) for r in rows) == [0, 1, 2]
        assert {"key", "rule", "workers", "final_error", "time_train", "git_commit",
                "curve"} <= set(rows[0])
        with pytest.raises(ConfigError) as e:
            s.export(tmp_path / "runs.xlsx")
        assert e.value.field == "export"
        pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed")
        assert s.export(tmp_path / "runs.parquet") == 3
        table = pq.read_table(tmp_path / "runs.parquet")
        assert table.num_rows == 3 and sorted(table.column("seed").to_pylist()) == [0, 1, 2]


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        ResultStore(tmp_path / "missing.sqlite", create=False)
    assert e.value.field == "store"
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="not a fedpoison results store"):
        ResultStore(junk)


# A sweep in a child process; each run logs its key when it starts, then takes ~40 ms.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from fedpoison.data import Dataset
    from fedpoison.experiments.executors import LocalExecutor
    from fedpoison.experiments.spec import parse_spec
    from fedpoison.experiments.store import ResultStore
    from fedpoison.experiments.sweep import run_sweep
    from fedpoison.experiments.worker import synthetic_result

    store_path, log_path, phase = sys.argv[1], Path(sys.argv[2]), sys.argv[3]

    def loader(name, seed):
        x = torch.zeros(20, 4)
        return Dataset(name, x, torch.zeros(20, dtype=torch.long), x, torch.zeros(20,
                       dtype=torch.long), 2)

    def runner(config, ds):
        with log_path.open("a") as fh:
            fh.write(f"{phase} {config['rule']}-{config['compromised']}-{config['seed']}\\n")
        time.sleep(0.04)
        return synthetic_result(config, 0.01 * config["compromised"] + 0.001 * config["seed"])

    spec = parse_spec({"name": "kill", "trials": 5,
                       "base": {"workers": 10, "iterations": 3},
                       "grid": {"rule": ["mean", "median"], "compromised": [1, 2, 3]}})
    with ResultStore(store_path) as store:
        run_sweep(spec.effective(), store, LocalExecutor(runner, loader), progress=False)
""")


def _stored(path: Path) -> set[str]:
    if not path.exists():
        return set()
    db = sqlite3.connect(path, timeout=30)
    try:
        return {k for (k,) in db.execute("SELECT key FROM runs")}
    except sqlite3.OperationalError:  # the child has not created the table yet
        return set()
    finally:
        db.close()


def test_kill_9_three_times_then_resume(tmp_path: Path) -> None:
    store, log = tmp_path / "s.sqlite", tmp_path / "log.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    rng = random.Random(7)
    before: dict[str, set[str]] = {}
    for phase in range(3):
        before[str(phase)] = _stored(store)
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(store), str(log), str(phase)],
                                 env=env)
        # wait until this phase stores its first run, then kill at a random moment
        deadline = time.monotonic() + 60
        while len(_stored(store)) <= len(before[str(phase)]) and time.monotonic() < deadline:
            assert child.poll() is None, "sweep ended before it could be killed"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert len(_stored(store)) < 30
    before["3"] = _stored(store)
    subprocess.run([sys.executable, "-c", CHILD, str(store), str(log), "3"], env=env,
                   check=True)
    db = sqlite3.connect(store)
    n, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM runs").fetchone()
    assert n == distinct == 30
    # no run that was stored when a phase started was computed again in that phase
    with ResultStore(store) as s:
        results = [s.get(k) for k in s]
    names = {f"{r['config']['rule']}-{r['config']['compromised']}-{r['config']['seed']}": k
             for r, k in zip(results, [r["config_hash"] for r in results], strict=True)}
    for line in log.read_text().split("\n"):
        if line:
            phase, name = line.split()
            assert names[name] not in before[phase], f"{name} recomputed in phase {phase}"
