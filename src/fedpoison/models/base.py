"""What a model must offer to be trained as a flat parameter vector."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class FlatModel(Protocol):
    """A classifier whose parameters are one flat float32 vector of length ``dim``.

    Aggregators, attacks and defenses only ever see such vectors (DESIGN.md); a model is the
    one place that knows how a vector becomes predictions.
    """

    dim: int
    num_classes: int

    def init(self, generator: torch.Generator) -> Tensor:
        """Initial global model w0, shape [dim]."""
        ...

    def logits(self, W: Tensor, x: Tensor) -> Tensor:
        """Logits of k models on the same n inputs: W [k, dim], x [n, ...] -> [k, n, L]."""
        ...

    def batched_grad(
        self, W: Tensor, x: Tensor, y: Tensor, mask: Tensor
    ) -> Tensor:
        """Per-worker gradient of the mean cross-entropy over each worker's own batch.

        W [k, dim] (one model per worker), x [k, B, ...], y [k, B] int64, mask [k, B] bool
        (False = padding when a worker holds fewer than B examples). Returns [k, dim].
        """
        ...
