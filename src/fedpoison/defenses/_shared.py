"""Helpers the trust and detection defenses share: updates in float64, hostile rows, reports.

Not a component (the leading underscore keeps it out of the package's component scan).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["median", "report", "row_norms", "server_of", "updates", "worker_ids"]


def updates(W: Tensor, previous: Tensor) -> tuple[Tensor, Tensor]:
    """``(Δ, hostile)``: the updates ``Δᵢ = wᵢ − w_Re`` in float64 and the bool mask of rows
    with a NaN or ±Inf entry; those rows of ``Δ`` are zero (callers give them no weight).

    float64 keeps ±1e38 rows finite through squares and sums (float32 overflows at 3.4e38).
    """
    D = W.detach().to(torch.float64) - previous.detach().to(W.device, torch.float64)
    hostile = ~torch.isfinite(D).all(dim=1)
    if bool(hostile.any()):
        D[hostile] = 0.0
    return D, hostile


def row_norms(D: Tensor, hostile: Tensor) -> Tensor:
    """L2 norms of the rows of ``D`` (float64), ``+inf`` for hostile rows."""
    return torch.linalg.vector_norm(D, dim=1).masked_fill(hostile, torch.inf)


def median(x: Tensor) -> Tensor:
    """The median of a 1-D tensor; of an even count, the mean of the two middle values (the
    project's convention, docs/design.md). ``+inf`` entries count as the largest values."""
    s = torch.sort(x).values
    n = s.shape[0]
    if n % 2:
        return s[n // 2]
    lo, hi = s[n // 2 - 1], s[n // 2]
    return hi if bool(torch.isinf(hi)) else (lo + hi) / 2


def report(ctx: Any, removed: Tensor) -> None:
    """Report the rows given no weight (``ServerContext.remove``), when ``ctx`` is the
    server's context for exactly these rows (not in a leave-one-out or a bare call)."""
    if ctx is not None and getattr(ctx, "rows", 0) == removed.numel():
        ctx.remove(removed.detach().cpu())


def worker_ids(ctx: Any, k: int) -> Tensor:
    """The worker ids of the ``k`` rows (int64, CPU): the server's, or ``0..k-1`` when the
    context has none for these rows (a direct call, a leave-one-out)."""
    ids = getattr(ctx, "workers", None)
    if ids is not None and ids.numel() == k:
        return ids.detach().to("cpu", torch.int64)
    return torch.arange(k)


def server_of(ctx: Any, name: str) -> Any:
    """The server context of a defense (``ValueError`` naming the defense without one)."""
    server = getattr(ctx, "server", None)
    if server is None:
        raise ValueError(f"{name}: needs the server context (previous model, state, generator)")
    return server
