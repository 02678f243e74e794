"""Bulyan (paper Section 2.2 and Appendix A, El Mhamdi et al. [42]).

Stage 1 selects ``theta`` (default ``m - 2f``) models by repeated Krum: score the remaining
models with Krum, move the best one (ties -> smallest index) to the selection, repeat. All
steps read one distance matrix (each row sorted once, removed models dropped from it);
Gram distances are never recomputed. Krum inside Bulyan uses the same ``f`` as the server; with
``n`` models remaining it sums the squared distances to the ``max(1, n - f - 2)`` nearest
others (capped at ``n - 1``; a single remaining model is taken as is). The plain
``n - f - 2`` would reach 0 or below in the last steps: with ``theta = m - 2f`` the last
step has ``n = 2f + 1``, i.e. ``f - 1`` neighbours, 0 for ``f = 1``, and every score would
be 0. With one neighbour (``f <= 2`` in the last steps) the closest remaining pair always
ties, so for such small ``f`` the selection, and the output, depend on the row order.

Exactness: ``bulyan`` takes, at every step, the pick of the float64 reference (direct
differences); the Gram scores decide wherever their error bound separates the best model
from the rest, and near-ties are recomputed exactly (see ``krum``'s module doc).

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
from fedpoison.aggregators.krum import _ExactDistances, _near_best, _refine_pick
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
    ``D2`` is sorted once; a step then drops the picked model from the rest (``n x n`` work).
    ``D2`` is taken as it is; ``bulyan`` also refines near-ties to the float64 reference.
    """
    m = D2.shape[0]
    if D2.dim() != 2 or D2.shape[1] != m:
        raise ValueError(f"bulyan: D2 must be a square matrix, got shape {tuple(D2.shape)}")
    if not 1 <= theta <= m:
        raise ValueError(f"bulyan: needs 1 <= theta <= m, got m={m}, f={f}, theta={theta}")
    return _select(D2.detach().to("cpu", torch.float64).numpy(), f, theta)


def _select(D: np.ndarray, f: int, theta: int, dist: _ExactDistances | None = None,
            index: np.ndarray | None = None) -> list[int]:
    """Repeated Krum on the host matrix ``D`` (see ``bulyan_select``); local indices.

    Each row of ``D`` is sorted once and its own entry dropped: ``ids``/``Dc`` [n, n − 1]
    hold every remaining model's other remaining models by ascending distance, so a score
    is the sum of a row's first ``k`` entries. A pick removes its row and, from every other
    row, its one entry (one boolean mask, ``O(n²)``). With ``dist`` (the Gram distances of
    the rows ``index`` of ``dist.W``, ``D`` being their submatrix), every step's pick is that
    of the float64 reference: the scores' error intervals (``krum._score_bounds``) are
    checked, and near-ties refined with exact distances (``krum._refine_pick``). The
    selection therefore does not depend on the order in which a score's terms are summed.
    """
    m = D.shape[0]
    order = np.argsort(D, axis=1, kind="stable")
    ids = order[order != np.arange(m)[:, None]].reshape(m, m - 1)
    Dc = np.take_along_axis(D, ids, axis=1)
    rows = np.arange(m)  # local indices of the remaining models, ascending
    chosen: list[int] = []
    for step in range(theta):
        n = m - step
        k = min(max(1, n - f - 2), n - 1)
        sc = Dc[:, :k].sum(axis=1)
        # first index of the minimum; if every remaining score is +inf, the first remaining
        j = int(np.flatnonzero(sc == sc.min())[0])
        pick = int(rows[j])
        if dist is not None and n > 1:
            assert index is not None
            if not _one_candidate(dist, sc, dist.norms[index[rows]], k, m):
                scores = np.full(m, np.inf)
                scores[rows] = sc
                alive = np.zeros(m, dtype=bool)
                alive[rows] = True
                pick = _refine_pick(dist, scores, pick, k, index, alive)
                j = int(np.searchsorted(rows, pick))
        chosen.append(pick)
        if step + 1 < theta:
            keep = ids != pick
            keep[j] = False
            ids = ids[keep].reshape(n - 1, n - 2)
            Dc = Dc[keep].reshape(n - 1, n - 2)
            rows = np.delete(rows, j)
    return chosen


def _one_candidate(dist: _ExactDistances, s: np.ndarray, norms: np.ndarray, k: int,
                   m: int) -> bool:
    """Whether the finite Gram scores ``s`` leave one candidate for the reference's pick
    (the test ``krum._refine_pick`` starts with; its fast path here). False when a score is
    not finite: ``_refine_pick`` then decides."""
    if not np.isfinite(s).all():
        return False
    return int(np.count_nonzero(_near_best(s, norms, k, dist.d, m))) <= 1


def _exact_selection(dist: _ExactDistances, index: np.ndarray, f: int, theta: int
                     ) -> np.ndarray:
    """Stage 1 on the rows ``index`` of ``dist.W``, each step's pick that of the float64
    reference (module doc); global indices in selection order."""
    D = dist.host()[np.ix_(index, index)]
    return index[_select(D, f, theta, dist, index)]


def _bulyan_exact(dist: _ExactDistances, index: np.ndarray, f: int, theta: int,
                  gamma: int) -> Tensor:
    """Bulyan of the rows ``index`` of ``dist.W``, selection exact (module doc)."""
    chosen = _exact_selection(dist, index, f, theta)
    W = dist.W
    rows = torch.from_numpy(chosen).to(W.device)
    return closest_to_median_mean_sorted(sort_workers(W.index_select(0, rows)), gamma)


def bulyan(W: Tensor, f: int, theta: int | None = None, gamma: int | None = None) -> Tensor:
    """Bulyan: repeated-Krum selection of ``theta`` models, then per coordinate the mean of
    the ``gamma`` values closest to their median (paper Section 2.2, Appendix A).

    Defaults ``theta = m - 2f``, ``gamma = theta - 2f`` (the paper's setting). Needs
    ``m >= 4f + 3``. Output finite whenever at most ``f`` rows are hostile.
    """
    m, f = check_matrix(W, "bulyan", f)
    th, ga = check_bulyan(m, f, theta, gamma)
    return _bulyan_exact(_ExactDistances(W), np.arange(m), f, th, ga)


def bulyan_with_and_without(W: Tensor, f: int, theta: int | None = None,
                            gamma: int | None = None) -> tuple[Tensor, Tensor]:
    """``(bulyan(W), B)`` with ``B[i]`` Bulyan without row i: Bulyan's repeated-Krum
    selection on submatrices of ONE distance matrix (refined exactly on near-ties, exact rows
    shared by all i), then a sort of the θ selected rows per i (k rule calls minus the Gram
    matrix; Bulyan is not in the paper's Table 6)."""
    k = check_leave_one_out_count("bulyan", W)
    W = W.detach()
    dist = _ExactDistances(W)  # refined exactly on near-ties as in bulyan; exact rows shared
    th, ga = check_bulyan(k, f, theta, gamma)
    A = _bulyan_exact(dist, np.arange(k), f, th, ga)
    th, ga = check_bulyan(k - 1, f, theta, gamma)
    everyone = np.arange(k)
    B = torch.stack([_bulyan_exact(dist, everyone[everyone != i], f, th, ga) for i in range(k)])
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
