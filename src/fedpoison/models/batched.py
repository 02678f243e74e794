"""Building blocks for training k workers' networks in one computation, and the loop reference.

Layouts (k workers, B examples each):

* **stacked** image activations ``[B, k·C, H, W]`` in channels-last memory: row b holds
  example b of every worker, worker i's channels are ``i·C … i·C + C − 1``. A convolution
  with per-worker weights is then one grouped convolution (``groups=k``) whose weight
  gradient is already per worker, max pooling and ReLU act per channel as usual, and a
  per-worker BatchNorm is a BatchNorm over the k·C stacked channels.
* **worker-major** feature activations ``[k, B, F]`` for fully connected layers: one batched
  matrix product over workers; the weight gradient bmm(δᵀ, a) sums each worker's own examples.

Why this and not ``torch.func.vmap`` over per-worker parameters: on CPU (oneDNN) a grouped
convolution with k groups runs as fast as one convolution over all k·B examples with shared
weights, while naive vmap of per-example convolutions is slower than a Python loop (issue 5,
docs/choices.md, "Models"). So the shared-weight structure of the first local round buys
nothing on top, and one code path serves shared and diverged weights.

The per-worker Python loop (:func:`reference_batched_grad`) is kept as the reference the tests
compare the batched path against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

# Activation memory one batched training pass may use (bytes, estimated per model). Workers are
# processed in chunks when k·B examples would exceed it (e.g. ResNet20 on 64×64 inputs);
# CNN-MNIST with m = 100, B = 32 fits in one chunk.
MEMORY_BUDGET = 4 * 2**30
# On CPU, models that support it train workers in blocks of about this many examples
# (m = 100, B = 32: 7 blocks of ≤ 15 workers, each one batched computation). The CNN's conv1
# output is 69 KB per MNIST example: blocks keep it in the L3 cache and every tensor under
# glibc's 32 MiB mmap threshold. Measured (1 thread, CPU time per iteration): 0.72 s vs
# 0.79 s with one block, allocator tuned; 0.76 s vs 1.23 s untuned.
CPU_BLOCK_EXAMPLES = 512


CL = torch.channels_last


def stack_images(x: Tensor) -> Tensor:
    """Per-worker images [k, B, C, H, W] -> channels-last stacked [B, k·C, H, W] (one copy).
    ``x.expand(k, …)`` of one batch gives k models the same images."""
    k, B, C = x.shape[:3]
    return x.transpose(0, 1).reshape(B, k * C, *x.shape[3:]).contiguous(memory_format=CL)


def conv_grouped(
    h: Tensor, w: Tensor, bias: Tensor | None = None, stride: int = 1, padding: int = 0
) -> Tensor:
    """Per-worker convolution on the stacked layout: one grouped convolution, groups = k.

    h [B, k·C, H, W], w [k, O, C, kh, kw], bias [k, O] or None -> [B, k·O, H', W'].
    Channels-last memory is oneDNN's fast path: ~1.6× faster than NCHW for these grouped
    convolutions forward and backward, and with one input channel per group (a first layer
    on grayscale images) NCHW's weight gradient is pathologically slow (21 s vs 7 ms).
    """
    k, n_out = w.shape[:2]
    b = None if bias is None else bias.reshape(k * n_out)
    wg = w.reshape(k * n_out, *w.shape[2:]).contiguous(memory_format=CL)
    return F.conv2d(h, wg, b, stride, padding, groups=k)


def linear(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Per-worker affine map: h [k, n, F], w [k, O, F], b [k, O] -> [k, n, O] (one baddbmm).

    ``h`` may also be [n, F] (the same inputs for every model); it is then broadcast."""
    if h.dim() == 2:
        return torch.matmul(h, w.transpose(1, 2)) + b[:, None, :]
    return torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))


def cross_entropy_grad(z: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """d/dz of each worker's mean cross-entropy over its batch: z [k, n, L] logits, y [k, n]
    labels, mask [k, n] (False on padding) -> (softmax(z) − onehot(y))·mask/|B_i|."""
    weight = mask.to(z.dtype) / mask.sum(1, keepdim=True).clamp_min(1).to(z.dtype)
    dz = torch.softmax(z, 2)
    dz.scatter_add_(2, y[:, :, None], torch.full_like(dz[:, :, :1], -1.0))
    return dz.mul_(weight[:, :, None])


def add_channel_bias_(h: Tensor, b: Tensor) -> Tensor:
    """In place: stacked h [B, k·C, H, W] += per-worker bias b [k, C]. Only for an ``h`` that
    no autograd node has saved (e.g. a pooling output)."""
    return h.add_(b.reshape(1, -1, 1, 1))


def batch_norm_train(
    h: Tensor, gamma: Tensor, beta: Tensor, mask: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """BatchNorm with each worker's own batch statistics, on the stacked layout.

    h [B, k·C, H, W], gamma/beta [k, C], mask [k, B] bool (None = no padding). Statistics are
    taken per (worker, channel) over that worker's real examples and all positions, exactly as
    ``torch.nn.BatchNorm2d`` in training mode on that worker's batch alone. Returns the output
    and the (detached) batch mean and unbiased variance [k, C], PyTorch's running-statistics
    convention.
    """
    B, kC, H, W = h.shape
    k, C = gamma.shape
    if mask is None:
        mean = torch.zeros(kC, device=h.device, dtype=h.dtype)
        var = torch.ones(kC, device=h.device, dtype=h.dtype)
        out = F.batch_norm(h, mean, var, gamma.reshape(kC), beta.reshape(kC), True, 1.0, eps)
        return out, mean.view(k, C), var.view(k, C)
    P = H * W
    hv = h.view(B, k, C, P)
    m = mask.t().to(h.dtype)[:, :, None, None]  # [B, k, 1, 1]
    n = (mask.sum(1).to(h.dtype) * P).clamp_min(1.0)[:, None]  # [k, 1]
    mean = (hv * m).sum((0, 3)) / n
    d = (hv - mean[None, :, :, None]) * m  # padding normalised to 0: it stays finite downstream
    var = (d * d).sum((0, 3)) / n
    scale = torch.rsqrt(var + eps) * gamma
    out = (d * scale[None, :, :, None] + beta[None, :, :, None]).view(B, kC, H, W)
    unbiased = var * n / (n - 1).clamp_min(1.0)
    return out, mean.detach(), unbiased.detach()


def batch_norm_eval(
    h: Tensor, gamma: Tensor, beta: Tensor, mean: Tensor, var: Tensor, eps: float
) -> Tensor:
    """BatchNorm with each model's stored statistics (stacked layout, all [k, C]).

    A negative stored variance (possible after aggregation under attack) is clamped to 0."""
    kC = h.shape[1]
    return F.batch_norm(
        h, mean.reshape(kC), var.clamp_min(0).reshape(kC), gamma.reshape(kC),
        beta.reshape(kC), False, 0.0, eps,
    )


def per_worker_mean_ce(logits: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Σ_i (1/|B_i|) Σ_{n ∈ B_i} CE_n for logits [k, B, L], y/mask [k, B]: one scalar whose
    gradient w.r.t. per-worker parameters is each worker's own mean-loss gradient."""
    k, B, L = logits.shape
    ce = F.cross_entropy(logits.reshape(k * B, L), y.reshape(k * B), reduction="none")
    weight = mask.to(logits.dtype) / mask.sum(1, keepdim=True).clamp_min(1).to(logits.dtype)
    return (ce.view(k, B) * weight).sum()


def worker_chunks(
    k: int, batch: int, bytes_per_example: int, budget: int, block_examples: int | None = None
) -> list[slice]:
    """Slices of the k workers such that each chunk's k_c·B examples fit the memory budget
    (and, if given, about ``block_examples`` examples: cache blocking). Chunks are as equal
    as possible."""
    per = max(1, budget // max(1, batch * bytes_per_example))
    if block_examples:
        per = min(per, max(1, block_examples // max(1, batch)))
    n = math.ceil(k / per)
    size = math.ceil(k / n)
    return [slice(s, min(s + size, k)) for s in range(0, k, size)]


class ReferenceModel(Protocol):
    """What the loop reference needs: one worker's gradient with plain PyTorch layers."""

    dim: int

    def reference_grad(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor: ...


def reference_batched_grad(
    model: ReferenceModel, W: Tensor, x: Tensor, y: Tensor, mask: Tensor
) -> Tensor:
    """The plain per-worker loop: worker i's gradient from its real examples alone, with
    autograd through ordinary ``torch.nn.functional`` layers. Slow; the tests' reference."""
    out = torch.zeros_like(W)
    for i in range(W.shape[0]):
        keep = mask[i]
        if bool(keep.any()):
            out[i] = model.reference_grad(W[i], x[i][keep], y[i][keep])
    return out


def naive_vmap_grad(
    logits_fn: Callable[[Tensor, Tensor], Tensor], W: Tensor, x: Tensor, y: Tensor
) -> Tensor:
    """``torch.func.vmap(grad(...))`` over per-worker parameters (no padding): the baseline
    that the benchmark compares against. logits_fn(w [dim], x [B, ...]) -> [B, L]."""
    from torch.func import grad, vmap

    def loss(w: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        return F.cross_entropy(logits_fn(w, xb), yb)

    return vmap(grad(loss))(W, x, y)
