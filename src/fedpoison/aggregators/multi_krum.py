"""Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017).

Every model gets Krum's score, the sum of its squared distances to its ``m − f − 2``
nearest other models (Fang et al., Section 2.2), computed once from one distance matrix
(``krum.pairwise_sq_distances``, ``krum.krum_scores``); the ``q`` models with the smallest
scores are selected (ties to the smaller index) and averaged. As in Krum, the Gram scores
whose error intervals overlap are replaced by the float64 reference scores (direct
differences), so the selection is the reference's however ill-conditioned the rows.
Blanchard et al. write m for q and n for our m: "Multi-Krum ... selects m ∈ {1, …, n}
vectors V₁*, …, V_m* with the best scores and outputs their average"; their experiments
take m = n − f, our default ``q = m − f``. ``q = 1`` is Krum. The scores are not
recomputed after each selection (that would be Bulyan's repeated Krum).

Hostile rows. A row with any NaN or ±Inf is infinitely far from every other row, so its
score is +inf; with at most ``f`` such rows and ``q ≤ m − f`` (the default), every selected
row is finite and so is the output (the average runs in float64). Rows of huge finite
values (±1e38) may be selected only if their score is among the ``q`` smallest; the output
stays finite. When the ``f`` hostile rows are farther from every benign row than
``√((m − f − 2)/2)`` benign diameters, all of them score above every benign row, and the
default output is exactly the mean of the ``m − f`` benign rows.

The rows it does not select are reported to the server (``ctx.remove``) for the detection
metrics.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedpoison.aggregators.helpers import report_removed, selected_means
from fedpoison.aggregators.krum import (
    _exact_scores,
    _ExactDistances,
    _score_bounds,
    krum_scores,
    pairwise_sq_distances,
)
from fedpoison.aggregators.leave_one_out import check_leave_one_out_count, exclusive_sums
from fedpoison.aggregators.mean import check_count, check_matrix
from fedpoison.registry import Option, register_rule

__all__ = ["check_multi_krum", "multi_krum", "multi_krum_select",
           "multi_krum_with_and_without"]


def check_multi_krum(m: int, f: int, selected: int | None = None) -> int:
    """Preconditions of Multi-Krum without data: ``m > 2f + 2``, ``1 ≤ selected ≤ m``.

    ``selected`` defaults to ``m − f``; returns the number selected."""
    m, f = check_count("multi-krum", m, f)
    if m <= 2 * f + 2:
        raise ValueError(f"multi-krum: needs m > 2f + 2, got m={m}, f={f}")
    if selected is None:
        return m - f
    try:
        q = operator.index(selected)
    except TypeError:
        raise ValueError(f"multi-krum: selected must be an integer, got m={m}, f={f}, "
                         f"selected={selected!r}") from None
    if not 1 <= q <= m:
        raise ValueError(f"multi-krum: needs 1 <= selected <= m, got m={m}, f={f}, "
                         f"selected={q}")
    return q


def multi_krum_select(W: Tensor, f: int, selected: int | None = None) -> Tensor:
    """Indices [q] of the selected rows, best score first (ties: smaller index first)."""
    m, f = check_matrix(W, "multi-krum", f)
    q = check_multi_krum(m, f, selected)
    dist = _ExactDistances(W)
    k = m - f - 2
    s = krum_scores(dist.D2, f).detach().to("cpu", torch.float64).numpy()
    # As Krum: each Gram score is an interval around the reference score; the rows whose
    # interval meets another's are ranked by their reference scores (direct differences),
    # so that the selection is the reference's (ties -> smaller index) whatever the
    # conditioning of W. Disjoint intervals keep the Gram order.
    lo, hi = _score_bounds(s, dist.norms, k, dist.d, m)
    finite = np.isfinite(s)
    meets = (lo[:, None] <= hi[None, :]) & (lo[None, :] <= hi[:, None]) & finite[None, :]
    np.fill_diagonal(meets, False)
    cand = np.flatnonzero(meets.any(axis=1) & finite)
    if k > 0 and len(cand):
        s = s.copy()
        s[cand] = _exact_scores(dist.exact_rows(cand), cand, k)
    order = np.argsort(s, kind="stable")[:q]
    return torch.from_numpy(order.astype(np.int64)).to(W.device)


def multi_krum(W: Tensor, f: int, selected: int | None = None, *, ctx: Any = None
               ) -> Tensor:
    """The average of the ``selected`` (default ``m − f``) models with the smallest Krum
    scores (Blanchard et al. 2017). Needs ``m > 2f + 2``.

    Output finite whenever at most ``f`` rows are hostile and ``selected ≤ m − f``.
    """
    index = multi_krum_select(W, f, selected)
    if ctx is not None:
        dropped = torch.ones(W.shape[0], dtype=torch.bool)
        dropped[index.cpu()] = False
        report_removed(ctx, dropped)
    return W.detach().index_select(0, index).to(torch.float64).mean(dim=0).to(torch.float32)


def multi_krum_with_and_without(W: Tensor, f: int, selected: int | None = None
                                ) -> tuple[Tensor, Tensor]:
    """``(multi_krum(W), B)`` with ``B[i]`` Multi-Krum without row i, from ONE distance
    matrix: the score of j without model i (``E[j, i]``) sums the n = (k − 1) − f − 2
    smallest distances of row j other than to i, an exclusive sum over the n + 1 nearest
    (as Krum's leave-one-out); each column of ``E`` is sorted once (model i itself last) and
    its ``q`` best rows are averaged, all columns in one matrix product."""
    k = check_leave_one_out_count("multi-krum", W)
    check_multi_krum(k, f, selected)
    q = check_multi_krum(k - 1, f, selected)
    W = W.detach()
    D2 = pairwise_sq_distances(W)
    A = multi_krum(W, f, selected)
    n = (k - 1) - f - 2
    off = D2.clone()
    off.fill_diagonal_(torch.inf)
    s, order = torch.sort(off, dim=1, stable=True)
    excl = exclusive_sums(s[:, : n + 1], dim=1)  # row j's n nearest without its t-th nearest
    at = torch.arange(k, device=D2.device).clamp_(max=n)  # beyond the n + 1 nearest: first n
    E = torch.empty_like(off).scatter_(1, order, excl.index_select(1, at))  # E[j, i]
    E.fill_diagonal_(torch.nan)  # sorts after +inf: model i is never selected without i
    best = torch.sort(E, dim=0, stable=True).indices[:q]  # [q, k]: column i's selection
    S = torch.zeros(k, k, dtype=torch.bool, device=D2.device)
    S.scatter_(1, best.T, True)
    return A, selected_means(W, S.to(W.device))


register_rule(
    "multi-krum", multi_krum,
    reference="Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017 (Multi-Krum)",
    summary="the average of the q models with the smallest Krum scores (default q = m − f)",
    options=[Option("selected", None, "models averaged, those with the best Krum scores "
                    "(1 ≤ q ≤ m)", type=int, low=1, default_text="m − f")],
    check=check_multi_krum, with_and_without=multi_krum_with_and_without,
)
