"""CH-MNIST: colorectal histology tiles (Kather et al. 2016) as 64x64 grayscale images.

The paper (Section 4.1) uses 5000 images in 8 classes, split at random into 4000 training and
1000 test examples. The file it came from is Kaggle's ``hmnist_64_64_L.csv`` (dataset
``kmader/colorectal-histology-mnist``): a header ``pixel0000..pixel4095,label``, then one row
per image with 4096 row-major pixel values 0..255 and the label 1..8.

Kaggle needs a login, so the automatic path downloads the original tiles instead (Zenodo
record 53169, ``Kather_texture_2016_image_tiles_5000.zip``: 150x150 RGB TIFFs in folders
``01_TUMOR`` .. ``08_EMPTY``) and builds the same CSV from them: grayscale (PIL mode ``L``,
ITU-R 601-2 luma), resized to 64x64 (bicubic, PIL's default for this mode), flattened row-major,
label = class folder number. Kaggle does not document its resampling filter, so a rebuilt CSV
may differ slightly in pixel values from Kaggle's; the zip's md5 below comes from public
loader code and has not been verified against a download here.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import warnings
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from fedpoison.data.base import Dataset
from fedpoison.data.breast_cancer import random_split_indices
from fedpoison.data.download import DecodeCache, DownloadError, ensure_writable, exists, fetch
from fedpoison.data.home import ENV_DATA, check_not_nested, dataset_dir
from fedpoison.errors import DataError
from fedpoison.registry import register_dataset

CSV_NAME = "hmnist_64_64_L.csv"
ZIP_NAME = "Kather_texture_2016_image_tiles_5000.zip"
ZIP_URLS = (f"https://zenodo.org/record/53169/files/{ZIP_NAME}",)
ZIP_MD5 = "0ddbebfc56344752028fda72602aaade"
"""md5 of the Zenodo zip as listed by public loader code; not verified against a download."""

KAGGLE_DATASET = "kmader/colorectal-histology-mnist"
CLASS_FOLDERS = (
    "01_TUMOR",
    "02_STROMA",
    "03_COMPLEX",
    "04_LYMPHO",
    "05_DEBRIS",
    "06_MUCOSA",
    "07_ADIPOSE",
    "08_EMPTY",
)
NUM_CLASSES = 8
NUM_ROWS = 5000
PER_CLASS = 625
SIDE = 64
NUM_PIXELS = SIDE * SIDE
HEADER = (*(f"pixel{i:04d}" for i in range(NUM_PIXELS)), "label")
"""Column names of ``hmnist_64_64_L.csv``."""

_CLASS_DIR = re.compile(r"0([1-8])_[A-Za-z]+")
_CACHE = DecodeCache()


def read_csv(path: Path, *, expected_rows: int | None = NUM_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate an ``hmnist_64_64_L.csv``-format file.

    Returns read-only arrays: pixels uint8 ``[n, 4096]`` and labels int64 ``[n]`` in 1..8.
    ``expected_rows=None`` accepts any positive number of rows (for small test files).
    """
    path = Path(path)
    advice = f"delete it and get a correct copy ({CSV_NAME} from Kaggle {KAGGLE_DATASET})"
    try:
        with open(path, "rb") as f:
            first = f.readline().decode("utf-8", errors="replace")
            columns = [c.strip().strip('"') for c in first.strip().split(",")]
            if tuple(columns) != HEADER:
                raise DataError(
                    f"{path}: the header is not pixel0000,...,pixel4095,label (found "
                    f"{len(columns)} columns starting {columns[:2]} and ending {columns[-1:]}); "
                    f"{advice}"
                )
            with warnings.catch_warnings():
                # An empty body is reported below as a DataError, not as a warning.
                warnings.filterwarnings("ignore", "loadtxt: input contained no data")
                table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise DataError(
            f"{path}: every row must hold {NUM_PIXELS + 1} integers ({e}); {advice}"
        ) from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check its permissions") from e
    n = table.shape[0]
    if n == 0 or (expected_rows is not None and n != expected_rows):
        want = expected_rows if expected_rows is not None else "at least 1"
        raise DataError(f"{path}: {n} data rows, expected {want}; {advice}")
    if table.shape[1] != NUM_PIXELS + 1:
        raise DataError(
            f"{path}: rows hold {table.shape[1]} values, expected {NUM_PIXELS + 1}; {advice}"
        )
    pixels, labels = table[:, :NUM_PIXELS], table[:, NUM_PIXELS]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(
            f"{path}: pixel values span {pixels.min()}..{pixels.max()}, expected 0..255; {advice}"
        )
    bad = (labels < 1) | (labels > NUM_CLASSES)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"{path}: data row {row + 1} has label {labels[row]}, expected 1..{NUM_CLASSES}; "
            f"{advice}"
        )
    pixels = pixels.astype(np.uint8)
    labels = labels.copy()
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


def from_csv(path: Path, seed: int = 0, *, expected_rows: int | None = NUM_ROWS) -> Dataset:
    """Build the dataset from a CSV: a seeded random 80%/20% split (4000/1000 for the real
    file), x = pixel / 255 as ``[n, 1, 64, 64]`` float32, y = label - 1."""
    path = Path(path)
    cached = _CACHE.get(path)
    if cached is None or (expected_rows is not None and cached[0].shape[0] != expected_rows):
        cached = read_csv(path, expected_rows=expected_rows)
        _CACHE.put(path, cached)
    pixels, labels = cached
    n = pixels.shape[0]
    train, test = random_split_indices(n, n * 4 // 5, seed, "ch-mnist")
    x = pixels.astype(np.float32).reshape(n, 1, SIDE, SIDE)
    x /= 255
    y = labels - 1
    return Dataset(
        "ch-mnist",
        torch.from_numpy(x[train]),
        torch.from_numpy(y[train]),
        torch.from_numpy(x[test]),
        torch.from_numpy(y[test]),
        NUM_CLASSES,
    )


def _tiles(zf: zipfile.ZipFile, zip_path: Path) -> list[tuple[int, str]]:
    """List ``(label, member name)`` of the TIFF tiles in a Kather zip, sorted."""
    tiles = []
    for info in zf.infolist():
        member = PurePosixPath(info.filename)
        if info.is_dir() or member.suffix.lower() not in (".tif", ".tiff"):
            continue
        if member.name.startswith(".") or any(p.startswith("__MACOSX") for p in member.parts):
            continue  # macOS resource forks, not images
        match = _CLASS_DIR.fullmatch(member.parent.name)
        if match is None:
            raise DataError(
                f"{zip_path}: tile {info.filename} is not inside a class folder "
                f"({CLASS_FOLDERS[0]} .. {CLASS_FOLDERS[-1]}); is this the Kather 2016 zip?"
            )
        tiles.append((int(match[1]), info.filename))
    tiles.sort()
    return tiles


def _write_csv_atomically(rows: np.ndarray, csv_path: Path) -> None:
    ensure_writable(csv_path.parent, csv_path.name)
    try:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=csv_path.parent, prefix=f".{csv_path.name}.", suffix=".part"
        )
    except OSError as e:
        raise DataError(
            f"cannot write {csv_path} ({e}); set {ENV_DATA} to a writable folder"
        ) from e
    tmp = Path(tmp_name)
    done = False
    try:
        with os.fdopen(fd, "w", newline="\n") as out:
            np.savetxt(out, rows, fmt="%d", delimiter=",", header=",".join(HEADER), comments="")
        os.replace(tmp, csv_path)
        done = True
    except OSError as e:
        raise DataError(f"cannot write {csv_path} ({e})") from e
    finally:
        if not done:
            tmp.unlink(missing_ok=True)


def build_csv_from_zip(
    zip_path: Path, csv_path: Path, *, expected_per_class: int | None = PER_CLASS
) -> Path:
    """Build ``hmnist_64_64_L.csv`` from the Kather 2016 tile zip and return its path.

    Each ``NN_CLASS/*.tif`` tile becomes one row: PIL ``convert("L")``, bicubic resize to
    64x64, row-major pixels, then the label NN (1..8). Rows are ordered by label, then by
    member name. ``expected_per_class`` (625 for the real zip; None to skip) guards against a
    partial or different archive. The CSV is written to a temporary file and renamed, so an
    interrupted build leaves nothing behind.
    """
    from PIL import Image

    zip_path, csv_path = Path(zip_path), Path(csv_path)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{zip_path}: not a readable zip file ({e}); delete it and retry") from e
    with zf:
        tiles = _tiles(zf, zip_path)
        counts = Counter(label for label, _ in tiles)
        per_class = [counts.get(k, 0) for k in range(1, NUM_CLASSES + 1)]
        if not tiles or (
            expected_per_class is not None and any(c != expected_per_class for c in per_class)
        ):
            raise DataError(
                f"{zip_path}: tiles per class (01..08) are {per_class}, expected "
                f"{expected_per_class} each; the archive is incomplete or not the Kather 2016 zip"
            )
        rows = np.empty((len(tiles), NUM_PIXELS + 1), dtype=np.uint8)
        for i, (label, name) in enumerate(tiles):
            try:
                with Image.open(io.BytesIO(zf.read(name))) as image:
                    gray = image.convert("L").resize((SIDE, SIDE), Image.Resampling.BICUBIC)
            except (OSError, ValueError, zipfile.BadZipFile) as e:
                raise DataError(f"{zip_path}: cannot decode tile {name} ({e})") from e
            rows[i, :NUM_PIXELS] = np.asarray(gray, dtype=np.uint8).reshape(-1)
            rows[i, NUM_PIXELS] = label
    _write_csv_atomically(rows, csv_path)
    return csv_path


def _how_to_obtain(csv_path: Path) -> str:
    zip_path = csv_path.parent / ZIP_NAME
    return (
        f"put {CSV_NAME} (Kaggle dataset {KAGGLE_DATASET}, needs a login) at {csv_path}, or the "
        f"Zenodo tile zip ({ZIP_URLS[0]}, md5 {ZIP_MD5}, a value from public code) at "
        f"{zip_path} to have the CSV built from it, or set {ENV_DATA} to a data folder that "
        f"holds ch-mnist/{CSV_NAME}"
    )


def load_ch_mnist(
    home: Path | None = None, seed: int = 0, *, download: bool = True, progress: bool = True
) -> Dataset:
    """Load CH-MNIST from ``<home>/ch-mnist/hmnist_64_64_L.csv`` with a seeded 4000/1000
    split.

    If the CSV is absent it is built from the Zenodo tile zip, which is downloaded first when
    it is absent too and ``download`` is true. When neither works, the one-line
    :class:`DataError` says how to obtain the data and exactly where to put it.
    """
    folder = dataset_dir(FOLDER, home)
    csv_path = folder / CSV_NAME
    if not exists(csv_path):
        check_not_nested("ch-mnist", folder, (CSV_NAME, ZIP_NAME))
        if not download and not exists(folder / ZIP_NAME):
            raise DataError(f"CH-MNIST is missing in {folder} ({CSV_NAME} and {ZIP_NAME} are "
                            f"absent) and downloading is disabled: {_how_to_obtain(csv_path)}")
        try:
            zip_path = fetch(
                ZIP_NAME, folder, ZIP_URLS, None, md5=ZIP_MD5, progress=progress, download=download
            )
        except DownloadError as e:
            raise DataError(
                f"CH-MNIST is missing in {folder} ({CSV_NAME} and {ZIP_NAME} are absent) and "
                f"downloading the zip failed ({e.reasons}): {_how_to_obtain(csv_path)}"
            ) from None
        build_csv_from_zip(zip_path, csv_path, expected_per_class=PER_CLASS)
    return from_csv(csv_path, seed, expected_rows=NUM_ROWS)


FOLDER = "ch-mnist"


def _load(seed: int = 0, home: Path | None = None, download: bool = True,
          progress: bool = True) -> Dataset:
    return load_ch_mnist(home, seed, download=download, progress=progress)


register_dataset(
    "ch-mnist", _load,
    reference="Kather et al., Scientific Reports 2016 (Colorectal Histology MNIST); Fang et "
              "al. Section 4.1",
    summary="colorectal histology tiles, 64×64 grayscale, 8 classes, a seeded 4000/1000 split",
    num_classes=NUM_CLASSES, input_shape=(1, 64, 64), seeded_split=True,
)
