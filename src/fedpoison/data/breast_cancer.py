"""Breast Cancer Wisconsin (Diagnostic), as shipped with scikit-learn.

569 examples with 30 real-valued features, 2 classes (0 = malignant, 1 = benign, sklearn's
coding). The paper (Section 4.1) splits it at random into 455 training (80%) and 114 test
examples; the split here is a pure function of the run seed.

The feature means span over five orders of magnitude (fractal dimension error ~0.004, worst
area ~880), so they are standardized with the training split's mean and standard deviation: on
raw features the largest-scale ones dominate the gradient and no single SGD learning rate
suits them all. The test split uses the training statistics, so nothing about it leaks into
training.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from fedpoison.data.base import Dataset
from fedpoison.errors import DataError
from fedpoison.registry import register_dataset

NUM_TRAIN = 455
NUM_TEST = 114
NUM_FEATURES = 30
NUM_CLASSES = 2


def random_split_indices(
    n: int, n_train: int, seed: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return (train, test) indices of a uniformly random split of ``range(n)``.

    The permutation comes from a stream keyed by ``(seed, name)``, independent of the run's
    other random streams (worker partition, compromised workers, ...), so changing anything
    else in a run leaves its train/test split unchanged. Each part is sorted, which keeps the
    examples in file order within a split.
    """
    salt = zlib.crc32(f"train-test-split:{name}".encode())
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), salt]))
    perm = rng.permutation(n)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def load_breast_cancer(seed: int = 0) -> Dataset:
    """Load the dataset with a seeded 455/114 split and train-standardized float32 features."""
    from sklearn.datasets import load_breast_cancer as sklearn_load

    bunch = sklearn_load()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    if x.shape != (NUM_TRAIN + NUM_TEST, NUM_FEATURES) or y.shape != (x.shape[0],):
        raise DataError(
            f"scikit-learn's breast cancer data has shape {x.shape}, expected "
            f"({NUM_TRAIN + NUM_TEST}, {NUM_FEATURES}): check the scikit-learn installation"
        )
    train, test = random_split_indices(x.shape[0], NUM_TRAIN, seed, "breast-cancer")
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std == 0] = 1.0  # a constant feature stays constant (0) instead of dividing by zero
    x = (x - mean) / std
    return Dataset(
        "breast-cancer",
        torch.from_numpy(x[train].astype(np.float32)),
        torch.from_numpy(y[train]),
        torch.from_numpy(x[test].astype(np.float32)),
        torch.from_numpy(y[test]),
        NUM_CLASSES,
    )


def _load(seed: int = 0, home: object = None, download: bool = True,
          progress: bool = True) -> Dataset:
    return load_breast_cancer(seed)


register_dataset(
    "breast-cancer", _load,
    reference="Wolberg, Street, Mangasarian, 1995 (UCI Breast Cancer Wisconsin Diagnostic); "
              "Fang et al. Section 4.1",
    summary="30 tabular features, 2 classes, a seeded 455/114 split (ships with scikit-learn)",
    num_classes=NUM_CLASSES, input_shape=(NUM_FEATURES,), seeded_split=True,
)
