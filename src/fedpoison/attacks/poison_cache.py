"""On-disk cache of generated poisoned points (back-gradient poisoning takes minutes).

A poisoned set is stored as ``<cache>/poison/<name>-<key>.pt``, ``key`` a SHA-256 of every
parameter that changes the points (the caller lists them; the package version is always
added). ``<cache>`` is :func:`fedpoison.data.home.cache_home` (``$FEDPOISON_CACHE``, else
``<user cache>/fedpoison-cache``), never the data home: the data home is input and may be a
shared copy, so nothing derived is written there. When the cache folder cannot be written the
cache is off: a warning names the folder and the points are computed every time. Writes are
atomic (temporary file in the same folder, then ``os.replace``), so an interrupted or
concurrent run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedpoison import __version__
from fedpoison.data.home import ENV_CACHE, cache_home

__all__ = ["ENV_CACHE", "cache_dir", "cache_key", "cached", "tensor_digest"]

SUBDIR = "poison"


def cache_key(params: Mapping[str, Any]) -> str:
    """SHA-256 (hex, 24 chars) of ``params`` plus the package version, as canonical JSON."""
    blob = json.dumps({**params, "version": __version__}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def tensor_digest(*tensors: Tensor) -> str:
    """SHA-256 (hex, 16 chars) of the tensors' dtypes, shapes and bytes (e.g. the data)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """The folder of the poison cache: ``<cache_home()>/poison``."""
    return cache_home() / SUBDIR


def _writable(folder: Path) -> bool:
    """True when a file can be created in ``folder`` (created if missing).

    A folder (or, while it does not exist, its nearest existing parent) whose mode grants
    nobody write permission counts as read-only even for root, who could write it anyway:
    a shared dataset copy marked ``r-x`` is left untouched.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if existing.is_dir() and stat.S_IMODE(existing.stat().st_mode) & 0o222 == 0:
            return False
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError:
        return False
    return True


def _read(path: Path, key: str) -> tuple[Tensor, Tensor] | None:
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None  # unreadable or corrupt: recompute (and overwrite when writable)
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    return entry["x"], entry["y"]


def _write(path: Path, key: str, params: Mapping[str, Any], x: Tensor, y: Tensor) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"key": key, "params": json.dumps(dict(params), default=str),
                        "x": x.detach().cpu(), "y": y.detach().cpu()}, fh)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache should be readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached(
    name: str,
    params: Mapping[str, Any],
    compute: Callable[[], tuple[Tensor, Tensor]],
    info: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """Return the cached (x, y) for ``params``, computing and storing it on a miss.

    ``info``, when given, receives ``hit`` (bool) and ``path`` (the entry's file, or None
    when the cache is off).
    """
    key = cache_key({"name": name, **params})
    folder = cache_dir()
    path = folder / f"{name}-{key}.pt"
    if path.is_file():
        hit = _read(path, key)
        if hit is not None:
            if info is not None:
                info.update(hit=True, path=path)
            return hit
    writable = _writable(folder)
    if not writable:
        warnings.warn(
            f"poison cache is off: {folder} is not writable; computing the {name} poison now "
            f"(set {ENV_CACHE} to a writable folder to keep it)",
            RuntimeWarning,
            stacklevel=2,
        )
    x, y = compute()
    if writable:
        _write(path, key, params, x, y)
    if info is not None:
        info.update(hit=False, path=path if writable else None)
    return x, y
