"""Krum (paper Section 2.2, Blanchard et al. [9]) from one Gram matrix, exact on near-ties.

The building blocks are public because the Krum attack and the defenses reuse them:

* ``pairwise_sq_distances(W)``: all squared Euclidean distances from one float64 Gram
  matrix, ``||a||^2 + ||b||^2 - 2 a.b``, of the rows centred on a median-norm row,
  clamped at 0;
* ``krum_scores(D2, f)``: each model's sum of squared distances to its ``m - f - 2``
  nearest other models, from a distance matrix;
* ``krum_select(W, f)``: the index Krum picks (smallest score, ties to the smallest index).

Exactness. The Gram shortcut cancels large terms: entry ``(i, j)`` is off by at most
``kappa (n_i + n_j)^2`` with ``n_i`` the centred norm of row ``i`` and
``kappa = 2 (d + 8) 2^-53`` (a float64 dot product of length ``d`` is off by at most
``d 2^-53 |x| |y|``; the factor 2 and the 8 cover the centring, the two additions and
the norms' own rounding). When rows lie far from the centring row and close to each other,
that is more than the distances themselves. Krum therefore treats the Gram scores as
estimates with a guaranteed interval (``_score_bounds``); every model whose interval
reaches below the smallest upper end is a candidate, and when there is more than one, the
candidates' scores are recomputed paper-literally: direct differences ``||w_i - w_j||^2``
in float64, the ``m - f - 2`` smallest summed. The selection is then the one of that float64
reference (``_ExactDistances``). On ordinary inputs the intervals are ~1e-10 relative and
one candidate is left, which is the Gram argmin: the selection, and so the output, is the
one the Gram scores give, bit for bit.

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
from fedpoison.threads import over_columns

__all__ = ["check_krum", "krum", "krum_scores", "krum_select", "krum_with_and_without",
           "pairwise_sq_distances"]

#: Unit roundoff of float64.
_U64 = 2.0**-53

#: Bytes of float64 temporaries one step of the exact (direct-difference) distances may use.
_EXACT_CHUNK_BYTES = 2**23


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


def _check_distance_input(W: Tensor) -> None:
    if not isinstance(W, Tensor) or W.dim() != 2 or not W.is_floating_point():
        raise ValueError(
            "pairwise_sq_distances: W must be a 2-D floating tensor, got "
            f"{getattr(W, 'shape', type(W))}"
        )


def _gram(W: Tensor) -> tuple[Tensor, Tensor]:
    """``(D2, norms)``: the distances of ``pairwise_sq_distances`` and the float64 norms of
    the centred rows they came from (``+inf`` for a row with a non-finite entry); the norms
    set the distances' error bound (module doc)."""
    W = W.detach()
    c = _centre(W)
    # Centre in float64. On CPU NumPy's mixed-type subtract is ~3x faster than torch's; it
    # runs by column ranges on torch's threads (fedpoison.threads).
    if W.device.type == "cpu" and W.dtype in (torch.float32, torch.float64):
        w, cn = W.numpy(), c.numpy()
        Xn = np.empty(w.shape, dtype=np.float64)

        def centre_columns(a: int, b: int) -> None:
            np.subtract(w[:, a:b], cn[a:b], out=Xn[:, a:b])

        over_columns(centre_columns, w.shape[1])
        X = torch.from_numpy(Xn)
    else:
        X = W - c  # float32 - float64 -> float64
    G = X @ X.T
    sq = G.diagonal()
    # A finite float32 row minus a finite centre has a finite float64 squared norm, so this
    # finds every row with NaN or +-Inf without another pass over W.
    bad = ~torch.isfinite(sq)
    norms = torch.where(bad, torch.inf, sq.clamp(min=0.0).sqrt())
    D2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * G
    D2 = (D2 + D2.T) * 0.5  # exact symmetry, whatever the GEMM's blocking did
    D2.clamp_(min=0.0)
    if bool(bad.any()):
        D2[bad, :] = torch.inf
        D2[:, bad] = torch.inf
    D2.fill_diagonal_(0.0)
    return D2, norms


def pairwise_sq_distances(W: Tensor) -> Tensor:
    """Squared Euclidean distances between the rows of ``W`` (``m x d``): float64 ``m x m``.

    One Gram matrix in float64 of the rows centred on a median-norm row; the result is
    symmetric, clamped at 0 and has a zero diagonal. Rows with a non-finite entry are at
    distance ``+inf`` from every other row. Each entry is off by at most
    ``kappa (n_i + n_j)^2`` (module doc); ``krum`` and ``bulyan`` refine near-ties exactly.
    """
    _check_distance_input(W)
    return _gram(W)[0]


def _bound_constants(k: int, d: int, m: int) -> tuple[float, float]:
    """``(1.1 k kappa, rho)`` of ``_score_bounds``."""
    return 1.1 * k * 2.0 * (d + 8) * _U64, 2.0 * (d + m + 4) * _U64


def _score_bounds(
    s: np.ndarray, norms: np.ndarray, k: int, d: int, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` around the float64 reference score of Gram scores ``s`` (any shape).

    ``s`` sums ``k`` Gram distances of rows whose centred norms are ``norms`` (broadcast
    against ``s``; ``0`` for a row whose distances are already exact). Each of the ``k``
    entries is off by at most ``kappa (n_i + n_j)^2``; for a neighbour ``j`` counted in
    ``s``, ``n_j <= n_i + sqrt(D_ij)`` and ``D_ij <= s``, so the sum is off by at most
    ``1.1 k kappa (2 n_i + sqrt(s))^2`` (1.1 absorbs the norms' own rounding), which gives
    ``hi``; the true ``k`` nearest lie within ``hi``, which gives ``lo`` the same way.
    Both are widened by ``rho = 2 (d + m + 4) 2^-53``, relative, for the reference's own
    rounding (a sum of ``d`` squares, then of ``k`` distances) and for that of ``s``.
    A non-finite score is its own bound.
    """
    finite = np.isfinite(s)
    if finite.all():  # the usual case: no inf - inf to guard against
        return _finite_bounds(s, norms, k, d, m)
    with np.errstate(invalid="ignore", over="ignore"):
        lo, hi = _finite_bounds(s, norms, k, d, m)
    return np.where(finite, lo, s), np.where(finite, hi, s)


def _finite_bounds(s: np.ndarray, norms: np.ndarray, k: int, d: int, m: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``_score_bounds`` of finite scores ``s`` (no guard for non-finite ones)."""
    kap, rho = _bound_constants(k, d, m)
    hi = (s + kap * (2.0 * norms + np.sqrt(s)) ** 2) * (1.0 + rho)
    return (s - kap * (2.0 * norms + np.sqrt(hi)) ** 2) * (1.0 - rho), hi


def _exact_sq_distance_rows(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``||x_i - x_j||^2`` for ``i`` in ``rows`` and every row ``j`` of ``X`` [m, d]: float64
    ``[len(rows), m]``, paper-literal (direct differences in float64, squared, summed over
    the coordinates with NumPy's summation, the way the tests' reference does). Rows with a
    non-finite entry are ``+inf`` away (and ``0`` from themselves), as in the Gram matrix.
    Temporaries are limited to ``_EXACT_CHUNK_BYTES``.
    """
    m, d = X.shape
    bad = ~np.isfinite(X).all(axis=1)
    out = np.empty((len(rows), m), dtype=np.float64)
    block = max(1, _EXACT_CHUNK_BYTES // (8 * max(d, 1)))
    for t, i in enumerate(rows.tolist()):
        for j0 in range(0, m, block):
            diff = np.subtract(X[j0 : j0 + block], X[i], dtype=np.float64)
            np.multiply(diff, diff, out=diff)
            out[t, j0 : j0 + block] = diff.sum(axis=1)
        if bad[i]:
            out[t] = np.inf
        out[t, bad] = np.inf
        out[t, i] = 0.0
    return out


class _ExactDistances:
    """The Gram distances of ``W``'s rows with their error scale (the centred norms), and
    the float64 reference distances of any row on demand (computed once per row; identical
    rows share them)."""

    def __init__(self, W: Tensor, D2: Tensor | None = None, norms: Tensor | None = None):
        self.W = W.detach()
        if D2 is None or norms is None:
            D2, norms = _gram(self.W)
        self.D2 = D2
        self.norms = norms.detach().to("cpu", torch.float64).numpy()
        self.m, self.d = (int(x) for x in self.W.shape)
        self._rows: dict[int, np.ndarray] = {}
        self._host: np.ndarray | None = None

    def host(self) -> np.ndarray:
        """The Gram distances as a float64 NumPy array (copied to the host once)."""
        if self._host is None:
            self._host = self.D2.detach().to("cpu", torch.float64).numpy()
        return self._host

    def exact_rows(self, rows: np.ndarray) -> np.ndarray:
        """Reference distances of ``rows`` (global indices) to every row: ``[len, m]``."""
        wanted = [int(i) for i in rows]
        todo = np.array([i for i in dict.fromkeys(wanted) if i not in self._rows],
                        dtype=np.int64)
        if len(todo):
            X = self.W.cpu().numpy()
            # Identical rows have identical distance rows: compute one per distinct content.
            groups: dict[bytes, list[int]] = {}
            for i in todo.tolist():
                groups.setdefault(X[i].tobytes(), []).append(i)
            R = _exact_sq_distance_rows(X, np.array([g[0] for g in groups.values()]))
            for r, group in zip(R, groups.values(), strict=True):
                for i in group:
                    self._rows[i] = r.copy()
                    self._rows[i][i] = 0.0  # the representative's entry there is 0 too
        if not wanted:
            return np.empty((0, self.m))
        return np.stack([self._rows[i] for i in wanted])


def _exact_scores(R: np.ndarray, own: np.ndarray, k: int,
                  excluded: np.ndarray | None = None) -> np.ndarray:
    """Reference Krum scores from reference distance rows ``R`` [c, n]: for each row, the
    sum of its ``k`` smallest entries other than its own (column ``own``) and the columns
    in ``excluded`` (a [c, n] mask or None), ascending, summed with NumPy."""
    R = R.copy()
    R[np.arange(len(R)), own] = np.inf
    if excluded is not None:
        R[excluded] = np.inf
    return np.sort(R, axis=1)[:, :k].sum(axis=1)


def _near_best(s: np.ndarray, norms: np.ndarray, k: int, d: int, m: int) -> np.ndarray:
    """Mask of the finite Gram scores ``s`` (of rows with centred norms ``norms``) whose
    error interval (``_score_bounds``) reaches the smallest upper end: the candidates for
    the reference's pick."""
    lo, hi = _finite_bounds(s, norms, k, d, m)
    return lo <= hi.min()


def _refine_pick(dist: _ExactDistances, s: np.ndarray, g: int, k: int,
                 index: np.ndarray | None = None, alive: np.ndarray | None = None) -> int:
    """The reference Krum pick among the rows in ``index`` (global indices; all rows by
    default) still ``alive``, given their Gram scores ``s`` and Gram argmin ``g`` (local).

    Candidates are the rows whose score interval (``_score_bounds``) reaches the smallest
    upper end; one candidate is ``g`` itself, otherwise the candidates' reference scores
    decide (ties -> smallest local index). Returns a local index.
    """
    if not np.isfinite(s[g]):
        return g
    # _score_bounds on the finite scores only (the per-step fast path of Bulyan)
    ok = np.isfinite(s) if alive is None else alive & np.isfinite(s)
    rows = np.flatnonzero(ok)
    n = dist.norms[rows if index is None else index[rows]]
    cand = rows[_near_best(s[rows], n, k, dist.d, len(s))]
    if len(cand) <= 1:
        return g
    index = np.arange(len(s)) if index is None else index
    R = dist.exact_rows(index[cand])[:, index]
    excluded = None if alive is None else np.broadcast_to(~alive, R.shape)
    exact = _exact_scores(R, cand, k, excluded)
    return int(cand[np.flatnonzero(exact == exact.min())[0]])


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
    if off.device.type == "cpu" and not off.requires_grad:
        # NumPy's row sort gives the same ascending values as topk, 12x faster at m = 100
        # (0.015 against 0.19 ms); the same torch sum over them, so the same scores.
        return torch.from_numpy(np.sort(off.numpy(), axis=1))[:, :k].sum(dim=1)
    return torch.topk(off, k, dim=1, largest=False, sorted=True).values.sum(dim=1)


def _first_argmin(scores: Tensor) -> int:
    """Index of the smallest score; ties go to the smallest index."""
    best = scores.min()
    return int(torch.nonzero(scores == best)[0, 0]) if not torch.isnan(best) else 0


def _krum_pick(dist: _ExactDistances, f: int) -> int:
    """Krum's pick from ``dist``: the Gram argmin, refined exactly on near-ties."""
    scores = krum_scores(dist.D2, f)
    g = _first_argmin(scores)
    s = scores.detach().to("cpu", torch.float64).numpy()
    return _refine_pick(dist, s, g, dist.m - f - 2)


def krum_select(W: Tensor, f: int) -> int:
    """Index of the row Krum selects (smallest score; ties -> smallest index).

    The selection is that of the float64 reference (direct differences), whatever the
    conditioning of ``W`` (module doc).
    """
    check_matrix(W, "krum", f)
    check_krum(W.shape[0], f)
    return _krum_pick(_ExactDistances(W), f)


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
    [k, k] matrix of scores, one first-argmin per column. As in ``krum``, each Gram score is
    an interval; a column where several intervals reach the smallest upper end is decided by
    the float64 reference scores of those models (exact distances, computed once per row),
    so every pick is the one ``krum`` makes on the k − 1 models.
    """
    k = check_leave_one_out_count("krum", W)
    check_krum(k, f)
    check_krum(k - 1, f)
    W = W.detach()
    dist = _ExactDistances(W)
    a = _krum_pick(dist, f)
    n = (k - 1) - f - 2  # neighbours among the k - 1 models left
    off = dist.D2.clone()
    off.fill_diagonal_(torch.inf)
    s, order = torch.sort(off, dim=1, stable=True)
    head = s[:, : n + 1]  # the n + 1 nearest: removing one of them leaves the other n
    excl = exclusive_sums(head, dim=1)  # [k, n+1]: row j's n nearest without head[j, t]
    at = torch.arange(k, device=off.device).clamp_(max=n)  # position beyond n -> first n
    E = torch.empty_like(off).scatter_(1, order, excl.index_select(1, at))  # E[j, i]
    picks = first_argmin_columns(E)  # E[j, i]: score of j without i; column i -> B_i
    picks = _refine_columns(dist, E, picks, n)
    return W[a].clone(), W.index_select(0, picks)


def _refine_columns(dist: _ExactDistances, E: Tensor, picks: Tensor, n: int) -> Tensor:
    """Krum's pick without model i, for every column i of ``E`` [k, k] (``E[j, i]``: the
    Gram score of j without i, ``n`` neighbours), made that of the float64 reference.

    As in ``krum``: each score is an interval (``_score_bounds``); where several models'
    intervals reach a column's smallest upper end, their scores without i are recomputed
    from exact distances (ties -> smallest index). Other columns keep the Gram pick.
    """
    k = E.shape[0]
    Eh = E.detach().to("cpu", torch.float64).numpy()
    lo, hi = _score_bounds(Eh, dist.norms[:, None], n, dist.d, k)
    diag = np.eye(k, dtype=bool)
    lo[diag] = np.inf
    hi[diag] = np.inf
    cand = lo <= hi.min(axis=0, keepdims=True)
    cand &= np.isfinite(hi.min(axis=0, keepdims=True))  # all +inf: the Gram pick stands
    ambiguous = cand.sum(axis=0) > 1
    if not ambiguous.any():
        return picks
    js, cols = np.nonzero(cand & ambiguous[None, :])
    R = dist.exact_rows(js)
    excluded = np.zeros_like(R, dtype=bool)
    excluded[np.arange(len(js)), cols] = True  # without model i
    exact = _exact_scores(R, js, n, excluded)
    out = picks.detach().cpu().numpy().copy()
    first = np.lexsort((js, exact, cols))  # by column, then score, then index
    starts = np.flatnonzero(np.r_[True, cols[first][1:] != cols[first][:-1]])
    out[cols[first][starts]] = js[first][starts]
    return torch.from_numpy(out).to(picks.device)


register_rule(
    "krum", krum,
    reference="Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017; Fang et al., USENIX "
              "Security 2020, Section 2.2",
    summary="the local model with the smallest sum of squared distances to its m − f − 2 "
            "nearest others",
    check=check_krum, with_and_without=krum_with_and_without, selects_row=True,
)
