"""The two folders fedpoison reads and writes besides a results store: the data home (input)
and the cache folder (files derived from the code and the data, safe to delete).

Kept outside :mod:`fedpoison.data` so that asking where they are imports nothing heavy.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA = "FEDPOISON_DATA"
"""Environment variable that overrides the data home."""

ENV_CACHE = "FEDPOISON_CACHE"
"""Environment variable that overrides the cache folder (derived files we may recompute)."""



def absolute(path: Path) -> Path:
    """Expand ``~`` and make ``path`` absolute and normalized (``a/../b`` -> ``b``) without
    resolving symlinks, so messages show the path the user gave, only complete."""
    return Path(os.path.abspath(path.expanduser()))


def data_home() -> Path:
    """Return the data home: ``$FEDPOISON_DATA`` if set and non-empty, else the user cache.

    The user cache is ``$XDG_CACHE_HOME/fedpoison`` when ``XDG_CACHE_HOME`` is an absolute
    path (the XDG spec says to ignore relative values), else ``~/.cache/fedpoison``. The
    result is absolute and normalized, so error messages can name exact file locations. The
    folder is not created here: downloads create what they need, and a read-only home stays
    untouched.
    """
    explicit = os.environ.get(ENV_DATA, "")
    if explicit:
        return absolute(Path(explicit))
    return absolute(_user_cache() / "fedpoison")


def _user_cache() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"


def cache_home() -> Path:
    """Return the cache folder: ``$FEDPOISON_CACHE`` if set and non-empty, else
    ``<user cache>/fedpoison-cache``.

    It holds files fedpoison derives and can recompute (decoded datasets, generated poison
    sets), never input data, and is never inside the data home: the data home is input and
    may be a shared read-only copy. Not created here; writers create what they need.
    """
    explicit = os.environ.get(ENV_CACHE, "")
    if explicit:
        return absolute(Path(explicit))
    return absolute(_user_cache() / "fedpoison-cache")
