"""Load any registered dataset by name."""

from __future__ import annotations

from pathlib import Path

from fedpoison import registry
from fedpoison.data.base import Dataset
from fedpoison.errors import DataError


def load(
    name: str,
    *,
    seed: int = 0,
    home: Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Load dataset ``name`` (``fedpoison list datasets``) from ``home`` (default
    :func:`fedpoison.data.data_home`).

    ``seed`` selects the random train/test split of the datasets that are split at random
    (CH-MNIST 4000/1000, breast cancer 455/114); datasets with a fixed split ignore it.
    ``download`` allows fetching missing files; ``progress`` shows a progress bar while
    downloading. An unknown name raises ``ConfigError`` listing the registered ones.
    """
    spec = registry.get("dataset", name)
    ds = spec.impl(seed=seed, home=home, download=download, progress=progress)
    if not isinstance(ds, Dataset):
        raise DataError(f"dataset {spec.name}: its loader returned {type(ds).__name__}, "
                        "not a fedpoison.data.Dataset")
    if ds.num_classes != spec.num_classes or tuple(ds.input_shape) != tuple(spec.input_shape):
        raise DataError(
            f"dataset {spec.name}: registered with {spec.num_classes} classes and input shape "
            f"{list(spec.input_shape)}, but the loader returned {ds.num_classes} classes and "
            f"{list(ds.input_shape)}"
        )
    return ds
