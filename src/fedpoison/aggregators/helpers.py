"""Steps shared by the standard defenses: means of selected rows, and updates.

``selected_means`` averages, for each output row, a selected subset of the rows of ``W`` in
float64 with one matrix product (Multi-Krum's leave-one-out, nearest-neighbour mixing),
giving exactly what a direct float64 sum of the selected rows gives for non-finite values
too (a NaN or +inf together with -inf gives NaN, +inf gives +inf), although a zero weight
times a NaN would be NaN in the product.

The rules defined on updates ``Δᵢ = wᵢ − w_Re`` (geomed, cclip, norm-clip) aggregate the
updates from the previous global model ``w_Re`` (``ctx.previous``) and return ``w_Re + v``.
They work in float64, so that rows of ±1e38 (whose squares overflow float32) have finite
norms, and share one convention for hostile rows: a row with any NaN or ±Inf entry has no
direction and no finite distance, so it gets weight 0 (it is set to zero here and flagged
in ``bad``; the rule reports it with ``ctx.remove``). A non-finite previous model, which no
robust rule produces, is read with its non-finite entries as 0, and results are rounded to
float32 saturating at ±3.4e38, so the output of these rules is finite whatever the rows
hold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["FLOAT32_MAX", "clip_scales", "model_from_update", "report_removed", "selected_means",
           "updates64"]

FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def updates64(W: Tensor, previous: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(U, bad, p, norms)``: the updates ``U = W − p`` in float64 [m, d] with every
    non-finite row set to 0, the bool mask ``bad`` [m] of those rows, ``p`` the previous
    model in float64 (non-finite entries read as 0), and the rows' norms ``‖U_i‖`` (0 for the
    bad rows). A float64 norm of finite float32 differences is finite, so a non-finite norm
    is exactly a row with a NaN or ±Inf entry: one pass finds them."""
    p = previous.detach().to(W.device, torch.float64)
    if not bool(torch.isfinite(p).all()):
        p = torch.where(torch.isfinite(p), p, 0.0)
    U = W.detach().to(torch.float64, copy=True)
    U.sub_(p)  # in place: a second [m, d] float64 temporary costs more than the subtraction
    norms = torch.linalg.vector_norm(U, dim=1)
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        U[bad] = 0.0
        norms[bad] = 0.0
    return U, bad, p, norms


def clip_scales(norms: Tensor, tau: float, bad: Tensor) -> Tensor:
    """``min(1, τ / ‖z‖)`` per row (1 for ‖z‖ = 0), and 0 for the ``bad`` rows."""
    scale = (tau / norms).clamp_(max=1.0)  # tau / 0 = inf -> 1
    return scale.masked_fill_(bad, 0.0)


def model_from_update(p: Tensor, v: Tensor) -> Tensor:
    """``p + v`` rounded to float32, saturating at ±3.4e38 instead of overflowing to ±inf."""
    return (p + v).clamp_(-FLOAT32_MAX, FLOAT32_MAX).to(torch.float32)


def selected_means(W: Tensor, S: Tensor) -> Tensor:
    """Float32 [n, d]: row r is the float64 mean of the rows of ``W`` [m, d] that the bool
    mask ``S`` [n, m] selects in its row r (each selecting at least one)."""
    X = W.detach().to(torch.float64)
    Sd = S.to(device=X.device, dtype=torch.float64)
    counts = Sd.sum(dim=1, keepdim=True)
    finite = torch.isfinite(X)
    if bool(finite.all()):
        return (Sd @ X / counts).to(torch.float32)
    out = Sd @ torch.where(finite, X, 0.0) / counts
    pos = (Sd @ torch.isposinf(X).to(torch.float64)) > 0
    neg = (Sd @ torch.isneginf(X).to(torch.float64)) > 0
    nan = (Sd @ torch.isnan(X).to(torch.float64)) > 0
    out = torch.where(pos, torch.inf, out)
    out = torch.where(neg, -torch.inf, out)
    out = torch.where(nan | (pos & neg), torch.nan, out)
    return out.to(torch.float32)


def report_removed(ctx: Any, removed: Tensor) -> None:
    """Report the bool mask ``removed`` [k] of a rule's rows to the server (``ctx.remove``)
    when ``ctx`` is the context of these very rows; a call on other rows (a defense's
    leave-one-out, an attack's target rule, after a pre-aggregator) reports nothing."""
    if ctx is not None and getattr(ctx, "rows", None) == removed.numel():
        ctx.remove(removed)
