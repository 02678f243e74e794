"""Datasets, the data home, and the non-IID split over workers.

Each dataset registers itself in its own module (:func:`fedpoison.register_dataset`);
importing this package registers the built-in ones (MNIST, Fashion-MNIST, CH-MNIST,
Breast Cancer Wisconsin).
"""

from __future__ import annotations

from fedpoison.data.base import Dataset
from fedpoison.data.home import cache_home, data_home
from fedpoison.data.partition import Partition, noniid_partition
from fedpoison.data.registry import load
from fedpoison.registry import import_submodules

__all__ = [
    "Dataset",
    "Partition",
    "cache_home",
    "data_home",
    "load",
    "noniid_partition",
]

# Every module of this package registers its components when imported: a new component needs
# only its own file.
import_submodules(__name__, __path__)
