"""DnC, divide-and-conquer (Shejwalkar & Houmansadr, NDSS 2021, Section VI, Algorithm 2):
drop the updates that lie furthest along the top singular direction of a random sub-sample
of coordinates.

For each of ``niters`` rounds: draw ``b`` coordinates r at random, centre the sub-sampled
updates ``∇ᵢʳ − μ`` (μ their mean), take the top right singular vector v of the centred
matrix, score each update ``sᵢ = ⟨∇ᵢʳ − μ, v⟩²`` and keep the ``k − ⌈c·f⌉`` lowest scores;
the good set is the intersection over rounds. The paper then aggregates the good set with an
AGR (the mean in its experiments): here DnC is a defense and the server's rule (``--rule
mean`` for the paper's setting) aggregates what it keeps.

Choices (docs/choices.md, "Trust and detection defenses"):

* ``f`` (the server's assumed number of malicious workers) is the paper's m; ``b`` larger
  than d takes every coordinate; coordinates are drawn without replacement from the server's
  seeded generator;
* ``sᵢ = λ uᵢ²`` from the top eigenpair (λ, u) of the k x k Gram matrix of the centred rows,
  which equals ``⟨xᵢ − μ, v⟩²`` (``Xv = σu``) and costs a k x k eigendecomposition instead of
  a k x b SVD; float64;
* hostile rows (NaN or ±Inf entry) get score +inf (dropped first) and are left out of μ and
  of the Gram matrix; ties in score go to the smaller row index.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fedpoison.defenses._shared import server_of
from fedpoison.defenses.base import DefenseContext
from fedpoison.registry import Option, register_defense

__all__ = ["dnc", "dnc_scores"]


def dnc_scores(X: Tensor, hostile: Tensor) -> Tensor:
    """Outlier scores ``sᵢ = ⟨xᵢ − μ, v⟩²`` of the rows of ``X`` [k, b] (float64); v the
    top right singular vector of the centred finite rows; hostile rows get +inf."""
    good = ~hostile
    scores = torch.full((X.shape[0],), torch.inf, dtype=torch.float64, device=X.device)
    if not bool(good.any()):
        return scores
    Xc = X[good] - X[good].mean(dim=0)
    gram = Xc @ Xc.T
    values, vectors = torch.linalg.eigh(gram)
    scores[good] = values[-1].clamp_min(0.0) * vectors[:, -1] ** 2
    return scores


def _removed_per_round(k: int, f: int, c: float) -> int:
    return min(math.ceil(c * f - 1e-9), k - 1)


def dnc(ctx: DefenseContext, *, niters: int, b: int, c: float) -> Tensor:
    """DnC: drop the updates with the highest sub-sampled SVD outlier scores (Shejwalkar and
    Houmansadr, NDSS 2021, Algorithm 2)."""
    server = server_of(ctx, "dnc")
    W = ctx.W.detach()
    k, d = W.shape
    remove = _removed_per_round(k, ctx.f, c)
    if remove <= 0:
        return torch.empty(0, dtype=torch.int64, device=W.device)
    X64 = W.to(torch.float64)
    hostile = ~torch.isfinite(X64).all(dim=1)
    X64 = X64.masked_fill(hostile[:, None], 0.0)
    keep = torch.ones(k, dtype=torch.bool, device=W.device)
    for _ in range(niters):
        cols = torch.randperm(d, generator=server.generator)[: min(b, d)].sort().values
        scores = dnc_scores(X64[:, cols.to(W.device)], hostile)
        # the `remove` highest scores; among equal scores the smaller row index goes first
        ranked = torch.sort(scores, descending=True, stable=True).indices
        keep[ranked[:remove]] = False
    return torch.nonzero(~keep).reshape(-1)


def check_dnc(rule: Any, k: int, f: int, niters: int, b: int, c: float) -> None:
    """The server's rule must aggregate the rows DnC keeps (at least k − niters·⌈c·f⌉)."""
    left = k - min(k - 1, niters * _removed_per_round(k, f, c)) if k > 1 else k
    try:
        rule.check(k, f)
        rule.check(left, f)
    except ValueError as e:
        raise ValueError(f"dnc: drops up to {k - left} of k={k} models (f={f}, c={c}, "
                         f"niters={niters}) and the rule must aggregate the rest: {e}") from None


register_defense(
    "dnc", dnc,
    reference="Shejwalkar, Houmansadr, Manipulating the Byzantine: Optimizing Model Poisoning "
              "Attacks and Defenses for Federated Learning, NDSS 2021 (Algorithm 2)",
    summary="drop the ⌈c·f⌉ updates with the largest projections on the top singular vector "
            "of a random coordinate sub-sample (per round; niters rounds)",
    options=[
        Option("niters", 1, "rounds of sub-sampling; the good set is their intersection",
               low=1),
        Option("b", 10000, "coordinates sub-sampled per round (all when b ≥ d)", low=1),
        Option("c", 1.0, "filtering fraction: each round drops ⌈c·f⌉ updates",
               low=0.0, low_open=True),
    ],
    check=check_dnc, needs_validation=False,
)
