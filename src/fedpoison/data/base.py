"""The in-memory dataset every task trains on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Dataset:
    """A train/test split held as tensors.

    ``x_*`` are float32 with shape ``[n, *input_shape]`` (images ``[n, 1, H, W]`` scaled to
    [0, 1]; tabular data ``[n, features]``), ``y_*`` are int64 class ids in ``[0, num_classes)``.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_features(self) -> int:
        n = 1
        for s in self.input_shape:
            n *= s
        return n

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.float32 or y.dtype != torch.int64:
                raise TypeError(f"{self.name}: x_{split} must be float32 and y_{split} int64")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"{self.name}: x_{split} and y_{split} differ in length")
