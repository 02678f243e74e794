"""Multinomial logistic regression as one flat vector (paper Section 4.1, "LR")."""

from __future__ import annotations

import torch
from torch import Tensor

from fedpoison.models.flat import FlatLayout
from fedpoison.registry import register_model


class LogisticRegression:
    """Softmax regression: logits = x Aᵀ + b with A ∈ R^{L×F}, b ∈ R^L.

    Flat layout: A row-major (L·F values), then b (L values); for MNIST d = 784·10 + 10 = 7850.
    The gradient is written in closed form, (softmax − onehot)ᵀ x / n, so all workers' local
    SGD steps are two batched matrix products (no autograd, no loop over workers).
    """

    def __init__(self, num_features: int, num_classes: int) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        self.dim = num_features * num_classes + num_classes
        # The same order as nn.Linear(F, L)'s state_dict: a saved model loads into one.
        self.layout = FlatLayout([("weight", (num_classes, num_features)),
                                  ("bias", (num_classes,))])

    def init(self, generator: torch.Generator) -> Tensor:
        """Zeros: the loss is convex, so the start point does not matter and zeros are exact."""
        return torch.zeros(self.dim)

    def _split(self, W: Tensor) -> tuple[Tensor, Tensor]:
        k = W.shape[0]
        F, L = self.num_features, self.num_classes
        return W[:, : F * L].view(k, L, F), W[:, F * L :]

    def logits(self, W: Tensor, x: Tensor) -> Tensor:
        A, b = self._split(W)
        x = x.reshape(x.shape[0], -1)
        # [k, n, L] = x [n, F] · A [k, L, F]ᵀ + b
        return torch.einsum("nf,klf->knl", x, A) + b[:, None, :]

    def batched_grad(
        self, W: Tensor, x: Tensor, y: Tensor, mask: Tensor
    ) -> Tensor:
        k, B = y.shape
        A, b = self._split(W)
        x = x.reshape(k, B, -1)
        logits = torch.baddbmm(b[:, None, :], x, A.transpose(1, 2))  # [k, B, L]
        delta = torch.softmax(logits, dim=2)
        delta.scatter_add_(2, y[:, :, None], torch.full_like(delta[:, :, :1], -1.0))
        weight = mask.to(delta.dtype) / mask.sum(1, keepdim=True).clamp_min(1).to(delta.dtype)
        delta = delta * weight[:, :, None]
        grad_A = torch.bmm(delta.transpose(1, 2), x)  # [k, L, F]
        grad_b = delta.sum(1)
        return torch.cat([grad_A.reshape(k, -1), grad_b], dim=1)


def _build(ds: object) -> LogisticRegression:
    return LogisticRegression(ds.num_features, ds.num_classes)  # type: ignore[attr-defined]


register_model(
    "lr", _build,
    reference="Fang et al., USENIX Security 2020, Section 4.1 (multinomial logistic regression)",
    summary="softmax regression on the flattened inputs, closed-form batched gradient",
    inputs=("image", "tabular"),
    defaults=lambda ds: {"lr": 0.1, "iterations": 500},
)
