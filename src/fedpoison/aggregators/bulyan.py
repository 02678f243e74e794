"""Bulyan (paper Section 2.2 and Appendix A, El Mhamdi et al. [42]).

Stage 1 selects ``theta`` (default ``m - 2f``) models by repeated Krum: score the remaining
models with Krum, move the best one (ties -> smallest index) to the selection, repeat. All
steps read one distance matrix (each row sorted once, removed models masked out);
distances are never recomputed. Krum inside Bulyan uses the same ``f`` as the server; with
``n`` models remaining it sums the squared distances to the ``max(1, n - f - 2)`` nearest
others (capped at ``n - 1``; a single remaining model is taken as is). The plain
``n - f - 2`` would reach 0 or below in the last steps: with ``theta = m - 2f`` the last
step has ``n = 2f + 1``, i.e. ``f - 1`` neighbours, 0 for ``f = 1``, and every score would
be 0. With one neighbour (``f <= 2`` in the last steps) the closest remaining pair always
ties, so for such small ``f`` the selection, and the output, depend on the row order.

Stage 2 aggregates the selected models coordinate-wise: per coordinate, the mean of the
``gamma`` (default ``theta - 2f``) values closest to the median of the ``theta`` selected
values, from one sort (see ``coordinate.closest_to_median_mean_sorted``).

Hostile rows. With at most ``f`` hostile rows, a row with NaN or +-Inf has Krum score
``+inf`` at every step and at least ``theta`` finite rows exist, so none is selected. Rows
with huge finite values may be selected; stage 2 then drops every hostile value that is
farther from the median than the benign values left out of the window, so the output is
finite, and inside the benign rows' per-coordinate range when the hostile values are far
(any kept value is within one benign spread of the benign range in general).
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import Tensor

from fedpoison.aggregators.coordinate import closest_to_median_mean_sorted, sort_workers
from fedpoison.aggregators.krum import pairwise_sq_distances
from fedpoison.aggregators.leave_one_out import check_leave_one_out_count
from fedpoison.aggregators.mean import check_count, check_matrix
from fedpoison.registry import Option, register_rule

__all__ = ["bulyan", "bulyan_select", "bulyan_with_and_without", "check_bulyan"]


def _opt_int(name: str, value: int | None, m: int, f: int) -> int | None:
    if value is None:
        return None
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(
            f"bulyan: {name} must be an integer, got m={m}, f={f}, {name}={value!r}"
        ) from None


def check_bulyan(
    m: int, f: int, theta: int | None = None, gamma: int | None = None
) -> tuple[int, int]:
    """Preconditions of Bulyan without data; returns the resolved ``(theta, gamma)``.

    Needs ``m >= 4f + 3``, ``2f + 1 <= theta <= m - 2f`` and ``1 <= gamma <= theta - 2f``.
    """
    m, f = check_count("bulyan", m, f)
    th = _opt_int("theta", theta, m, f)
    ga = _opt_int("gamma", gamma, m, f)
    if m < 4 * f + 3:
        raise ValueError(f"bulyan: needs m >= 4f + 3, got m={m}, f={f}")
    th = m - 2 * f if th is None else th
    if not 2 * f + 1 <= th <= m - 2 * f:
        raise ValueError(f"bulyan: needs 2f + 1 <= theta <= m - 2f, got m={m}, f={f}, theta={th}")
    ga = th - 2 * f if ga is None else ga
    if not 1 <= ga <= th - 2 * f:
        raise ValueError(
            f"bulyan: needs 1 <= gamma <= theta - 2f, got m={m}, f={f}, theta={th}, gamma={ga}"
        )
    return th, ga


def bulyan_select(D2: Tensor, f: int, theta: int) -> list[int]:
    """Bulyan's stage 1 from a squared-distance matrix: ``theta`` indices by repeated Krum.

    Returned in selection order. Each step scores every remaining model by the sum of its
    ``max(1, n - f - 2)`` (capped at ``n - 1``) smallest squared distances to the other
    remaining models, ``n`` = remaining, and takes the smallest score (ties -> smallest
    index), as ``krum_scores`` would on the submatrix of the remaining models. Each row of
    ``D2`` is sorted once; a step then only masks out removed models (``m x m`` work).
    """
    m = D2.shape[0]
    if D2.dim() != 2 or D2.shape[1] != m:
        raise ValueError(f"bulyan: D2 must be a square matrix, got shape {tuple(D2.shape)}")
    if not 1 <= theta <= m:
        raise ValueError(f"bulyan: needs 1 <= theta <= m, got m={m}, f={f}, theta={theta}")
    D = D2.detach().to("cpu", torch.float64).numpy()  # m x m: cheap on the host
    order = np.argsort(D, axis=1, kind="stable")
    Ds = np.take_along_axis(D, order, axis=1)  # each row ascending
    not_self = order != np.arange(m)[:, None]
    alive = np.ones(m, dtype=bool)
    chosen: list[int] = []
    for step in range(theta):
        n = m - step
        k = min(max(1, n - f - 2), n - 1)
        neighbour = alive[order] & not_self  # remaining others, in ascending distance
        take = neighbour & (np.cumsum(neighbour, axis=1) <= k)
        scores = np.where(take, Ds, 0.0).sum(axis=1)
        scores[~alive] = np.inf
        # first index of the minimum; if every remaining score is +inf, the first remaining
        pick = int(np.flatnonzero(alive & (scores == scores[alive].min()))[0])
        chosen.append(pick)
        alive[pick] = False
    return chosen


def bulyan(W: Tensor, f: int, theta: int | None = None, gamma: int | None = None) -> Tensor:
    """Bulyan: repeated-Krum selection of ``theta`` models, then per coordinate the mean of
    the ``gamma`` values closest to their median (paper Section 2.2, Appendix A).

    Defaults ``theta = m - 2f``, ``gamma = theta - 2f`` (the paper's setting). Needs
    ``m >= 4f + 3``. Output finite whenever at most ``f`` rows are hostile.
    """
    m, f = check_matrix(W, "bulyan", f)
    th, ga = check_bulyan(m, f, theta, gamma)
    chosen = bulyan_select(pairwise_sq_distances(W), f, th)
    index = torch.tensor(chosen, dtype=torch.long, device=W.device)
    S = sort_workers(W.detach().index_select(0, index))
    return closest_to_median_mean_sorted(S, ga)


def bulyan_with_and_without(W: Tensor, f: int, theta: int | None = None,
                            gamma: int | None = None) -> tuple[Tensor, Tensor]:
    """``(bulyan(W), B)`` with ``B[i]`` Bulyan without row i: Bulyan's repeated-Krum
    selection on submatrices of ONE distance matrix, then a sort of the θ selected rows per
    i (k rule calls minus the Gram matrix; Bulyan is not in the paper's Table 6)."""
    k = check_leave_one_out_count("bulyan", W)
    W = W.detach()
    D2 = pairwise_sq_distances(W)

    def aggregate(index: Tensor, th: int, ga: int) -> Tensor:
        at = index.to(D2.device)
        sub = D2.index_select(0, at).index_select(1, at)
        chosen = index[torch.tensor(bulyan_select(sub, f, th))].to(W.device)
        return closest_to_median_mean_sorted(sort_workers(W.index_select(0, chosen)), ga)

    th, ga = check_bulyan(k, f, theta, gamma)
    A = aggregate(torch.arange(k), th, ga)
    th, ga = check_bulyan(k - 1, f, theta, gamma)
    everyone = torch.arange(k)
    B = torch.stack([aggregate(everyone[everyone != i], th, ga) for i in range(k)])
    return A, B


register_rule(
    "bulyan", bulyan,
    reference="El Mhamdi, Guerraoui, Rouault, ICML 2018; Fang et al., USENIX Security 2020, "
              "Section 2.2 and Appendix A",
    summary="θ models chosen by repeated Krum, then per coordinate the mean of the γ values "
            "closest to their median",
    options=[
        Option("theta", None, "models selected by repeated Krum (2f + 1 ≤ θ ≤ m − 2f)",
               type=int, low=1, default_text="m − 2f"),
        Option("gamma", None, "values averaged per coordinate (1 ≤ γ ≤ θ − 2f)", type=int,
               low=1, default_text="θ − 2f"),
    ],
    check=check_bulyan, with_and_without=bulyan_with_and_without,
)
