"""CIFAR-10 from the official binary distribution, ``cifar-10-binary.tar.gz``.

The archive (Krizhevsky, 2009; https://www.cs.toronto.edu/~kriz/cifar.html) holds
``cifar-10-batches-bin/data_batch_1.bin`` … ``data_batch_5.bin`` (10,000 training records
each) and ``test_batch.bin`` (10,000 test records). A record is 3073 bytes: the label
(0–9), then the 32×32 image's 1024 red, 1024 green and 1024 blue bytes, each channel row by
row. The binary version is read, never the Python version: unpickling a downloaded file can
run code.

The archive is read in place (members streamed out of the gzip, nothing extracted to
disk), pinned by its SHA-256 and the MD5 that the dataset's page publishes. Images become
float32 ``[n, 3, 32, 32]`` equal to ``uint8 / 255``, labels int64: 50,000 train / 10,000
test, the official split.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch

from fedpoison.data.base import Dataset
from fedpoison.data.download import DecodeCache, fetch
from fedpoison.data.home import dataset_dir
from fedpoison.errors import DataError
from fedpoison.registry import register_dataset

NAME = "cifar-10"
ARCHIVE = "cifar-10-binary.tar.gz"
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
URLS = (OFFICIAL_URL,)
"""Where the archive is downloaded from (after ``$FEDPOISON_MIRROR``)."""

MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
"""The MD5 published on the dataset's page."""
SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
"""The SHA-256 of the same 170,052,171-byte archive, as pinned by independent loaders."""

FOLDER = "cifar-10-batches-bin"
TRAIN_MEMBERS = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_MEMBER = "test_batch.bin"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
NUM_CLASSES = 10
CHANNELS, SIZE = 3, 32
RECORD = 1 + CHANNELS * SIZE * SIZE  # 3073 bytes: label, then R, G, B planes

_CACHE = DecodeCache()


def _decode(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 3, 32, 32], labels uint8 [n]) of one batch file's bytes."""
    if not data or len(data) % RECORD:
        raise DataError(f"{where}: {len(data)} bytes is not a whole number of {RECORD}-byte "
                        "records (1 label byte + 3072 pixel bytes); the archive is damaged")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0]
    if int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{where}: label {int(labels.max())} is not in 0..{NUM_CLASSES - 1}")
    images = records[:, 1:].reshape(-1, CHANNELS, SIZE, SIZE)
    return images, labels


def read_archive(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode the binary archive at ``path`` without extracting it: (train images, train
    labels, test images, test labels) as read-only uint8 arrays, train batches 1..5 in order.

    Raises DataError naming the archive and the member at fault (missing, not a regular
    file, or not whole records).
    """
    wanted = {f"{FOLDER}/{m}" for m in (*TRAIN_MEMBERS, TEST_MEMBER)}
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.name not in wanted:
                    continue
                where = f"{path} member {member.name}"
                if member.name in found:
                    raise DataError(f"{where} appears twice; the archive is not the original")
                fh = tar.extractfile(member) if member.isfile() else None
                if fh is None:
                    raise DataError(f"{where} is not a regular file; the archive is not the "
                                    "original")
                found[member.name] = _decode(fh.read(), where)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read it as a .tar.gz archive ({e}); delete it and "
                        "run again to download it") from e
    missing = sorted(wanted - found.keys())
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; it is not the CIFAR-10 binary "
                        f"archive ({ARCHIVE})")
    train = [found[f"{FOLDER}/{m}"] for m in TRAIN_MEMBERS]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    x_test, y_test = found[f"{FOLDER}/{TEST_MEMBER}"]
    arrays = (x_train, y_train, np.ascontiguousarray(x_test), np.ascontiguousarray(y_test))
    for a in arrays:
        a.flags.writeable = False
    return arrays


def load_cifar10(
    home: Path | None = None, *, download: bool = True, progress: bool = True
) -> Dataset:
    """Load CIFAR-10 from ``<home>/cifar-10/cifar-10-binary.tar.gz`` (default home:
    :func:`~fedpoison.data.home.data_home`), downloading and verifying it there if absent and
    ``download`` is true; otherwise the DataError says which file to put in which folder.

    Returns images float32 ``[n, 3, 32, 32]`` in [0, 1] and labels int64 (10 classes,
    :data:`CLASSES`); the official archive gives 50,000 train and 10,000 test images.
    """
    folder = dataset_dir(NAME, home)
    path = folder / ARCHIVE
    arrays = _CACHE.get(path)
    if arrays is None:
        fetch(ARCHIVE, folder, URLS, SHA256, md5=MD5, progress=progress, download=download)
        arrays = read_archive(path)
        _CACHE.put(path, arrays)
    x_train, y_train, x_test, y_test = arrays
    tensors = []
    for x, y in ((x_train, y_train), (x_test, y_test)):
        xf = x.astype(np.float32)  # a fresh writable copy: the cached array stays intact
        xf /= 255
        tensors += [torch.from_numpy(xf), torch.from_numpy(y.astype(np.int64))]
    return Dataset(NAME, *tensors, NUM_CLASSES)


def _load(seed: int = 0, home: Path | None = None, download: bool = True,
          progress: bool = True) -> Dataset:
    return load_cifar10(home, download=download, progress=progress)


register_dataset(
    "cifar-10", _load,
    reference="Krizhevsky, 'Learning Multiple Layers of Features from Tiny Images', 2009 "
              "(the official binary distribution)",
    summary="32×32 colour images, 10 classes, 50,000/10,000 (fixed split)",
    num_classes=NUM_CLASSES, input_shape=(CHANNELS, SIZE, SIZE),
)
