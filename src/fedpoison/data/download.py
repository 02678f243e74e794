"""Checksummed, atomic downloads into the data home.

A dataset file is either present with the right checksum, or absent: a download streams to a
temporary file in the destination folder, is verified, and only then renamed onto its final
name (``os.replace`` is atomic within one file system). Every failure removes the temporary
file and the folders the download created, so an interrupted or corrupt download never looks
like a finished one, and two processes fetching the same file at once cannot see each other's
partial bytes. Every error is one line that names the file, the folder and what to do.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fedpoison.data.home import ENV_DATA
from fedpoison.errors import DataError

ENV_MIRROR = "FEDPOISON_MIRROR"
"""Environment variable with a base URL tried before the built-in mirrors.

The file is looked up at ``<base>/<dataset folder>/<file name>``: a mirror is laid out like
the data home, so serving a copy of a data home over HTTP makes a mirror.
"""

DEFAULT_TIMEOUT = 30.0
"""Seconds a connection may stay silent before that mirror counts as failed."""

_CHUNK = 1 << 20
_USER_AGENT = "fedpoison (python urllib)"


class _MirrorFailed(Exception):
    """One URL failed; the next mirror may still work."""


class DownloadError(DataError):
    """Every mirror of a missing file failed; ``reasons`` says how, one entry per URL."""

    def __init__(self, message: str, reasons: str) -> None:
        super().__init__(message)
        self.reasons = reasons


def exists(path: Path) -> bool:
    """Whether ``path`` exists; a location we may not look into is a :class:`DataError`
    (``Path.exists`` raises ``PermissionError`` there)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise DataError(f"cannot access {path}: {e.strerror or e}; check the permissions of "
                        "its folders") from None
    return True


def file_digests(path: Path, algorithms: Iterable[str]) -> dict[str, str]:
    """Return ``{algorithm: hex digest}`` of the file at ``path``, reading it once."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashers.items()}


def _expected_digests(sha256: str | None, md5: str | None) -> dict[str, str]:
    expected = {}
    if sha256:
        expected["sha256"] = sha256.lower()
    if md5:
        expected["md5"] = md5.lower()
    if not expected:
        raise ValueError("fetch needs an expected sha256 or md5: unverified files are refused")
    return expected


def _mismatch(expected: dict[str, str], actual: dict[str, str]) -> str | None:
    """Describe the first digest that differs, naming both values, or return None."""
    for name, want in expected.items():
        if actual[name] != want:
            return f"{name} mismatch: expected {want}, got {actual[name]}"
    return None


def mirror_urls(filename: str, dest_dir: Path, urls: Sequence[str]) -> list[str]:
    """Return the URLs to try in order: ``$FEDPOISON_MIRROR`` (if set) first, then ``urls``."""
    out: list[str] = []
    base = os.environ.get(ENV_MIRROR, "")
    if base:
        folder = urllib.parse.quote(Path(dest_dir).name)
        out.append(f"{base.rstrip('/')}/{folder}/{urllib.parse.quote(filename)}")
    out.extend(urls)
    return out


def _how_to_install(dest: Path, expected: dict[str, str]) -> str:
    sums = ", ".join(f"{name} {value}" for name, value in expected.items())
    return (
        f"Put the file at {dest} by hand ({sums}), set {ENV_DATA} to a folder that holds "
        f"{dest.parent.name}/{dest.name}, or set {ENV_MIRROR} to a base URL that serves "
        f"<base>/{dest.parent.name}/{dest.name}."
    )


def ensure_writable(folder: Path, filename: str) -> None:
    """Refuse to write into ``folder`` when its permission bits mark it read-only.

    Checked on the mode bits rather than with ``os.access``: a process running as root may
    write anywhere, but a shared data folder made read-only must still stay untouched.
    """
    # A folder that does not exist yet would be created inside its nearest existing ancestor.
    for candidate in (folder, *folder.parents):
        try:
            mode = candidate.stat().st_mode
        except OSError:
            continue
        if not mode & 0o222:
            raise DataError(
                f"{candidate} is read-only, so {folder / filename} cannot be written. Put the "
                f"file there by hand, or set {ENV_DATA} to a writable folder."
            )
        return


def _write(out: BinaryIO, chunk: bytes, tmp: Path) -> None:
    """Write to the temporary file; a local disk error is not a mirror failure."""
    try:
        out.write(chunk)
    except OSError as e:
        raise DataError(f"cannot write {tmp} ({e}): is the disk full?") from e


def _download_one(
    url: str,
    dest: Path,
    expected: dict[str, str],
    *,
    progress: bool,
    timeout: float,
) -> None:
    """Stream ``url`` to a temporary file next to ``dest``, verify it, rename it onto ``dest``.

    Raises :class:`_MirrorFailed` for anything the next mirror might not share (network
    errors, truncation, wrong checksum) and :class:`DataError` for local problems. The
    temporary file is removed on every failure, interrupts included.
    """
    try:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise DataError(
            f"cannot write to {dest.parent} ({e.strerror or e}). Set {ENV_DATA} to a writable "
            f"folder, or put {dest.name} there by hand."
        ) from e
    tmp = Path(tmp_name)
    done = False
    try:
        from tqdm import tqdm  # here, not at import: ``fedpoison run`` never downloads

        hashers = {name: hashlib.new(name) for name in expected}
        received = 0
        total: int | None = None
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.strip().isdigit() else None
                    with tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=dest.name,
                        file=sys.stderr,
                        disable=not progress,
                    ) as bar:
                        while chunk := response.read(_CHUNK):
                            _write(out, chunk, tmp)
                            for h in hashers.values():
                                h.update(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
            except (OSError, http.client.HTTPException, ValueError) as e:
                raise _MirrorFailed(f"{type(e).__name__}: {e}") from e
        if total is not None and received != total:
            raise _MirrorFailed(
                f"connection closed after {received} of {total} bytes (Content-Length)"
            )
        problem = _mismatch(expected, {n: h.hexdigest() for n, h in hashers.items()})
        if problem:
            raise _MirrorFailed(f"downloaded {received} bytes but {problem}")
        os.replace(tmp, dest)
        done = True
    finally:
        if not done:
            tmp.unlink(missing_ok=True)


def fetch(
    filename: str,
    dest_dir: Path,
    urls: Sequence[str],
    sha256: str | None,
    *,
    md5: str | None = None,
    progress: bool = True,
    download: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Return ``dest_dir/filename``, downloading and verifying it first if it is absent.

    ``urls`` are full URLs of the file, tried in order after ``$FEDPOISON_MIRROR``. At least
    one of ``sha256`` and ``md5`` is required, and every one given must match. An existing
    file is verified too, and a wrong one is an error rather than silently replaced: it may
    be a user's own copy. ``download=False`` turns a missing file into an error that says
    where to put it. ``progress`` shows a tqdm bar on stderr.

    Raises :class:`DataError` naming the file, the hashes or URLs involved, and what to do.
    """
    expected = _expected_digests(sha256, md5)
    dest_dir = Path(dest_dir)
    dest = dest_dir / filename
    if exists(dest):
        if not dest.is_file():
            raise DataError(f"{dest} exists but is not a regular file: remove it and run again.")
        try:
            digests = file_digests(dest, expected)
        except OSError as e:
            raise DataError(f"cannot read {dest}: {e.strerror or e}; check its permissions "
                            "(and its folder's)") from None
        problem = _mismatch(expected, digests)
        if problem:
            raise DataError(
                f"{dest} exists but its {problem}. The file is corrupt or a different "
                "version: delete it (or replace it with a correct copy) and run again to "
                "download it."
            )
        return dest

    candidates = mirror_urls(filename, dest_dir, urls)
    if not download:
        raise DataError(
            f"{filename} is missing in {dest_dir} and downloading is disabled (download=False); "
            f"it can be downloaded from {' or '.join(candidates)}. "
            f"{_how_to_install(dest, expected)}"
        )
    ensure_writable(dest_dir, filename)
    created = [d for d in (dest_dir, *dest_dir.parents) if not exists(d)]
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(created)
        raise DataError(
            f"cannot create {dest_dir} ({e.strerror or e}). Set {ENV_DATA} to a writable folder, "
            f"or create it and put {filename} there by hand."
        ) from None

    failures: list[str] = []
    done = False
    try:
        for url in candidates:
            try:
                _download_one(url, dest, expected, progress=progress, timeout=timeout)
            except _MirrorFailed as e:
                failures.append(f"{url}: {e}")
            else:
                done = True
                return dest
    finally:
        if not done:
            _remove_empty(created)
    reasons = "; ".join(failures) if failures else "no download URL is known"
    raise DownloadError(
        f"could not download {filename} into {dest_dir} ({reasons}). "
        f"{_how_to_install(dest, expected)}",
        reasons,
    )


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders a failed download created (deepest first), if still empty."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (another process put something there) or already gone


class DecodeCache:
    """Decoded files, cached in this process and, with ``disk``, as arrays on disk.

    In process: values keyed by path and the file's mtime and size. Decoding MNIST from gzip
    takes about half a second; a sweep of many runs in one process should pay it once. A file
    replaced on disk gets a new mtime or size and is decoded (and verified) again. Cached
    values must be treated as immutable: store read-only arrays and copy them on the way out.

    On disk (``disk`` names a folder under :func:`~fedpoison.data.home.cache_home`, never
    the data home, which may be a shared read-only copy)::

        <cache>/decoded/<disk>/<sha256>.<tag>.npy     decoded arrays, memory-mapped back
        <cache>/decoded/sources/<key>.json            verified SHA-256 of a source file

    A decoded array is named by the SHA-256 of the source file it came from (and a ``tag``
    for what was derived), so it can only be reused for those exact bytes. Hashing the
    source again on every start would cost more than reading the array (MNIST: ~12 MB of
    gzip), so when a source is verified its SHA-256 is recorded together with the file's
    identity (absolute path, size, mtime_ns, ctime_ns, inode); while that identity is
    unchanged the recorded SHA-256 is trusted. Any change to the file (a rewrite, a
    replacement, ``touch``) changes the identity, and the file is verified again. Every file
    is written to a temporary name and renamed into place, so concurrent processes never
    read a partial file. An unreadable or damaged cache file counts as absent; a cache folder
    that cannot be written only costs speed. Delete ``<cache>/decoded`` to force a re-decode.
    """

    FORMAT = 1
    """Bumped when what is stored changes: files of another format are ignored."""

    def __init__(self, disk: str | None = None) -> None:
        self._entries: dict[Path, tuple[tuple[int, int], Any]] = {}
        self._lock = threading.Lock()
        self._disk = disk

    @staticmethod
    def _key(path: Path) -> tuple[Path, tuple[int, int]] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return path.absolute(), (st.st_mtime_ns, st.st_size)

    def get(self, path: Path) -> Any | None:
        """Return the value stored for ``path`` if the file is unchanged since, else None."""
        key = self._key(Path(path))
        if key is None:
            return None
        with self._lock:
            entry = self._entries.get(key[0])
        return entry[1] if entry is not None and entry[0] == key[1] else None

    def put(self, path: Path, value: Any) -> None:
        """Remember ``value`` for the current version of the file at ``path``."""
        key = self._key(Path(path))
        if key is not None:
            with self._lock:
                self._entries[key[0]] = (key[1], value)

    def clear(self) -> None:
        """Forget everything held in this process (tests use this to measure a cold load);
        files on disk stay."""
        with self._lock:
            self._entries.clear()

    # ------------------------------------------------------------------------ on disk
    def _folder(self) -> Path | None:
        if self._disk is None:
            return None
        from fedpoison.data.home import cache_home

        return cache_home() / "decoded"

    @staticmethod
    def _identity(path: Path) -> dict[str, Any] | None:
        try:
            st = Path(path).stat()
        except OSError:
            return None
        return {"path": str(Path(path).absolute()), "size": st.st_size,
                "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino,
                "format": DecodeCache.FORMAT}

    def _stamp(self, path: Path) -> Path | None:
        folder = self._folder()
        if folder is None:
            return None
        name = hashlib.sha256(str(Path(path).absolute()).encode()).hexdigest()[:32]
        return folder / "sources" / f"{name}.json"

    def verified_sha256(self, path: Path) -> str | None:
        """The SHA-256 recorded when ``path`` was last verified, if the file is still the one
        recorded (same path, size, mtime_ns, ctime_ns and inode); else None."""
        stamp, identity = self._stamp(path), self._identity(path)
        if stamp is None or identity is None:
            return None
        try:
            record = json.loads(stamp.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or any(record.get(k) != v for k, v in identity.items()):
            return None
        digest = record.get("sha256")
        return digest if isinstance(digest, str) else None

    def record_verified(self, path: Path, sha256: str) -> None:
        """Record that the file now at ``path`` was verified to have this SHA-256."""
        stamp, identity = self._stamp(path), self._identity(path)
        if stamp is not None and identity is not None:
            body = json.dumps({**identity, "sha256": sha256.lower()}, sort_keys=True)
            _write_atomic(stamp, lambda f: f.write(body.encode()))

    def _array_path(self, sha256: str, tag: str) -> Path | None:
        folder = self._folder()
        if folder is None or self._disk is None:
            return None
        return folder / self._disk / f"{sha256.lower()}.{tag}.v{self.FORMAT}.npy"

    def load_array(self, sha256: str, tag: str) -> np.ndarray | None:
        """The array stored for (source SHA-256, tag), memory-mapped copy-on-write (writes
        to it stay private to the caller), or None when absent or unreadable."""
        target = self._array_path(sha256, tag)
        if target is None:
            return None
        try:
            return np.load(target, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError):
            return None

    def store_array(self, sha256: str, tag: str, array: np.ndarray) -> bool:
        """Store ``array`` for (source SHA-256, tag); False when the cache is not writable."""
        target = self._array_path(sha256, tag)
        if target is None:
            return False
        return _write_atomic(target, lambda f: np.save(f, array, allow_pickle=False))


def _write_atomic(target: Path, write: Callable[[BinaryIO], Any]) -> bool:
    """Write a file through a temporary name in its folder and rename it into place.
    Returns False (and leaves nothing behind) when the folder cannot be written."""
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
        tmp = None
        return True
    except OSError:
        return False
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
