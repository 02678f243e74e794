"""Flower ``ArrayRecord`` ↔ fedpoison's flat float32 model vector, and the checks on a reply.

fedpoison's rules, attacks and defenses see a model as one flat ``float32`` vector (one row
of ``W``). A Flower app's model is an ``ArrayRecord`` of named arrays (a flat vector, or a
PyTorch ``state_dict``). :class:`Layout` remembers the global model's keys, shapes and
dtypes, so that every reply is checked against it, flattened in the same order, and the
aggregate is put back into the same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import Tensor

from fedpoison.errors import ConfigError


class BadReply(ValueError):
    """A reply that cannot be aggregated: ``kind`` is what is counted, the message the
    reason that is logged."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class Layout:
    """Keys, shapes and dtypes of the global model's arrays, in the record's order."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]

    @classmethod
    def of(cls, record: ArrayRecord) -> Layout:
        """The layout of the global model; every array must be floating point."""
        keys, shapes, dtypes = [], [], []
        for key, array in record.items():
            value = array.numpy()
            if not np.issubdtype(value.dtype, np.floating):
                raise ConfigError("arrays", f"array {key!r} is {value.dtype}; fedpoison "
                                            "aggregates floating-point arrays only")
            keys.append(key)
            shapes.append(tuple(int(s) for s in value.shape))
            dtypes.append(value.dtype)
        if not keys:
            raise ConfigError("arrays", "the global model has no arrays")
        return cls(tuple(keys), tuple(shapes), tuple(dtypes))

    @property
    def dim(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes)

    def flatten(self, record: ArrayRecord, *, check_finite: bool = True) -> Tensor:
        """The arrays of ``record`` as one float32 vector [d]; :class:`BadReply` (with the
        reason) if they differ from the layout in keys, dtype or shape, cannot be decoded,
        or hold NaN or infinite values (unless ``check_finite`` is false)."""
        if set(record.keys()) != set(self.keys):
            raise BadReply("keys", f"array keys {sorted(record.keys())} differ from the "
                                   f"global model's {sorted(self.keys)}")
        parts = []
        for key, shape, dtype in zip(self.keys, self.shapes, self.dtypes, strict=True):
            array: Array = record[key]
            if array.dtype != str(dtype):
                raise BadReply("dtype", f"array {key!r} has dtype {array.dtype}, expected "
                                        f"{dtype}")
            if tuple(array.shape) != shape:
                raise BadReply("shape", f"array {key!r} has shape {tuple(array.shape)}, "
                                        f"expected {shape}")
            try:
                value = array.numpy()
            except (ValueError, TypeError, EOFError, OSError) as e:
                raise BadReply("decode", f"array {key!r} cannot be decoded ({e})") from None
            # The bytes may disagree with the metadata checked above.
            if value.dtype != dtype or tuple(value.shape) != shape:
                raise BadReply("decode", f"array {key!r} decodes to {value.dtype} "
                                         f"{tuple(value.shape)}, expected {dtype} {shape}")
            if check_finite and not np.isfinite(value).all():
                raise BadReply("non-finite", f"array {key!r} holds NaN or infinite values")
            parts.append(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
                         .reshape(-1))
        return torch.cat(parts)

    def record(self, w: Tensor) -> ArrayRecord:
        """The flat vector ``w`` [d] as an ``ArrayRecord`` of this layout."""
        flat = w.detach().cpu().numpy()
        if flat.shape != (self.dim,):
            raise ValueError(f"expected a vector of {self.dim} values, got {flat.shape}")
        out, start = {}, 0
        for key, shape, dtype in zip(self.keys, self.shapes, self.dtypes, strict=True):
            n = int(np.prod(shape))
            out[key] = Array(flat[start:start + n].reshape(shape).astype(dtype, copy=True))
            start += n
        return ArrayRecord(out)


def to_record(w: Tensor, key: str = "w") -> ArrayRecord:
    """A flat fedpoison model (float32 vector) as an ``ArrayRecord`` of one array."""
    return ArrayRecord({key: Array(w.detach().cpu().numpy().astype(np.float32, copy=True))})


def from_record(record: ArrayRecord) -> Tensor:
    """The arrays of ``record`` as one float32 vector, in the record's order."""
    return Layout.of(record).flatten(record, check_finite=False)
