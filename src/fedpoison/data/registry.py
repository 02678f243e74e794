"""Load any of the paper's datasets by name."""

from __future__ import annotations

from pathlib import Path

from fedpoison.data.base import Dataset
from fedpoison.errors import ConfigError

DATASETS = ("mnist", "fashion-mnist", "ch-mnist", "breast-cancer")
"""Names accepted by :func:`load`, as the paper lists them (Section 4.1)."""


def load(
    name: str,
    *,
    seed: int = 0,
    home: Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Load dataset ``name`` from ``home`` (default :func:`data_home`).

    ``seed`` selects the random train/test split of the datasets the paper splits at random
    (CH-MNIST 4000/1000, breast cancer 455/114); MNIST and Fashion-MNIST have fixed splits and
    ignore it. ``download`` allows fetching missing files; ``progress`` shows a progress bar
    while downloading. Breast cancer ships with scikit-learn and ignores ``home``.
    """
    if name == "mnist":
        from fedpoison.data.mnist import load_mnist

        return load_mnist(home, download=download, progress=progress)
    if name == "fashion-mnist":
        from fedpoison.data.mnist import load_fashion_mnist

        return load_fashion_mnist(home, download=download, progress=progress)
    if name == "ch-mnist":
        from fedpoison.data.ch_mnist import load_ch_mnist

        return load_ch_mnist(home, seed, download=download, progress=progress)
    if name == "breast-cancer":
        from fedpoison.data.breast_cancer import load_breast_cancer

        return load_breast_cancer(seed)
    hint = ""
    if isinstance(name, str):
        spelled = name.strip().lower().replace("_", "-").replace(" ", "-")
        spelled = {"fashionmnist": "fashion-mnist", "chmnist": "ch-mnist"}.get(spelled, spelled)
        if spelled in DATASETS:
            hint = f" (did you mean {spelled!r}?)"
    raise ConfigError("dataset", f"unknown dataset {name!r}{hint}; allowed: {', '.join(DATASETS)}")
