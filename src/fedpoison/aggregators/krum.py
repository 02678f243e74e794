"""Krum (paper Section 2.2, Blanchard et al. [9]) from one Gram matrix.

The building blocks are public because the Krum attack and the defenses reuse them:

* ``pairwise_sq_distances(W)``: all squared Euclidean distances from one float64 Gram
  matrix, ``||a||^2 + ||b||^2 - 2 a.b``, of the rows centred on a median-norm row,
  clamped at 0;
* ``krum_scores(D2, f)``: each model's sum of squared distances to its ``m - f - 2``
  nearest other models, from a distance matrix;
* ``krum_select(W, f)``: the index Krum picks (smallest score, ties to the smallest index).

Hostile rows. Distances are float64, so finite float32 rows (even +-1e38, whose squares
overflow float32) give finite distances. A row with any NaN or +-Inf is "infinitely far":
its distances to every other row are ``+inf`` (set explicitly, which also avoids the
``inf - inf`` of the Gram trick), so its score is ``+inf``. With ``f`` or fewer such rows
every finite row still has ``m - f - 2`` finite distances and Krum returns a finite row.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import Tensor

from fedpoison.aggregators.leave_one_out import (
    check_leave_one_out_count,
    exclusive_sums,
    first_argmin_columns,
)
from fedpoison.aggregators.mean import check_count, check_matrix
from fedpoison.registry import register_rule

__all__ = ["check_krum", "krum", "krum_scores", "krum_select", "krum_with_and_without",
           "pairwise_sq_distances"]


def check_krum(m: int, f: int) -> None:
    """Preconditions of Krum without data: ``m > 2f + 2``."""
    m, f = check_count("krum", m, f)
    if m <= 2 * f + 2:
        raise ValueError(f"krum: needs m > 2f + 2, got m={m}, f={f}")


def _centre(W: Tensor) -> Tensor:
    """A finite row of median norm, as float64: the rows are centred on it before the Gram
    matrix (distances do not change) so that the Gram trick cancels ``spread**2`` rather than
    ``norm**2``. A hostile row (non-finite, or huge) has an extreme norm and is not picked
    while fewer than half of the rows are hostile; a hostile row of ordinary norm is at most
    twice the benign norm away, which is no worse than not centring."""
    norms = torch.linalg.vector_norm(W, dim=1)  # float32: overflow/NaN -> treated as +inf
    norms = torch.where(torch.isnan(norms), torch.inf, norms)
    r = int(torch.sort(norms, stable=True).indices[(W.shape[0] - 1) // 2])
    c = W[r].to(torch.float64)
    return c if bool(torch.isfinite(c).all()) else torch.zeros_like(c)


def pairwise_sq_distances(W: Tensor) -> Tensor:
    """Squared Euclidean distances between the rows of ``W`` (``m x d``): float64 ``m x m``.

    One Gram matrix in float64 of the rows centred on a median-norm row; the result is
    symmetric, clamped at 0 and has a zero diagonal. Rows with a non-finite entry are at
    distance ``+inf`` from every other row.
    """
    if not isinstance(W, Tensor) or W.dim() != 2 or not W.is_floating_point():
        raise ValueError(
            "pairwise_sq_distances: W must be a 2-D floating tensor, got "
            f"{getattr(W, 'shape', type(W))}"
        )
    W = W.detach()
    c = _centre(W)
    # Centre in float64. On CPU NumPy's mixed-type subtract is ~3x faster than torch's.
    if W.device.type == "cpu" and W.dtype in (torch.float32, torch.float64):
        X = torch.from_numpy(np.subtract(W.numpy(), c.numpy(), dtype=np.float64))
    else:
        X = W - c  # float32 - float64 -> float64
    G = X @ X.T
    sq = G.diagonal()
    D2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * G
    D2 = (D2 + D2.T) * 0.5  # exact symmetry, whatever the GEMM's blocking did
    D2.clamp_(min=0.0)
    # A finite float32 row minus a finite centre has a finite float64 squared norm, so this
    # finds every row with NaN or +-Inf without another pass over W.
    bad = ~torch.isfinite(sq)
    if bool(bad.any()):
        D2[bad, :] = torch.inf
        D2[:, bad] = torch.inf
    D2.fill_diagonal_(0.0)
    return D2


def krum_scores(D2: Tensor, f: int, *, neighbours: int | None = None) -> Tensor:
    """Krum score of every model from a squared-distance matrix ``D2`` (``m x m``).

    score(i) = sum of the ``neighbours`` smallest ``D2[i, j]`` over ``j != i`` (the diagonal
    is excluded). ``neighbours`` defaults to ``m - f - 2`` and then requires Krum's
    ``m > 2f + 2``; an explicit value (Bulyan uses one on its shrinking sets) only needs
    ``0 <= neighbours <= m - 1``. Returned in ``D2``'s dtype and device.
    """
    if D2.dim() != 2 or D2.shape[0] != D2.shape[1]:
        raise ValueError(f"krum: D2 must be a square matrix, got shape {tuple(D2.shape)}")
    m = D2.shape[0]
    if neighbours is None:
        check_krum(m, f)
        k = m - f - 2
    else:
        m, f = check_count("krum", m, f)
        k = operator.index(neighbours)
        if not 0 <= k <= m - 1:
            raise ValueError(
                f"krum: needs 0 <= neighbours <= m - 1, got m={m}, f={f}, neighbours={k}"
            )
    if k == 0:
        return torch.zeros(m, dtype=D2.dtype, device=D2.device)
    off = D2.clone()
    off.fill_diagonal_(torch.inf)
    return torch.topk(off, k, dim=1, largest=False, sorted=True).values.sum(dim=1)


def _first_argmin(scores: Tensor) -> int:
    """Index of the smallest score; ties go to the smallest index."""
    best = scores.min()
    return int(torch.nonzero(scores == best)[0, 0]) if not torch.isnan(best) else 0


def krum_select(W: Tensor, f: int) -> int:
    """Index of the row Krum selects (smallest score; ties -> smallest index)."""
    check_matrix(W, "krum", f)
    check_krum(W.shape[0], f)
    return _first_argmin(krum_scores(pairwise_sq_distances(W), f))


def krum(W: Tensor, f: int) -> Tensor:
    """Krum: the local model with the smallest sum of squared distances to its
    ``m - f - 2`` nearest other models (paper Section 2.2). Needs ``m > 2f + 2``.

    Output finite whenever at most ``f`` rows hold NaN, +-Inf or huge finite values.
    """
    i = krum_select(W, f)
    return W.detach()[i].clone()


def krum_with_and_without(W: Tensor, f: int) -> tuple[Tensor, Tensor]:
    """``(krum(W), B)`` with ``B[i]`` Krum's choice without row i, from ONE distance matrix.

    Sort each row of it; the score of j without model i sums the n = (k − 1) − f − 2
    smallest distances of row j other than to i: if i sits at position r ≤ n of the sorted
    row that is prefix(r) + suffix(r + 1) over the first n + 1 entries, else prefix(n). One
    [k, k] matrix of scores, one first-argmin per column.
    """
    k = check_leave_one_out_count("krum", W)
    check_krum(k, f)
    check_krum(k - 1, f)
    W = W.detach()
    D2 = pairwise_sq_distances(W)
    scores = krum_scores(D2, f)
    a = _first_argmin(scores)  # ties -> smallest index
    n = (k - 1) - f - 2  # neighbours among the k - 1 models left
    off = D2.clone()
    off.fill_diagonal_(torch.inf)
    s, order = torch.sort(off, dim=1, stable=True)
    head = s[:, : n + 1]  # the n + 1 nearest: removing one of them leaves the other n
    excl = exclusive_sums(head, dim=1)  # [k, n+1]: row j's n nearest without head[j, t]
    at = torch.arange(k, device=D2.device).clamp_(max=n)  # position beyond n -> first n
    E = torch.empty_like(off).scatter_(1, order, excl.index_select(1, at))  # E[j, i]
    picks = first_argmin_columns(E)  # E[j, i]: score of j without i; column i -> B_i
    return W[a].clone(), W.index_select(0, picks)


register_rule(
    "krum", krum,
    reference="Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017; Fang et al., USENIX "
              "Security 2020, Section 2.2",
    summary="the local model with the smallest sum of squared distances to its m − f − 2 "
            "nearest others",
    check=check_krum, with_and_without=krum_with_and_without, selects_row=True,
)
