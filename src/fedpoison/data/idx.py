"""Reader for the IDX format of MNIST and Fashion-MNIST (optionally gzip-compressed).

An IDX file is a 4-byte big-endian magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in row-major order. MNIST
images have magic 2051 (uint8, 3 dimensions) and labels 2049 (uint8, 1 dimension). Every
inconsistency is a :class:`DataError` naming the file, because a damaged download must never
decode into plausible-looking but wrong data.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from fedpoison.errors import DataError

IMAGES_MAGIC = 2051
"""Magic number of an IDX file of uint8 images ``[n, rows, cols]``."""

LABELS_MAGIC = 2049
"""Magic number of an IDX file of uint8 labels ``[n]``."""

_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_ADVICE = "delete it and run again to re-download it, or replace it with a correct copy"


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except EOFError as e:
        raise DataError(f"{path}: the gzip stream is truncated ({e}); {_ADVICE}") from e
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e}); {_ADVICE}") from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check its permissions") from e


def parse_idx(raw: bytes, source: str, *, expected_magic: int | None = None) -> np.ndarray:
    """Decode IDX bytes into a read-only array; ``source`` names the file in errors."""
    if len(raw) < 4:
        raise DataError(f"{source}: truncated IDX file ({len(raw)} bytes, no header); {_ADVICE}")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"{source}: IDX magic number is {magic}, expected {expected_magic}; this is not "
            f"the right file (or it is corrupt): {_ADVICE}"
        )
    type_code, ndim = raw[2], raw[3]
    if raw[0] != 0 or raw[1] != 0 or type_code not in _TYPES or ndim == 0:
        raise DataError(f"{source}: invalid IDX magic number {magic:#010x}; {_ADVICE}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source}: truncated IDX header; {_ADVICE}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _TYPES[type_code]
    count = math.prod(dims)
    want = header + count * dtype.itemsize
    if len(raw) < want:
        raise DataError(
            f"{source}: truncated IDX data ({len(raw)} bytes, header {dims} needs {want}); "
            f"{_ADVICE}"
        )
    if len(raw) > want:
        raise DataError(
            f"{source}: {len(raw) - want} unexpected bytes after the IDX data {dims}; {_ADVICE}"
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)


def read_idx(path: Path, *, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gunzipped on the fly if it ends in ``.gz``) into a read-only array."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path), expected_magic=expected_magic)


def read_idx_images(path: Path) -> np.ndarray:
    """Read uint8 images ``[n, rows, cols]`` (magic 2051)."""
    return read_idx(path, expected_magic=IMAGES_MAGIC)


def read_idx_labels(path: Path) -> np.ndarray:
    """Read uint8 labels ``[n]`` (magic 2049)."""
    return read_idx(path, expected_magic=LABELS_MAGIC)
