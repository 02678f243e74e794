"""Datasets, the data home, and the non-IID split over workers.

Each dataset registers itself in its own module (:func:`fedpoison.register_dataset`);
importing this package registers the built-in ones (MNIST, Fashion-MNIST, CH-MNIST,
Breast Cancer Wisconsin).
"""

from __future__ import annotations

from fedpoison.data import breast_cancer, ch_mnist, cifar10, mnist  # noqa: F401  (registration)
from fedpoison.data.base import Dataset
from fedpoison.data.home import cache_home, data_home
from fedpoison.data.partition import Partition, noniid_partition
from fedpoison.data.registry import load

__all__ = [
    "Dataset",
    "Partition",
    "cache_home",
    "data_home",
    "load",
    "noniid_partition",
]
