"""Which code produced a result: a fingerprint of the installed package's source."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 (hex, 12 chars) of every ``.py`` and ``.yaml`` file of the package.

    Part of every run's key (``RunConfig.config_hash``), so a results store never serves a
    result computed by different code: editing an attack after a sweep makes the next sweep
    recompute instead of silently reusing stale numbers.
    """
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:12]
