"""The results store: one SQLite file (WAL), one row per finished run, keyed by config hash.

The key is ``RunConfig.config_hash()``: a hash of the full resolved config, seed included, so
trial t of a point is its own row. A row is written in its own transaction once the run has
finished (``INSERT ... ON CONFLICT DO NOTHING``), so a sweep that is killed at any moment
loses at most the runs in flight and never stores one twice; rerunning it skips every stored
key. Only the sweep's driver process writes; executors return results to it.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import json
import math
import socket
import sqlite3
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fedpoison import __version__
from fedpoison.errors import ConfigError, ProvenanceError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key          TEXT PRIMARY KEY,
    config       TEXT NOT NULL,
    result       TEXT NOT NULL,
    final_error  REAL,
    best_error   REAL,
    final_loss   REAL,
    seconds      REAL,
    timings      TEXT,
    version      TEXT,
    git_commit   TEXT,
    executor     TEXT,
    host         TEXT,
    created_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sweeps (
    name        TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    options     TEXT NOT NULL,
    runs        INTEGER NOT NULL,
    updated_at  TEXT NOT NULL
);
"""
PHASES = ("setup", "train", "attack", "defense", "aggregate", "evaluate")


@functools.cache
def git_commit() -> str | None:
    """The commit of the source tree fedpoison runs from (``-dirty`` if modified), or None."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


class ResultStore:
    """An append-only store of run results in one SQLite file."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise ConfigError("store", f"no results store at {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed run survives power loss, not only a killed process.
            self._db.execute("PRAGMA synchronous=FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise ConfigError("store", f"{self.path} has schema version {version}; this "
                                           f"fedpoison reads version {SCHEMA_VERSION}")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise ConfigError("store", f"{self.path} is not a fedpoison results store: {e}") \
                from None
        self._host = socket.gethostname()

    # ------------------------------------------------------------------ writes
    def put(self, key: str, result: dict[str, Any], *, executor: str = "") -> bool:
        """Store one finished run (its own transaction); False if the key was already there.

        Non-finite numbers (a diverged model's loss) are stored as null, so the result is
        standard JSON and a null ``final_loss`` reads as "not finite".
        """
        result = _finite(result)
        if result.get("config_hash") != key:
            raise ProvenanceError(
                f"run {key} came back with key {result.get('config_hash')}: the worker that ran "
                "it has other fedpoison source than this driver (was the package edited while "
                "the sweep ran, or does a Ray node run another version?). Nothing was stored "
                "for it; runs stored so far are kept. Rerun the sweep to resume."
            )
        cur = self._db.execute(
            "INSERT INTO runs (key, config, result, final_error, best_error, final_loss, "
            "seconds, timings, version, git_commit, executor, host, created_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(key) DO NOTHING",
            (
                key,
                json.dumps(result["config"], sort_keys=True),
                json.dumps(result, sort_keys=True),
                result.get("final_error"),
                result.get("best_error"),
                result.get("final_loss"),
                result.get("seconds"),
                json.dumps(result.get("timings", {}), sort_keys=True),
                result.get("version", __version__),
                git_commit(),
                executor,
                self._host,
                dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            ),
        )
        return cur.rowcount == 1

    def record_sweep(self, name: str, spec: dict[str, Any], options: dict[str, Any],
                     runs: int) -> None:
        """Remember a sweep (its spec and options) so ``fedpoison report`` can rebuild it."""
        self._db.execute(
            "INSERT INTO sweeps (name, spec, options, runs, updated_at) VALUES (?,?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET spec=excluded.spec, options=excluded.options, "
            "runs=excluded.runs, updated_at=excluded.updated_at",
            # the spec keeps its key order: axis order is table layout
            (name, json.dumps(spec), json.dumps(options, sort_keys=True), runs,
             dt.datetime.now(dt.UTC).isoformat(timespec="seconds")),
        )

    # ------------------------------------------------------------------- reads
    def keys(self) -> set[str]:
        return {k for (k,) in self._db.execute("SELECT key FROM runs")}

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def __contains__(self, key: object) -> bool:
        return self._db.execute("SELECT 1 FROM runs WHERE key=?", (key,)).fetchone() is not None

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored result JSON of ``key``, or None."""
        row = self._db.execute("SELECT result FROM runs WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def metrics(self, keys: Iterable[str], metric: str) -> dict[str, float]:
        """``metric`` of every stored key among ``keys`` (missing keys are left out)."""
        if metric not in ("final_error", "best_error", "final_loss", "seconds"):
            raise ValueError(f"unknown metric {metric!r}")
        out: dict[str, float] = {}
        wanted = list(dict.fromkeys(keys))
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            q = f"SELECT key, {metric} FROM runs WHERE key IN ({','.join('?' * len(chunk))})"
            out.update({k: v for k, v in self._db.execute(q, chunk)})
        return out

    def keys_by_config(self, configs: Iterable[str]) -> dict[str, str]:
        """For each config JSON among ``configs`` (a resolved config's ``to_dict()`` dumped
        with sorted keys, as ``put`` stores it): the key of its newest stored run, whatever
        the key. A key other than the one this code computes means the run was computed by
        another version of the package source (the key hashes config and source)."""
        out: dict[str, str] = {}
        wanted = list(dict.fromkeys(configs))
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            q = (f"SELECT config, key FROM runs WHERE config IN ({','.join('?' * len(chunk))})"
                 " ORDER BY created_at, key")
            out.update({c: k for c, k in self._db.execute(q, chunk)})  # newest wins
        return out

    def sweeps(self) -> list[dict[str, Any]]:
        """Recorded sweeps: name, spec, options, runs, updated_at."""
        rows = self._db.execute("SELECT name, spec, options, runs, updated_at FROM sweeps "
                                "ORDER BY name")
        return [{"name": n, "spec": json.loads(s), "options": json.loads(o), "runs": r,
                 "updated_at": u} for n, s, o, r, u in rows]

    def records(self) -> Iterator[dict[str, Any]]:
        """Every run as a flat record: key, config fields, metrics, timings, provenance."""
        q = ("SELECT key, config, result, final_error, best_error, final_loss, seconds, timings, "
             "version, git_commit, executor, host, created_at FROM runs ORDER BY created_at, key")
        for (key, config, result, fe, be, fl, sec, timings, ver, commit, ex, host,
             created) in self._db.execute(q):
            res = json.loads(result)
            t = json.loads(timings or "{}")
            rec: dict[str, Any] = {"key": key}
            rec.update(flatten_config(json.loads(config)))
            rec.update({"final_error": fe, "best_error": be, "final_loss": fl,
                        "best_iteration": res.get("best_iteration"), "seconds": sec})
            rec.update({f"time_{p}": t.get(p) for p in PHASES})
            rec.update({"version": ver, "git_commit": commit, "executor": ex, "host": host,
                        "created_at": created, "curve": json.dumps(res.get("curve", []))})
            yield rec

    # ------------------------------------------------------------------ export
    def export(self, path: str | Path) -> int:
        """Write every run to ``path`` (``.csv`` or ``.parquet``); returns the row count."""
        path = Path(path)
        records = list(self.records())
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".csv":
            columns = _columns(records)
            with path.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=columns)
                w.writeheader()
                w.writerows(records)
        elif path.suffix == ".parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise ConfigError("export", "Parquet needs pyarrow: pip install "
                                            "'fedpoison[parquet]'") from None
            columns = _columns(records)
            table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in records])
            pq.write_table(table, path)
        else:
            raise ConfigError("export", f"{path}: the file name must end in .csv or .parquet")
        return len(records)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config as flat columns: component options as ``rule_options.beta`` etc.,
    pre-aggregators as one JSON string."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in sorted(value.items())})
        elif isinstance(value, list):
            out[key] = json.dumps(value, sort_keys=True)
        else:
            out[key] = value
    return out


def _columns(records: list[dict[str, Any]]) -> list[str]:
    from fedpoison.experiments.spec import CONFIG_FIELDS

    if not records:
        return ["key", *CONFIG_FIELDS]
    return list(dict.fromkeys(k for r in records for k in r))


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) inside it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
