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


# ------------------------------------------------- files that are not ours (issue 15, class 4)
def _snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file in ``folder``: bytes, mtime (ns) and mode — to prove nothing was touched."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(folder.iterdir())}


def _foreign_db(path: Path, wal: bool = False) -> Path:
    db = sqlite3.connect(path)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA application_id=1234")
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    db.execute("INSERT INTO notes (text) VALUES ('mine')")
    db.commit()
    db.close()
    return path


def _store_with_runs(path: Path, n: int = 12) -> Path:
    with ResultStore(path) as s:
        for seed in range(n):
            cfg = {**CFG, "seed": seed}
            s.put(RunConfig.from_dict(cfg).config_hash(), synthetic_result(cfg, 0.01 * seed))
    return path


def _truncated(tmp_path: Path, keep: int) -> Path:
    full = _store_with_runs(tmp_path / "full" / "s.sqlite")
    out = tmp_path / "t.sqlite"
    out.write_bytes(full.read_bytes()[:keep])
    return out


@pytest.mark.parametrize("kind", ["foreign", "foreign-wal", "same-tables-foreign-id",
                                  "sqlite-without-tables", "empty", "text",
                                  "truncated-header", "truncated-pages"])
@pytest.mark.parametrize("readonly", [False, True])
def test_a_file_that_is_not_a_store_is_refused_untouched(
    tmp_path: Path, kind: str, readonly: bool
) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    path = folder / "x.sqlite"
    if kind == "foreign":
        _foreign_db(path)
    elif kind == "foreign-wal":
        _foreign_db(path, wal=True)
    elif kind == "same-tables-foreign-id":  # our tables, another application's id
        _store_with_runs(path)
        db = sqlite3.connect(path)
        db.execute("PRAGMA application_id=1234")
        db.commit()
        db.close()
    elif kind == "sqlite-without-tables":
        sqlite3.connect(path).execute("PRAGMA user_version=1").connection.close()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("key,final_error\nabc,0.5\n")
    elif kind == "truncated-header":
        path.write_bytes(_truncated(tmp_path, 60).read_bytes())
    else:
        path.write_bytes(_truncated(tmp_path, 2 * 4096).read_bytes())
    before = _snapshot(folder)
    with pytest.raises(ConfigError) as e:
        ResultStore(path, create=not readonly, readonly=readonly)
    assert e.value.field == "store"
    assert "not a fedpoison results store" in e.value.message and "untouched" in e.value.message
    assert "\n" not in e.value.message
    assert _snapshot(folder) == before  # same files, bytes, mtimes and modes; no -wal/-shm


def test_sweep_and_report_refuse_a_foreign_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedpoison.cli import main

    folder = tmp_path / "d"
    folder.mkdir()
    other = _foreign_db(folder / "other.sqlite")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(json.dumps({"name": "tiny", "grid": {"rule": ["mean"]},
                                "base": {"dataset": "breast-cancer", "workers": 10,
                                         "compromised": 2, "iterations": 1}}))
    before = _snapshot(folder)
    assert main(["sweep", str(spec), "--store", str(other)]) == 2
    assert main(["sweep", str(spec), "--store", str(other), "--dry-run"]) == 2
    assert main(["report", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("not a fedpoison results store" in line for line in err)
    assert _snapshot(folder) == before


def test_new_store_carries_the_application_id(tmp_path: Path) -> None:
    from fedpoison.experiments.store import APPLICATION_ID

    path = tmp_path / "deep" / "er" / "s.sqlite"
    ResultStore(path).close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.sqlite"]  # no temporary left
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_read_only_open_changes_nothing(tmp_path: Path) -> None:
    """``report`` opens read-only: the header (user_version), bytes and mtime stay as they
    are, also for a store whose file and folder are read-only; writes are refused."""
    folder = tmp_path / "d"
    path = _store_with_runs(folder / "s.sqlite", 3)
    path.chmod(0o444)
    folder.chmod(0o555)
    try:
        before = path.read_bytes(), path.stat().st_mtime_ns
        with ResultStore(path, create=False) as s:
            assert len(s) == 3 and len(list(s.records())) == 3
            with pytest.raises(ConfigError, match="read-only"):
                s.put("k", synthetic_result(CFG, 0.1))
            with pytest.raises(ConfigError, match="read-only"):
                s.record_sweep("x", {}, {}, 0)
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)


def test_store_written_before_the_application_id_is_read_then_adopted(tmp_path: Path) -> None:
    """user_version 1, no application id, exactly our tables: read as it is; opened for
    writing, it gets the id. One extra table and it is not ours."""
    from fedpoison.experiments.store import _SCHEMA, APPLICATION_ID

    def legacy(path: Path, extra: str = "") -> Path:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA + extra)
        db.execute("PRAGMA user_version=1")
        key = RunConfig.from_dict(CFG).config_hash()
        db.execute("INSERT INTO runs (key, config, result, created_at) VALUES (?,?,?,?)",
                   (key, "{}", json.dumps(synthetic_result(CFG, 0.3)), "2025-01-01"))
        db.close()
        return path

    path = legacy(tmp_path / "old.sqlite")
    before = path.read_bytes(), path.stat().st_mtime_ns
    with ResultStore(path, create=False) as s:
        assert len(s) == 1
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    with ResultStore(path) as s:
        assert len(s) == 1
        cfg = {**CFG, "seed": 1}
        assert s.put(RunConfig.from_dict(cfg).config_hash(), synthetic_result(cfg, 0.2))
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
    db.close()

    # A sweep of that version killed with -9: tables and runs only in the WAL file.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    live = sqlite3.connect(tmp_path / "live.sqlite", isolation_level=None)
    live.execute("PRAGMA journal_mode=WAL")
    live.executescript(_SCHEMA)
    live.execute("PRAGMA user_version=1")
    live.execute("INSERT INTO runs (key, config, result, created_at) VALUES ('k', '{}', '{}', "
                 "'2025-01-01')")
    for suffix in ("", "-wal"):  # the files as the killed process left them
        (crashed / f"s.sqlite{suffix}").write_bytes(
            (tmp_path / f"live.sqlite{suffix}").read_bytes())
    live.close()
    with ResultStore(crashed / "s.sqlite", create=False) as s:
        assert s.keys() == {"k"}
    with ResultStore(crashed / "s.sqlite") as s:
        assert s.keys() == {"k"}

    other = legacy(tmp_path / "other.sqlite", "CREATE TABLE notes (x);")
    before = other.read_bytes(), other.stat().st_mtime_ns
    with pytest.raises(ConfigError, match="not a fedpoison results store"):
        ResultStore(other)
    assert (other.read_bytes(), other.stat().st_mtime_ns) == before


@pytest.mark.parametrize("where", ["parent-is-a-file", "store-is-a-folder"])
def test_store_path_that_cannot_be_created_is_one_line(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "blocker"
    if where == "parent-is-a-file":
        blocker.write_text("")
        path = blocker / "sub" / "s.sqlite"
    else:
        blocker.mkdir()
        path = blocker
    with pytest.raises(ConfigError) as e:
        ResultStore(path)
    assert e.value.field == "store" and str(blocker) in e.value.message
    assert ("Not a directory" if where == "parent-is-a-file" else "a directory") \
        in e.value.message
    assert "\n" not in e.value.message


def test_fuzzed_store_files_are_refused_untouched_or_read(tmp_path: Path) -> None:
    """Random truncations, header bytes and garbage: opening never raises anything but a
    one-line ConfigError, and a refused file keeps its bytes and mtime."""
    good = _store_with_runs(tmp_path / "good" / "s.sqlite", 20).read_bytes()
    rng = random.Random(15)
    variants: list[bytes] = []
    for _ in range(12):
        variants.append(good[:rng.randrange(0, len(good))])  # truncated anywhere
    for _ in range(12):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):  # a few header bytes changed
            data[rng.randrange(0, 100)] = rng.randrange(256)
        variants.append(bytes(data))
    for _ in range(6):
        variants.append(bytes(rng.randrange(256) for _ in range(rng.choice([1, 99, 100, 4096]))))
    variants.append(b"SQLite format 3\x00" + bytes(rng.randrange(256) for _ in range(5000)))
    for i, data in enumerate(variants):
        folder = tmp_path / f"v{i}"
        folder.mkdir()
        path = folder / "s.sqlite"
        path.write_bytes(data)
        for readonly in (True, False):
            before = _snapshot(folder)
            try:
                with ResultStore(path, create=not readonly) as s:
                    len(s), list(s.records()), s.sweeps()
            except ConfigError as e:
                assert e.field == "store" and "\n" not in e.message, e.message
                if "not a fedpoison results store" in e.message:
                    assert _snapshot(folder) == before, (i, e.message)
