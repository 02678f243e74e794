"""Where datasets live on disk.

The data home holds one folder per dataset, laid out like the offline copy in
``shared/datasets``::

    <home>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <home>/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    <home>/ch-mnist/hmnist_64_64_L.csv
    <home>/breast-cancer/            (unused: the data ships with scikit-learn)

``FEDPOISON_DATA`` points at a home (for example a shared read-only copy); without it the
home is a per-user cache folder, so downloads are made once per user.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fedpoison.errors import DataError
from fedpoison.paths import ENV_CACHE, ENV_DATA, absolute, cache_home, data_home

__all__ = ["ENV_CACHE", "ENV_DATA", "cache_home", "check_not_nested", "data_home",
           "dataset_dir"]


def dataset_dir(folder: str, home: Path | None = None) -> Path:
    """Return the dataset folder ``folder`` under ``home`` (default :func:`data_home`)."""
    base = data_home() if home is None else absolute(Path(home))
    return base / folder


def check_not_nested(name: str, folder: Path, missing: Iterable[str]) -> None:
    """Refuse a data home given one level too deep, before anything is downloaded.

    ``folder`` is dataset ``name``'s folder under the home and ``missing`` the files absent
    from it. When the home itself holds them (``FEDPOISON_DATA=/x/mnist`` with the ``.gz``
    files in ``/x/mnist``), downloading would put a second copy in ``/x/mnist/mnist``: the
    error names the folder to use instead.
    """
    home = folder.parent
    found = [f for f in missing if (home / f).is_file()]
    if not found:
        return
    files = ", ".join(found)
    if home.name == folder.name:
        fix = f"set {ENV_DATA}={home.parent} (the folder that holds {folder.name}/)"
    else:
        fix = f"move them into {folder}"
    raise DataError(
        f"the data home {home} holds {files} itself, but a data home holds one folder per "
        f"dataset ({folder.name}/...): {fix}"
    )
