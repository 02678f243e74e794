"""Datasets a user registers from tensors or a ``torch.utils.data.Dataset``.

>>> import torch, fedpoison
>>> x, y = torch.rand(200, 5), torch.randint(0, 2, (200,))
>>> fedpoison.register_dataset("toy", train=(x[:150], y[:150]), test=(x[150:], y[150:]))

The content (every tensor's dtype, shape and bytes) is hashed at registration; the hash is
part of every run's key, so a store never mixes results of different data under one name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fedpoison import registry
from fedpoison.data.base import Dataset
from fedpoison.errors import RegistryError

Split = tuple[Tensor, Tensor] | Sequence[Any]


def materialize(split: Any, what: str) -> tuple[Tensor, Tensor]:
    """``(x float32 [n, ...], y int64 [n])`` from a pair of tensors or a torch Dataset whose
    items are ``(x, y)``."""
    if isinstance(split, tuple) and len(split) == 2 and all(isinstance(t, Tensor)
                                                            for t in split):
        x, y = split
    else:
        try:
            n = len(split)
        except TypeError:
            raise RegistryError(f"register_dataset: {what} must be (x, y) tensors or a "
                                f"torch.utils.data.Dataset, got {type(split).__name__}") from None
        if n == 0:
            raise RegistryError(f"register_dataset: {what} is empty")
        items = [split[i] for i in range(n)]
        try:
            x = torch.stack([torch.as_tensor(item[0]) for item in items])
            y = torch.as_tensor([int(item[1]) for item in items])
        except Exception as e:
            raise RegistryError(f"register_dataset: {what} items must be (x, y) pairs of "
                                f"equal-shaped inputs and integer labels: {e}") from None
    x = x.detach().to("cpu", torch.float32).contiguous()
    y = y.detach().to("cpu", torch.int64).reshape(-1).contiguous()
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise RegistryError(f"register_dataset: {what} has {x.shape[0]} inputs and "
                            f"{y.shape[0]} labels (need the same positive number)")
    if not bool(torch.isfinite(x).all()):
        raise RegistryError(f"register_dataset: {what} inputs hold NaN or Inf")
    return x, y


def digest(*tensors: Tensor) -> str:
    """SHA-256 (hex, 16 chars) of the tensors' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def tensor_dataset_fields(name: str, train: Any, test: Any,
                          num_classes: int | None) -> dict[str, Any]:
    """The spec fields (loader, class count, shape, fingerprint) of a dataset held in memory."""
    x_tr, y_tr = materialize(train, "train")
    x_te, y_te = materialize(test, "test")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise RegistryError(f"register_dataset {name}: train inputs have shape "
                            f"{list(x_tr.shape[1:])}, test inputs {list(x_te.shape[1:])}")
    low = int(min(y_tr.min(), y_te.min()))
    top = int(max(y_tr.max(), y_te.max())) + 1
    L = top if num_classes is None else int(num_classes)
    if low < 0 or top > L or L < 2:
        raise RegistryError(f"register_dataset {name}: labels must lie in [0, num_classes) "
                            f"with num_classes >= 2; got labels in [{low}, {top - 1}] and "
                            f"num_classes={L}")
    ds = Dataset(name, x_tr, y_tr, x_te, y_te, L)

    def load(seed: int = 0, home: Any = None, download: bool = True,
             progress: bool = True) -> Dataset:
        return ds

    return {"loader": load, "num_classes": L, "input_shape": tuple(x_tr.shape[1:]),
            "fingerprint": digest(x_tr, y_tr, x_te, y_te)}


def register_dataset(name: str, loader: Any = None, *, train: Any = None, test: Any = None,
                     replace: bool = False, **fields: Any) -> Any:
    """Register a dataset: a loader ``loader(seed, home, download, progress) -> Dataset``
    with its static ``num_classes`` and ``input_shape`` (decorator or call), or data held in
    memory: ``train=(x, y), test=(x, y)`` tensors or ``torch.utils.data.Dataset`` objects
    (``num_classes`` inferred from the labels unless given). In-memory data is hashed; the
    hash is part of every run's key."""
    if train is None and test is None:
        return registry.register_dataset(name, loader, replace=replace, **fields)
    if loader is not None or train is None or test is None:
        raise RegistryError(f"register_dataset {name}: give either a loader or both train= "
                            "and test=")
    made = tensor_dataset_fields(name, train, test, fields.pop("num_classes", None))
    load = made.pop("loader")
    summary = f"{made['num_classes']} classes, inputs {list(made['input_shape'])}"
    return registry.register_dataset(name, load, replace=replace,
                                     **{"reference": "user data", "summary": summary,
                                        **fields, **made})
