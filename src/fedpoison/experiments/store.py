"""The results store: one SQLite file (WAL), one row per finished run, keyed by config hash.

The key is ``RunConfig.config_hash()``: a hash of the full resolved config, seed included, so
trial t of a point is its own row. A row is written in its own transaction once the run has
finished (``INSERT ... ON CONFLICT DO NOTHING``), so a sweep that is killed at any moment
loses at most the runs in flight and never stores one twice; rerunning it skips every stored
key. Only the sweep's driver process writes; executors return results to it.

A store is recognised before anything is written to a file: its SQLite header carries
:data:`APPLICATION_ID` and its tables are exactly fedpoison's. A new store is built in a
temporary file and linked into place, so the schema is only ever written into a file this
code created; any other file (another application's database, an empty, truncated or
non-SQLite file) is refused untouched. Reading (``fedpoison report``) opens the file
read-only. A store written before the application id existed (``user_version`` 1, no id) is
read as it is and adopted (the id set) the first time it is opened for writing.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import functools
import json
import math
import os
import socket
import sqlite3
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fedpoison import __version__
from fedpoison.errors import ConfigError, ProvenanceError

SCHEMA_VERSION = 1
APPLICATION_ID = int.from_bytes(b"FPst", "big")
"""SQLite ``PRAGMA application_id`` of a fedpoison results store (0x46507374, "FPst")."""

MAX_SPEC_JSON = 8 << 20
"""The largest sweep spec (as JSON, bytes) a store records."""

_SQLITE_MAGIC = b"SQLite format 3\x00"
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
RESULT_METRICS = ("final_asr", "max_asr")
"""Metrics kept in the stored result JSON only (no column): a run with a backdoor attack
has them, any other run has none (the store's schema is unchanged)."""


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
    """An append-only store of run results in one SQLite file.

    ``ResultStore(path)`` opens a store for writing, creating it when ``path`` does not exist.
    ``ResultStore(path, create=False)`` or ``ResultStore(path, readonly=True)`` opens an
    existing store read-only (``readonly`` defaults to ``not create``; reading never creates
    or changes anything); ``create=False, readonly=False`` opens an existing store for writing
    without creating one. Anything at ``path`` that is not a fedpoison store is
    refused with a :class:`ConfigError` (field ``store``) and left exactly as it was.
    """

    def __init__(self, path: str | Path, *, create: bool = True,
                 readonly: bool | None = None) -> None:
        self.path = Path(path)
        self.readonly = (not create) if readonly is None else readonly
        create = create and not self.readonly  # reading never creates a store
        exists = _exists(self.path)
        if not exists and not create:
            raise ConfigError("store", f"no results store at {self.path}")
        if not exists:
            _create(self.path)
        self._db = _open(self.path, self.readonly)
        self._host = socket.gethostname()

    def _writable(self) -> None:
        if self.readonly:
            raise ConfigError("store", f"{self.path} is open read-only")

    # ------------------------------------------------------------------ writes
    def put(self, key: str, result: dict[str, Any], *, executor: str = "") -> bool:
        """Store one finished run (its own transaction); False if the key was already there.

        Non-finite numbers (a diverged model's loss) are stored as null, so the result is
        standard JSON and a null ``final_loss`` reads as "not finite".
        """
        self._writable()
        result = _finite(result)
        if result.get("config_hash") != key:
            raise ProvenanceError(
                f"run {key} came back with key {result.get('config_hash')}: the worker that ran "
                "it has other fedpoison source than this driver (was the package edited while "
                "the sweep ran, or does a Ray node run another version?). Nothing was stored "
                "for it; runs stored so far are kept. Rerun the sweep to resume."
            )
        with _errors(self.path, "write"):
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
        self._writable()
        spec_json = json.dumps(spec)  # the spec keeps its key order: axis order is table layout
        if len(spec_json) > MAX_SPEC_JSON:
            raise ConfigError("spec", f"sweep {name!r}: its spec is {len(spec_json)} bytes as "
                                      f"JSON; a store records specs of at most {MAX_SPEC_JSON}")
        with _errors(self.path, "write"):
            self._db.execute(
                "INSERT INTO sweeps (name, spec, options, runs, updated_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET spec=excluded.spec, options=excluded.options, "
                "runs=excluded.runs, updated_at=excluded.updated_at",
                (name, spec_json, json.dumps(options, sort_keys=True), runs,
                 dt.datetime.now(dt.UTC).isoformat(timespec="seconds")),
            )

    # ------------------------------------------------------------------- reads
    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """All rows of one query; a damaged file is a one-line :class:`ConfigError`."""
        with _errors(self.path, "read"):
            return self._db.execute(sql, tuple(args)).fetchall()

    def keys(self) -> set[str]:
        return {k for (k,) in self._rows("SELECT key FROM runs")}

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return int(self._rows("SELECT COUNT(*) FROM runs")[0][0])

    def __contains__(self, key: object) -> bool:
        return bool(self._rows("SELECT 1 FROM runs WHERE key=?", (key,)))

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored result JSON of ``key``, or None."""
        rows = self._rows("SELECT result FROM runs WHERE key=?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def metrics(self, keys: Iterable[str], metric: str) -> dict[str, float | None]:
        """``metric`` of every stored key among ``keys`` (missing keys are left out; a stored
        run without the metric, e.g. the ASR of a run with no backdoor, maps to None)."""
        if metric in RESULT_METRICS:  # read from the stored result JSON
            column = f"json_extract(result, '$.{metric}')"
        elif metric in ("final_error", "best_error", "final_loss", "seconds"):
            column = metric
        else:
            raise ValueError(f"unknown metric {metric!r}")
        out: dict[str, float | None] = {}
        wanted = list(dict.fromkeys(keys))
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            q = f"SELECT key, {column} FROM runs WHERE key IN ({','.join('?' * len(chunk))})"
            out.update(dict(self._rows(q, chunk)))
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
            out.update(dict(self._rows(q, chunk)))  # newest wins
        return out

    def sweeps(self) -> list[dict[str, Any]]:
        """Recorded sweeps: name, spec, options, runs, updated_at."""
        rows = self._rows("SELECT name, spec, options, runs, updated_at FROM sweeps "
                          "ORDER BY name")
        return [{"name": n, "spec": json.loads(s), "options": json.loads(o), "runs": r,
                 "updated_at": u} for n, s, o, r, u in rows]

    def records(self) -> Iterator[dict[str, Any]]:
        """Every run as a flat record: key, config fields, metrics, timings, provenance."""
        q = ("SELECT key, config, result, final_error, best_error, final_loss, seconds, timings, "
             "version, git_commit, executor, host, created_at FROM runs ORDER BY created_at, key")
        with _errors(self.path, "read"):
            for (key, config, result, fe, be, fl, sec, timings, ver, commit, ex, host,
                 created) in self._db.execute(q):
                res = json.loads(result)
                t = json.loads(timings or "{}")
                rec: dict[str, Any] = {"key": key}
                rec.update(flatten_config(json.loads(config)))
                rec.update({"final_error": fe, "best_error": be, "final_loss": fl,
                            "best_iteration": res.get("best_iteration"), "seconds": sec})
                rec.update({m: res[m] for m in RESULT_METRICS if m in res})
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


# ------------------------------------------------------------------ opening a store
@contextlib.contextmanager
def _errors(path: Path, action: str) -> Iterator[None]:
    """Turn an SQLite error while using the store into one line naming the store."""
    try:
        yield
    except sqlite3.Error as e:
        hint = ("; runs stored so far are kept: free space or fix the file's permissions, then "
                "run the same command again to resume") if action == "write" else ""
        raise ConfigError("store", f"cannot {action} {path}: {e}{hint}") from None


def _exists(path: Path) -> bool:
    """Whether something is at ``path``; an unreadable location is a one-line error."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise ConfigError("store", f"cannot access {path}: {e.strerror or e}") from None
    return True


def _uri(path: Path, **params: str) -> str:
    """An SQLite ``file:`` URI for ``path`` (give ``mode``: without it SQLite creates the file)."""
    query = urllib.parse.urlencode(params)
    return f"file:{urllib.parse.quote(str(path.absolute()))}?{query}"


def _tables(db: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of ``db`` but SQLite's own: name -> (column, type, notnull, pk) rows."""
    names = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND "
                                      "name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")]
    return {n: [(c[1], c[2].upper(), c[3], c[5])
                for c in db.execute(f"PRAGMA table_info({_quote(n)})")] for n in names}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@functools.cache
def _our_tables() -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        return _tables(db)
    finally:
        db.close()


def _describe(tables: Iterable[str]) -> str:
    names = sorted(tables)
    if not names:
        return "no tables"
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"tables {shown}"


def _refuse(path: Path, what: str) -> ConfigError:
    return ConfigError("store", f"{path} is not a fedpoison results store ({what}); it was "
                                "left untouched: name a new file for the store")


def _screen(path: Path) -> bytes:
    """Check what is at ``path`` without SQLite (which might write to it): a regular,
    non-empty, untruncated SQLite file. Returns its 100-byte header."""
    try:
        st = os.stat(path)
        if not os.path.isfile(path):
            raise _refuse(path, "a directory" if os.path.isdir(path) else "not a regular file")
        with open(path, "rb") as fh:
            header = fh.read(100)
        wal = Path(f"{path}-wal")
        pending = wal.is_file() and wal.stat().st_size > 0  # pages may still be in the WAL
    except OSError as e:
        raise ConfigError("store", f"cannot read {path}: {e.strerror or e}") from None
    if st.st_size == 0:
        raise _refuse(path, "an empty file")
    if not header.startswith(_SQLITE_MAGIC[:len(header)]) or not header:
        raise _refuse(path, "not an SQLite database")
    if len(header) < 100:
        raise _refuse(path, f"a truncated SQLite file ({st.st_size} bytes)")
    page = int.from_bytes(header[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(header[28:32], "big")
    counter_valid = header[24:28] == header[92:96]
    if not pending and page and (st.st_size % page or
                                 (counter_valid and st.st_size < pages * page)):
        raise _refuse(path, f"a truncated SQLite file ({st.st_size} bytes; its header says "
                            f"{pages} pages of {page})")
    return header


def _recognise(path: Path, header: bytes) -> str:
    """``"ours"`` (a store with our application id), ``"legacy"`` (a store from before the
    id: user_version 1, exactly our tables), or a :class:`ConfigError` refusing the file.

    Read through a connection that cannot write: ``immutable=1`` when the file is a WAL
    database without a WAL file (no ``-shm``/``-wal`` files are created next to it), else
    ``mode=ro``.
    """
    wal_mode = header[18] == 2 and header[19] == 2
    params = ({"mode": "ro", "immutable": "1"} if wal_mode and not Path(f"{path}-wal").exists()
              else {"mode": "ro"})
    try:
        db = sqlite3.connect(_uri(path, **params), uri=True, timeout=60)
    except sqlite3.Error as e:
        raise ConfigError("store", f"cannot open {path}: {e}") from None
    try:
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = _tables(db)
    except sqlite3.Error as e:
        raise _refuse(path, f"an unreadable or damaged SQLite file ({e})") from None
    finally:
        db.close()
    exact = tables == _our_tables()
    if app_id == APPLICATION_ID:
        if version != SCHEMA_VERSION:
            raise ConfigError("store", f"{path} has schema version {version}; this fedpoison "
                                       f"reads version {SCHEMA_VERSION}")
        if not exact:
            raise ConfigError("store", f"{path} is marked as a fedpoison results store but "
                                       f"holds {_describe(tables)}, not fedpoison's: is it "
                                       "damaged? It was left untouched")
        return "ours"
    if app_id == 0 and version == SCHEMA_VERSION and exact:  # written before the id existed
        return "legacy"
    what = (f"another application's SQLite database: application id {app_id:#010x}, "
            f"{_describe(tables)}" if app_id else
            f"an SQLite database with {_describe(tables)}, user_version {version}")
    raise _refuse(path, what)


def _create(path: Path) -> None:
    """Create an empty store at ``path``: built in a temporary file beside it, then linked
    into place, so no other file ever gets our schema and no reader sees a half-made store.
    If another process creates ``path`` first, its file is left to be recognised."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".new")
    except OSError as e:
        where = folder if not folder.is_dir() else f"a file in {folder}"
        raise ConfigError("store", f"cannot create {where} for the store {path}: "
                                   f"{e.strerror or e}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()  # checkpoints: everything is in the main file, no -wal left
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as SQLite would create it (mkstemp makes 0600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: recognised like any existing file
        except OSError:  # a file system without hard links: copy, still never clobbering
            _copy_exclusive(tmp, path)
    except (OSError, sqlite3.Error) as e:
        raise ConfigError("store", f"cannot create the store {path}: {e}") from None
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)


def _copy_exclusive(src: Path, dest: Path) -> None:
    """Copy ``src`` to a new file ``dest``; nothing if ``dest`` already exists."""
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(src.read_bytes())
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _open(path: Path, readonly: bool) -> sqlite3.Connection:
    """The working connection to the store at ``path``, recognised first."""
    kind = _recognise(path, _screen(path))
    if readonly:
        return _open_readonly(path)
    try:
        db = sqlite3.connect(_uri(path, mode="rw"), uri=True, isolation_level=None, timeout=60)
    except sqlite3.Error as e:
        raise ConfigError("store", f"cannot open {path} for writing: {e} (is it or its "
                                   "folder read-only?)") from None
    try:
        # FULL: a committed run survives power loss, not only a killed process.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA schema_version").fetchone()  # opens the file now
        if kind == "legacy":
            _adopt(db, path)
    except sqlite3.Error as e:
        db.close()
        raise ConfigError("store", f"cannot open {path} for writing: {e} (is it or its folder "
                                   "read-only?)") from None
    except BaseException:
        db.close()
        raise
    return db


def _open_readonly(path: Path) -> sqlite3.Connection:
    """A connection that cannot write. ``mode=ro`` sees runs a sweep is adding right now; a
    WAL store in a folder we cannot write (no ``-shm`` file can be made) and without a WAL
    file has every run in its main file, and is read as ``immutable``."""
    error: sqlite3.Error | None = None
    for params in ({"mode": "ro"}, {"mode": "ro", "immutable": "1"}):
        if "immutable" in params and Path(f"{path}-wal").exists():
            break
        try:
            db = sqlite3.connect(_uri(path, **params), uri=True, isolation_level=None,
                                 timeout=60)
        except sqlite3.Error as e:
            error = e
            continue
        try:
            db.execute("PRAGMA schema_version").fetchone()  # opens the file now
            return db
        except sqlite3.Error as e:
            db.close()
            error = e
    raise ConfigError("store", f"cannot read {path}: {error}")


def _adopt(db: sqlite3.Connection, path: Path) -> None:
    """Mark a store made before the application id existed as ours (checked again under
    the write lock: its tables must still be exactly ours)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if (db.execute("PRAGMA application_id").fetchone()[0] not in (0, APPLICATION_ID)
                or _tables(db) != _our_tables()):
            raise _refuse(path, "an SQLite database whose tables changed while it was opened")
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the id into the main file's header


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
