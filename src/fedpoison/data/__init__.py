"""Datasets, the data home, and the non-IID split over workers."""

from __future__ import annotations

from fedpoison.data.base import Dataset
from fedpoison.data.home import data_home
from fedpoison.data.partition import Partition, iid_partition, noniid_partition
from fedpoison.data.registry import DATASETS, load

__all__ = [
    "DATASETS",
    "Dataset",
    "Partition",
    "data_home",
    "iid_partition",
    "load",
    "noniid_partition",
]
