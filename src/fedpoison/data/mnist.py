"""MNIST and Fashion-MNIST from the original IDX ``.gz`` files.

Both have the paper's fixed split (60,000 train / 10,000 test, Section 4.1), 28x28 grayscale
images and 10 classes. Images become float32 ``[n, 1, 28, 28]`` equal to ``uint8 / 255``.
The SHA-256s are those of the original public files (``shared/datasets/SHA256SUMS``), so a
file from any mirror, or put in place by hand, is checked against the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedpoison.data.base import Dataset
from fedpoison.data.download import ENV_MIRROR, DecodeCache, DownloadError, exists, fetch
from fedpoison.data.home import ENV_DATA, check_not_nested, dataset_dir
from fedpoison.data.idx import read_idx_images, read_idx_labels
from fedpoison.errors import DataError
from fedpoison.registry import register_dataset

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
"""Base URLs of MNIST, tried in order (after ``$FEDPOISON_MIRROR``)."""

FASHION_MNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
"""Base URLs of Fashion-MNIST."""

MNIST_SHA256 = {
    TRAIN_IMAGES: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    TRAIN_LABELS: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    TEST_IMAGES: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    TEST_LABELS: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

FASHION_MNIST_SHA256 = {
    TRAIN_IMAGES: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    TRAIN_LABELS: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    TEST_IMAGES: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    TEST_LABELS: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}

FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
NUM_CLASSES = 10
IMAGE_SIZE = 28

_CACHE = DecodeCache(disk="idx")  # MNIST and Fashion-MNIST, told apart by SHA-256


def _decoded(raw: np.ndarray, images: bool) -> np.ndarray:
    """What a Dataset holds: images float32 [n, 1, H, W] = uint8 / 255, labels int64 [n]."""
    if not images:
        return raw.astype(np.int64)
    x = raw.astype(np.float32)[:, None]
    x /= 255
    return x


def _read(
    filename: str,
    folder: Path,
    mirrors: tuple[str, ...],
    sha256: str,
    *,
    images: bool,
    download: bool,
    progress: bool,
) -> np.ndarray:
    """The verified, decoded array of one IDX file (see :func:`_decoded`), a fresh writable
    one on every call.

    Fast path: the source was verified before and is unchanged (its recorded SHA-256 is the
    expected one), and the decoded array is in the cache folder: it is memory-mapped
    copy-on-write (no hashing, no gzip, no copy; ~0.03 s for MNIST instead of ~0.7 s).
    Otherwise the file is verified (or downloaded), decoded, and stored for the next time.
    """
    path = folder / filename
    tag = "float32-scaled" if images else "int64"
    if _CACHE.verified_sha256(path) == sha256:
        array = _CACHE.load_array(sha256, tag)
        if array is not None:
            return array
    raw = _CACHE.get(path)  # read-only, verified and decoded earlier in this process
    if raw is None:
        urls = [base + filename for base in mirrors]
        fetch(filename, folder, urls, sha256, progress=progress, download=download)
        raw = read_idx_images(path) if images else read_idx_labels(path)
        _CACHE.put(path, raw)
    array = _decoded(raw, images)
    if _CACHE.store_array(sha256, tag, array):
        _CACHE.record_verified(path, sha256)
    return array


def _load(
    name: str,
    home: Path | None,
    mirrors: tuple[str, ...],
    sha256s: dict[str, str],
    *,
    download: bool,
    progress: bool,
) -> Dataset:
    folder = dataset_dir(name, home)
    _ensure_files(name, folder, mirrors, sha256s, download=download, progress=progress)
    tensors = []
    for images_file, labels_file in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        common = {"download": download, "progress": progress}
        images = _read(images_file, folder, mirrors, sha256s[images_file], images=True, **common)
        labels = _read(labels_file, folder, mirrors, sha256s[labels_file], images=False, **common)
        if images.shape[1:] != (1, IMAGE_SIZE, IMAGE_SIZE) or images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{folder}: {images_file} holds images {images.shape[:1] + images.shape[2:]} "
                f"but {labels_file} {labels.shape[0]} labels; expected [n, {IMAGE_SIZE}, "
                f"{IMAGE_SIZE}] and n labels"
            )
        if labels.size and int(labels.max()) >= NUM_CLASSES:
            raise DataError(f"{folder / labels_file}: label {int(labels.max())} is not in 0..9")
        tensors.append(torch.from_numpy(images))
        tensors.append(torch.from_numpy(labels))
    x_train, y_train, x_test, y_test = tensors
    return Dataset(name, x_train, y_train, x_test, y_test, NUM_CLASSES)


def _ensure_files(
    name: str,
    folder: Path,
    mirrors: tuple[str, ...],
    sha256s: dict[str, str],
    *,
    download: bool,
    progress: bool,
) -> None:
    """Download the files missing from ``folder``; when that is impossible, one error names
    every missing file and the folder (not only the first file)."""
    missing = [f for f in FILES if not exists(folder / f)]
    if not missing:
        return
    check_not_nested(name, folder, missing)
    what = f"{len(missing)} of {len(FILES)} files" if len(missing) < len(FILES) else "its files"
    where = (f"put them there by hand (SHA-256s: fedpoison.data.mnist."
             f"{'MNIST' if name == 'mnist' else 'FASHION_MNIST'}_SHA256) or set {ENV_DATA} to a "
             f"folder that holds {folder.name}/")
    if not download:
        raise DataError(f"{name} is missing {what} in {folder}: {', '.join(missing)}; "
                        f"downloading is disabled: {where}")
    for i, filename in enumerate(missing):
        try:
            fetch(filename, folder, [base + filename for base in mirrors], sha256s[filename],
                  progress=progress)
        except DownloadError as e:
            still = missing[i:]
            raise DataError(
                f"{name} is missing {', '.join(still)} in {folder} and the download failed "
                f"({e.reasons}): {where}, or set {ENV_MIRROR} to a mirror"
            ) from None


def load_mnist(
    home: Path | None = None, *, download: bool = True, progress: bool = True
) -> Dataset:
    """Load MNIST from ``<home>/mnist/`` (default home: :func:`data_home`), downloading it
    there if absent and ``download`` is true."""
    return _load("mnist", home, MNIST_MIRRORS, MNIST_SHA256, download=download, progress=progress)


def load_fashion_mnist(
    home: Path | None = None, *, download: bool = True, progress: bool = True
) -> Dataset:
    """Load Fashion-MNIST from ``<home>/fashion-mnist/``, downloading it if absent and
    ``download`` is true."""
    return _load(
        "fashion-mnist",
        home,
        FASHION_MNIST_MIRRORS,
        FASHION_MNIST_SHA256,
        download=download,
        progress=progress,
    )


def _load_mnist(seed: int = 0, home: Path | None = None, download: bool = True,
                progress: bool = True) -> Dataset:
    return load_mnist(home, download=download, progress=progress)


def _load_fashion_mnist(seed: int = 0, home: Path | None = None, download: bool = True,
                        progress: bool = True) -> Dataset:
    return load_fashion_mnist(home, download=download, progress=progress)


register_dataset(
    "mnist", _load_mnist,
    reference="LeCun, Bottou, Bengio, Haffner, 1998; Fang et al. Section 4.1",
    summary="handwritten digits, 28×28 grayscale, 10 classes, 60,000/10,000 (fixed split)",
    num_classes=NUM_CLASSES, input_shape=(1, IMAGE_SIZE, IMAGE_SIZE),
)
register_dataset(
    "fashion-mnist", _load_fashion_mnist,
    reference="Xiao, Rasul, Vollgraf, 2017; Fang et al. Section 4.1 (batch 64)",
    summary="clothing images, 28×28 grayscale, 10 classes, 60,000/10,000 (fixed split)",
    num_classes=NUM_CLASSES, input_shape=(1, IMAGE_SIZE, IMAGE_SIZE),
    defaults={"batch_size": 64},
)
