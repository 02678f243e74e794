"""Multinomial logistic regression as one flat vector (paper Section 4.1, "LR")."""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from fedpoison.models.flat import FlatLayout
from fedpoison.registry import register_model

#: Examples per product when one model's logits are formed (see ``logits_by_class``).
GROUP = 512


class LogisticRegression:
    """Softmax regression: logits = x Aᵀ + b with A ∈ R^{L×F}, b ∈ R^L.

    Flat layout: A row-major (L·F values), then b (L values); for MNIST d = 784·10 + 10 = 7850.
    The gradient is written in closed form, (softmax − onehot)ᵀ x / n, so all workers' local
    SGD steps are two batched matrix products (no autograd, no loop over workers).

    Layout for speed: logits are formed class-major, ``A · xᵀ`` ([L, B] per worker) rather
    than ``x · Aᵀ`` ([B, L]). With L = 10 the product with the long dimension last runs about
    2× faster in MKL, and the softmax over the 10 classes is then a reduction across rows,
    which vectorizes along the examples (20× faster than a softmax along a last dimension
    of size 10). Every product is batched over workers (or over groups of examples), so the
    threads split whole products and the results do not depend on the thread count: one
    [L, F]·[F, n] product, even for the shared model of the first local round, lets MKL
    split the F-sum between threads (checked for 1 and 2 threads in the tests).
    """

    cpu_block_examples: int | None = 1600
    """On CPU, ``Task.local_train`` steps the workers in blocks of about this many examples
    (m = 100, B = 32: 2 blocks of 50 workers) so that a block's inputs (5 MB) stay in the
    L3 cache between the forward and the backward product. Measured on MNIST, medians of
    100 ``local_train`` calls, five rounds: with every worker's own copy of the model,
    1,024 examples took 3.9 ms against 4.6 ms in one block (1 thread, CPU time, machine
    loaded); since the first step reads the one global model (``sgd_step_from_``), 1,600
    examples take 1.66–1.70 ms against 1.81–1.87 ms for 1,024 and 1.73–1.97 ms in one block
    (2 threads, wall time), and the same as 1,024 on 1 thread (2.74–3.00 ms against
    2.79–3.01 ms). The numbers do not depend on the blocks."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        self.dim = num_features * num_classes + num_classes
        # The same order as nn.Linear(F, L)'s state_dict: a saved model loads into one.
        self.layout = FlatLayout([("weight", (num_classes, num_features)),
                                  ("bias", (num_classes,))])
        self._local = threading.local()  # sgd_step_'s scratch buffer, one per thread

    def init(self, generator: torch.Generator) -> Tensor:
        """Zeros: the loss is convex, so the start point does not matter and zeros are exact."""
        return torch.zeros(self.dim)

    def _split(self, W: Tensor) -> tuple[Tensor, Tensor]:
        k = W.shape[0]
        F, L = self.num_features, self.num_classes
        return W[:, : F * L].view(k, L, F), W[:, F * L :]

    def logits_by_class(self, W: Tensor, x: Tensor) -> Tensor:
        """Logits of k models on the same n inputs, class-major: [k, L, n]."""
        A, b = self._split(W)
        F, L = self.num_features, self.num_classes
        x = x.reshape(x.shape[0], -1)
        k, n = W.shape[0], x.shape[0]
        if k > 1:
            return torch.baddbmm(b[:, :, None], A, x.t().expand(k, F, n))
        # One model: one product per group of GROUP examples, the rest as x·Aᵀ (whose
        # threads split the examples); both are independent of the thread count.
        q = n // GROUP if n >= 2 * GROUP else 0
        parts = []
        if q:
            xg = x[: q * GROUP].view(q, GROUP, F).transpose(1, 2)
            z = torch.baddbmm(b[0, :, None].expand(q, L, 1), A.expand(q, L, F), xg)
            parts.append(z.permute(1, 0, 2).reshape(L, q * GROUP))
        if n > q * GROUP:
            parts.append(torch.addmm(b[0], x[q * GROUP :], A[0].t()).t())
        return (parts[0] if len(parts) == 1 else torch.cat(parts, 1))[None]

    def logits(self, W: Tensor, x: Tensor) -> Tensor:
        """Logits of k models on the same n inputs: W [k, dim], x [n, ...] -> [k, n, L] (a
        transposed view of :meth:`logits_by_class`)."""
        return self.logits_by_class(W, x).transpose(1, 2)

    def _delta(self, W: Tensor, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """d(loss)/d(logits) per worker, class-major [k, L, B]: (softmax − onehot)·mask/|B_i|."""
        k, B = y.shape
        A, b = self._split(W)
        z = torch.baddbmm(b[:, :, None], A, x.reshape(k, B, -1).transpose(1, 2))
        delta = torch.softmax(z, dim=1)
        delta.scatter_add_(1, y[:, None, :], self._minus_one(delta).expand(k, 1, B))
        weight = mask.to(delta.dtype) / mask.sum(1, keepdim=True).clamp_min(1).to(delta.dtype)
        return delta.mul_(weight[:, None, :])

    def _minus_one(self, like: Tensor) -> Tensor:
        one = getattr(self._local, "minus_one", None)
        if one is None or one.dtype != like.dtype or one.device != like.device:
            one = self._local.minus_one = torch.full((1, 1, 1), -1.0, dtype=like.dtype,
                                                     device=like.device)
        return one

    def batched_grad(
        self, W: Tensor, x: Tensor, y: Tensor, mask: Tensor
    ) -> Tensor:
        """See ``FlatModel.batched_grad``."""
        k, B = y.shape
        F, L = self.num_features, self.num_classes
        delta = self._delta(W, x, y, mask)
        # a contiguous product (one written into W-shaped rows would depend on the threads)
        grad_A = torch.bmm(delta, x.reshape(k, B, F))
        return torch.cat([grad_A.view(k, F * L), delta.sum(2)], 1)

    def sgd_step_(
        self, W: Tensor, x: Tensor, y: Tensor, mask: Tensor, lr: float
    ) -> Tensor:
        """In place, ``W ← W − lr · batched_grad(W, x, y, mask)``; the same numbers.

        The weight gradient goes to a scratch buffer the model keeps (per thread) rather than
        a fresh [k, d] tensor: on our VMs a fresh 3 MB buffer per iteration can cost more in
        page faults than the product itself. (Accumulating straight into W with an in-place
        ``baddbmm_`` on its strided rows would save the buffer, but MKL then splits the work
        differently by thread count and the results would depend on it.)"""
        return self._step(W, W, x, y, mask, lr)

    def sgd_step_from_(
        self, w: Tensor, out: Tensor, x: Tensor, y: Tensor, mask: Tensor, lr: float
    ) -> Tensor:
        """``out ← w − lr · batched_grad(w, ...)`` for k workers that all start from the one
        model ``w`` [d] (a local training's first step), written into ``out`` [k, d], whose
        values are not read: the same numbers as :meth:`sgd_step_` on k copies of ``w``
        (tested), without making the copies (a 3 MB write on MNIST) or reading them back
        in the forward product (the batched product reads ``w`` with a zero batch stride)."""
        return self._step(w.expand(out.shape[0], -1), out, x, y, mask, lr)

    def _step(self, W: Tensor, out: Tensor, x: Tensor, y: Tensor, mask: Tensor, lr: float
              ) -> Tensor:
        """``out ← W − lr · batched_grad(W, x, y, mask)``; ``out`` may be ``W``."""
        k, B = y.shape
        F, L = self.num_features, self.num_classes
        delta = self._delta(W, x, y, mask)
        scratch = getattr(self._local, "grad", None)
        if (scratch is None or scratch.shape[0] < k or scratch.dtype != W.dtype
                or scratch.device != W.device):
            scratch = self._local.grad = W.new_empty(k, L, F)
        scratch = scratch[:k]
        torch.bmm(delta, x.reshape(k, B, F), out=scratch)
        A, b = self._split(W)
        A_out, b_out = self._split(out)
        if out is W:
            A.sub_(scratch, alpha=lr)
            b.sub_(delta.sum(2), alpha=lr)
        else:
            torch.sub(A, scratch, alpha=lr, out=A_out)
            torch.sub(b, delta.sum(2), alpha=lr, out=b_out)
        return out


def _build(ds: object) -> LogisticRegression:
    return LogisticRegression(ds.num_features, ds.num_classes)  # type: ignore[attr-defined]


register_model(
    "lr", _build,
    reference="Fang et al., USENIX Security 2020, Section 4.1 (multinomial logistic regression)",
    summary="softmax regression on the flattened inputs, closed-form batched gradient",
    inputs=("image", "tabular"),
    defaults=lambda ds: {"lr": 0.1, "iterations": 500},
)
