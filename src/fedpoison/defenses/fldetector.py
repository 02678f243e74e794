"""FLDetector (Zhang, Cao, Jia, Gong, KDD 2022): detect the workers whose updates are not
consistent with what their history predicts, and remove them for the rest of the run.

Per iteration t, with ``w_t`` the global model the workers start from (Section 4, Algorithm 1):

1. Hessian-vector product by L-BFGS (Byrd, Nocedal, Schnabel 1994, compact form) over the
   last ``history`` pairs ``(Δw_s, Δg_s)`` of global-model differences and global-update
   differences: ``Ĥ_t v`` with ``v = w_t − w_{t−1}``;
2. predicted update of worker i (Cauchy mean value theorem): ``ĝᵢᵗ = gᵢᵗ⁻¹ + Ĥ_t v``;
3. distance ``dᵢᵗ = ‖ĝᵢᵗ − gᵢᵗ‖``, normalised by its sum over the workers;
4. suspicious score ``sᵢᵗ = (1/N) Σ_{r<N} dᵢᵗ⁻ʳ`` over a window of N iterations;
5. gap statistics on the scores (k-means with k = 1..7, 10 uniform reference sets): if the
   chosen number of clusters exceeds 1, 2-means splits the scores and the workers in the
   cluster with the larger mean score are detected; the server removes them for the rest of
   the run (the rows of those workers are dropped every iteration, before the rule).

``gᵢᵗ = w_t − wᵢ`` is worker i's pseudo-gradient (its SGD steps times the learning rate) and
``g_t = w_t − w_{t+1}`` the global one (what the rule aggregated): both share the factor of
the learning rate, which the L-BFGS product and the normalised distances do not see.

Choices (docs/choices.md, "Trust and detection defenses"):

* detection starts after ``warmup`` iterations (the authors' code predicts from epoch 50 on)
  and needs a full window of N scored iterations; it stops at the first detection (the paper
  then removes the detected workers and goes on without them);
* k-means on the one-dimensional scores is solved exactly (dynamic programming over the
  sorted scores, which is what Lloyd's algorithm approximates), batched over the reference
  sets; the uniform reference sets come from the server's seeded generator;
* a worker absent in the previous iteration (sampling) has no prediction this iteration; its
  score is the mean over the window's iterations where it had one;
* a hostile row (NaN or ±Inf entry) gets the largest normalised distance, 1; ±1e38 rows stay
  finite in float64; an L-BFGS system that cannot be solved gives ``Ĥ v = 0``;
* the detected workers are at most half of the scored ones: when the cluster with the larger
  scores is a majority, nothing is detected that iteration (malicious workers are the
  minority in FLDetector's evaluation; without this, attackers more consistent than the
  benign workers, e.g. a constant model, would get every benign worker removed);
* if dropping every detected worker leaves fewer rows than the server's rule needs, the
  detected workers with the highest scores are dropped, as many as the rule allows.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fedpoison.defenses._shared import server_of, updates, worker_ids
from fedpoison.defenses.base import DefenseContext
from fedpoison.registry import Option, register_defense

__all__ = ["fldetector", "gap_clusters", "kmeans_1d", "lbfgs_hvp"]

MAX_CLUSTERS = 7  # k = 1..7 in the authors' gap statistics
REFERENCES = 10  # uniform reference sets of the gap statistics


# ------------------------------------------------------------------------------ L-BFGS
def lbfgs_hvp(S: Tensor, Y: Tensor, v: Tensor) -> Tensor:
    """``B v`` for the L-BFGS approximation B of the Hessian from the pairs ``S`` [m, d]
    (model differences) and ``Y`` [m, d] (gradient differences), oldest first, in the compact
    form ``B = σI − [σSᵀ Yᵀ] M⁻¹ [σS; Y]``, ``M = [[σSSᵀ, L], [Lᵀ, −D]]``, with L the strictly
    lower triangle of ``SYᵀ``, D its diagonal and ``σ = y_mᵀs_m / s_mᵀs_m``. float64."""
    SY = S @ Y.T
    SS = S @ S.T
    sigma = (Y[-1] @ S[-1]) / (S[-1] @ S[-1])
    L = torch.tril(SY, diagonal=-1)
    M = torch.cat([torch.cat([sigma * SS, L], dim=1),
                   torch.cat([L.T, -torch.diag(torch.diagonal(SY))], dim=1)], dim=0)
    p = torch.cat([sigma * (S @ v), Y @ v])
    try:
        q = torch.linalg.solve(M, p)
    except RuntimeError:  # singular system
        return torch.zeros_like(v)
    out = sigma * v - torch.cat([sigma * S, Y], dim=0).T @ q
    return out if bool(torch.isfinite(out).all()) else torch.zeros_like(v)


# -------------------------------------------------------------------- 1-D k-means, gap
def kmeans_1d(x: Tensor, max_k: int) -> Tensor:
    """Optimal within-cluster sums of squares [B, max_k] of 1-D k-means (k = 1..max_k) of each
    row of ``x`` [B, n] (float64), by dynamic programming over the sorted values."""
    s = torch.sort(x, dim=1).values
    B, n = s.shape
    zero = torch.zeros(B, 1, dtype=s.dtype, device=s.device)
    P1 = torch.cat([zero, s.cumsum(1)], dim=1)
    P2 = torch.cat([zero, (s * s).cumsum(1)], dim=1)
    i = torch.arange(n, device=s.device)
    lo, hi = i[:, None], i[None, :]  # segment [lo, hi]
    count = (hi - lo + 1).clamp_min(1).to(s.dtype)
    seg1 = P1[:, None, 1:] - P1[:, :-1, None]
    seg2 = P2[:, None, 1:] - P2[:, :-1, None]
    cost = (seg2 - seg1 * seg1 / count).clamp_min(0.0)
    cost = cost.masked_fill((hi < lo)[None], torch.inf)  # [B, lo, hi]
    out = torch.empty(B, max_k, dtype=s.dtype, device=s.device)
    best = cost[:, 0, :]  # one cluster over [0, hi]
    out[:, 0] = best[:, -1]
    for k in range(1, max_k):
        # last cluster [lo, hi] with lo >= 1, the k before it over [0, lo - 1]
        best = (best[:, :-1, None] + cost[:, 1:, :]).min(dim=1).values
        out[:, k] = best[:, -1]
    return out


def gap_clusters(scores: Tensor, generator: torch.Generator,
                 max_k: int = MAX_CLUSTERS, references: int = REFERENCES) -> int:
    """The number of clusters the gap statistics (Tibshirani, Walther, Hastie 2001) choose for
    the 1-D ``scores``, min-max scaled to [0, 1] with uniform reference sets: the smallest k
    with ``Gap(k) ≥ Gap(k+1) − s_{k+1}`` (the largest k tried if none)."""
    x = scores.to(torch.float64)
    span = x.max() - x.min()
    n = x.shape[0]
    if n < 2 or not bool(span > 0):
        return 1
    x = (x - x.min()) / span
    max_k = min(max_k, n)
    ref = torch.rand(references, n, generator=generator, dtype=torch.float64).to(x.device)
    W = kmeans_1d(torch.cat([x[None], ref]), max_k)
    logw = torch.log(W.clamp_min(1e-300))
    gap = logw[1:].mean(0) - logw[0]
    sd = logw[1:].std(0, unbiased=False) * math.sqrt(1.0 + 1.0 / references)
    for k in range(max_k - 1):
        if bool(gap[k] >= gap[k + 1] - sd[k + 1]):
            return k + 1
    return max_k


def two_means_upper(scores: Tensor) -> Tensor:
    """Bool mask of the cluster with the larger mean in the optimal 2-means split of the 1-D
    ``scores`` (a split never separates equal values)."""
    s, order = torch.sort(scores.to(torch.float64))
    n = s.shape[0]
    out = torch.zeros(n, dtype=torch.bool, device=s.device)
    if n < 2:
        return out
    c1 = torch.cat([s.new_zeros(1), s.cumsum(0)])
    c2 = torch.cat([s.new_zeros(1), (s * s).cumsum(0)])
    j = torch.arange(1, n, device=s.device)  # upper cluster starts at j
    left = c2[j] - c1[j] ** 2 / j
    right = (c2[n] - c2[j]) - (c1[n] - c1[j]) ** 2 / (n - j)
    cost = (left + right).masked_fill(s[j] == s[j - 1], torch.inf)
    if not bool(torch.isfinite(cost).any()):
        return out
    start = int(j[int(torch.argmin(cost))])
    out[order[start:]] = True
    return out


# --------------------------------------------------------------------------- defense
def _grow(t: Tensor | None, rows: int, shape: tuple[int, ...], fill: float,
          dtype: torch.dtype, device: torch.device) -> Tensor:
    if t is not None and t.shape[0] >= rows:
        return t
    out = torch.full((rows, *shape), fill, dtype=dtype, device=device)
    if t is not None:
        out[: t.shape[0]] = t
    return out


def _observe(state: dict[str, Any], w: Tensor, history: int) -> Tensor | None:
    """Record the global model ``w`` = w_t; update the L-BFGS pairs; return ``v = w_t −
    w_{t−1}`` (None at the first iteration)."""
    last = state.get("w")
    state["w"] = w
    if last is None:
        return None
    g = last - w  # the global update applied at t − 1 (at model w_{t−1})
    if state.get("g") is not None and state.get("dw") is not None:
        s, y = state["dw"], g - state["g"]
        if bool(s @ s > 0):
            state["S"] = torch.cat([state.get("S", s.new_zeros(0, s.shape[0])), s[None]])
            state["Y"] = torch.cat([state.get("Y", y.new_zeros(0, y.shape[0])), y[None]])
            state["S"], state["Y"] = state["S"][-history:], state["Y"][-history:]
    state["g"] = g
    state["dw"] = w - last
    return state["dw"]


def fldetector(ctx: DefenseContext, *, window: int, history: int, warmup: int) -> Tensor:
    """FLDetector: L-BFGS-predicted updates, consistency scores over a window, gap
    statistics and 2-means; detected workers are dropped for the rest of the run
    (Zhang, Cao, Jia, Gong, KDD 2022, Algorithm 1)."""
    server = server_of(ctx, "fldetector")
    state = server.state
    W = ctx.W.detach()
    k = W.shape[0]
    ids = worker_ids(server, k).to(W.device)
    t = int(server.iteration)
    need = int(ids.max()) + 1
    removed = _grow(state.get("removed"), need, (), 0, torch.bool, W.device)
    score_at = _grow(state.get("score_at"), need, (), 0.0, torch.float64, W.device)
    state["removed"], state["score_at"] = removed, score_at

    if not state.get("detected", False):
        w = server.previous.detach().to(W.device, torch.float64)
        v = _observe(state, w, history)
        G, hostile = updates(W, w)
        G = -G  # pseudo-gradients g_i = w_t - w_i
        grads = _grow(state.get("grads"), need, (W.shape[1],), 0.0, torch.float64, W.device)
        seen = _grow(state.get("seen"), need, (), -1, torch.int64, W.device)
        dist = _grow(state.get("dist"), need, (window,), math.nan, torch.float64, W.device)
        col = t % window
        dist[:, col] = math.nan
        if t > warmup and v is not None and "S" in state:
            hvp = lbfgs_hvp(state["S"], state["Y"], v)
            had = seen[ids] == t - 1
            d = torch.linalg.vector_norm(grads[ids] + hvp - G, dim=1)
            d = torch.where(had & ~hostile, d, torch.nan)
            total = torch.nansum(d)
            if bool(total > 0):
                d = d / total
            d = d.masked_fill(hostile, 1.0)
            dist[ids, col] = d
            state["scored"] = state.get("scored", 0) + 1
        grads[ids] = G
        seen[ids] = torch.where(hostile, torch.full_like(ids, -1), torch.full_like(ids, t))
        state["grads"], state["seen"], state["dist"] = grads, seen, dist
        if state.get("scored", 0) >= window:
            window_scores = dist[ids]
            present = ~torch.isnan(window_scores).all(dim=1)
            score = torch.nanmean(window_scores[present], dim=1)
            upper = two_means_upper(score)
            minority = 2 * int(upper.sum()) <= int(present.sum())
            if present.sum() >= 2 and minority and gap_clusters(score, server.generator) > 1:
                flagged = ids[present][upper]
                removed[flagged] = True
                score_at[ids[present]] = score
                state["detected"] = True
                state.pop("grads", None)  # no longer needed
                state.pop("dist", None)
    return _drop(ctx, ids, removed, score_at)


def _drop(ctx: DefenseContext, ids: Tensor, removed: Tensor, score_at: Tensor) -> Tensor:
    """The rows of removed workers, as many as the server's rule can do without (highest
    detection scores first)."""
    rows = torch.nonzero(removed[ids]).reshape(-1)
    if rows.numel() == 0:
        return rows
    k = ids.numel()
    rows = rows[torch.sort(score_at[ids[rows]], descending=True, stable=True).indices]
    for n in range(min(rows.numel(), k - 1), 0, -1):
        try:
            ctx.rule.check(k - n, ctx.f)
        except (ValueError, AttributeError):
            continue
        return rows[:n].sort().values
    return rows[:0]


def check_fldetector(rule: Any, k: int, f: int, window: int, history: int,
                     warmup: int) -> None:
    """The server's rule must aggregate the k models (fewer once workers are removed)."""
    try:
        rule.check(k, f)
    except ValueError as e:
        raise ValueError(f"fldetector: {e}") from None


register_defense(
    "fldetector", fldetector,
    reference="Zhang, Cao, Jia, Gong, FLDetector: Defending Federated Learning Against Model "
              "Poisoning Attacks via Detecting Malicious Clients, KDD 2022 (Algorithm 1)",
    summary="L-BFGS-predicted updates, consistency scores over a window, gap statistics and "
            "2-means; detected workers are dropped for the rest of the run",
    options=[
        Option("window", 10, "N: iterations averaged in the suspicious score", low=1),
        Option("history", 10, "L-BFGS pairs of past global-model updates", low=1),
        Option("warmup", 50, "iterations before the first prediction", low=0),
    ],
    check=check_fldetector, needs_validation=False,
)
