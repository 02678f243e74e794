"""SignGuard (Xu, Huang, Song, Lan, ICDCS 2022): filter updates by norm and by the statistics
of their element-wise signs, then average the trusted ones clipped to the median norm.

Per iteration (Section IV, Algorithm 1):

1. norm filter: ``S₁ = {i : L < ‖gᵢ‖ / M < R}`` with M the median of the update norms;
2. sign filter: on a random block of ``⌊fraction·d⌋`` consecutive coordinates, the
   proportions of positive, zero and negative entries of each update, each divided by its
   maximum over workers, are clustered with Mean-Shift (bandwidth from
   ``sklearn.cluster.estimate_bandwidth`` at quantile 0.5 over 50 samples, bin seeding,
   points outside every kernel left unclustered); ``S₂`` is the largest cluster;
3. the trusted set ``S = S₁ ∩ S₂`` is averaged after clipping every update to norm M:
   ``g = (1/|S|) Σ_{i∈S} gᵢ · min(1, M / ‖gᵢ‖)``; the global model moves by g.

The clustering follows the authors' code (scikit-learn's ``MeanShift``, the variant their
experiments use; their DBSCAN branch is off by default), as do the block of consecutive
coordinates and the strict inequalities.

Choices (docs/choices.md, "Trust and detection defenses"):

* M is the median of all k norms, the mean of the two middle ones for even k (the project's
  median); the authors' code uses that for the filter and the lower middle one for clipping;
* the block's start and the bandwidth estimate's sample are drawn from the server's seeded
  generator;
* a bandwidth of 0 (all sign features equal) or no cluster at all: the sign filter keeps
  every row; an empty trusted set: the global model does not move;
* hostile rows (NaN or ±Inf entry) are never trusted (norm +inf); ±1e38 rows are handled in
  float64; the rows outside S are reported removed (``ctx.remove``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fedpoison.aggregators.mean import check_count, check_matrix
from fedpoison.defenses._shared import median, report, row_norms, updates
from fedpoison.registry import Option, register_rule

__all__ = ["largest_sign_cluster", "sign_features", "signguard"]


def sign_features(block: Tensor) -> np.ndarray:
    """[k, 3] proportions of positive, zero and negative entries of each row of ``block``,
    each column divided by its maximum over rows (+1e-8, as the authors' code)."""
    sgn = torch.sign(block)
    feats = torch.stack([(sgn > 0).double().mean(1), (sgn == 0).double().mean(1),
                         (sgn < 0).double().mean(1)], dim=1)
    feats = feats / (feats.max(dim=0).values + 1e-8)
    return feats.cpu().numpy()


def largest_sign_cluster(features: np.ndarray, seed: int) -> np.ndarray:
    """Bool mask [k] of the largest Mean-Shift cluster of the sign features."""
    from sklearn.cluster import MeanShift, estimate_bandwidth  # imported here: ~0.5 s

    k = features.shape[0]
    bandwidth = estimate_bandwidth(features, quantile=0.5, n_samples=min(50, k),
                                   random_state=seed)
    if not bandwidth > 0:
        return np.ones(k, dtype=bool)
    try:
        labels = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=False).fit(
            features).labels_
    except ValueError as e:  # a bandwidth so small that no point is near any seed
        if "No point was within bandwidth" not in str(e):
            raise
        return np.ones(k, dtype=bool)  # no cluster at all: the sign filter keeps every row
    counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0)
    if counts.size == 0:
        return np.ones(k, dtype=bool)
    return labels == int(np.argmax(counts))


def check_signguard(m: int, f: int, lower: float, upper: float, fraction: float) -> None:
    """Needs m >= 1 local models and lower < upper."""
    check_count("signguard", m, f)
    if not lower < upper:
        raise ValueError(f"signguard: needs lower < upper, got lower={lower}, upper={upper}")


def signguard(W: Tensor, f: int, *, ctx, lower: float, upper: float,
              fraction: float) -> Tensor:
    """SignGuard: norm filter and sign-statistics clustering, then the mean of the trusted
    updates clipped to the median norm (Xu et al., ICDCS 2022, Algorithm 1)."""
    check_matrix(W, "signguard", f)
    previous = ctx.previous.detach()
    D, hostile = updates(W, previous)
    norms = row_norms(D, hostile)
    M = median(norms)
    trusted = (norms > lower * M) & (norms < upper * M) & ~hostile
    d = D.shape[1]
    size = max(1, int(fraction * d))
    start = int(torch.randint(0, max(1, d - size), (1,), generator=ctx.generator))
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator))
    in_cluster = largest_sign_cluster(sign_features(D[:, start:start + size]), seed)
    trusted &= torch.from_numpy(in_cluster).to(trusted.device)
    report(ctx, ~trusted)
    if not bool(trusted.any()):
        return previous.clone().to(W.dtype)
    scale = torch.where(norms > M, M / norms, torch.ones_like(norms))
    coef = torch.where(trusted, scale, torch.zeros_like(scale)) / trusted.sum()
    return (previous.to(torch.float64) + coef @ D).to(W.dtype)


register_rule(
    "signguard", signguard,
    reference="Xu, Huang, Song, Lan, Byzantine-robust Federated Learning through "
              "Collaborative Malicious Gradient Filtering (SignGuard), ICDCS 2022 "
              "(Algorithm 1)",
    summary="norm filter and Mean-Shift clustering of sign statistics, then the mean of the "
            "trusted updates clipped to the median norm",
    options=[
        Option("lower", 0.1, "norm filter: keep ‖gᵢ‖ > lower · median norm", low=0.0),
        Option("upper", 3.0, "norm filter: keep ‖gᵢ‖ < upper · median norm",
               low=0.0, low_open=True),
        Option("fraction", 0.1, "share of the coordinates (one random block) whose signs are "
                                "clustered", low=0.0, high=1.0, low_open=True),
    ],
    check=check_signguard, needs=("previous", "generator"),
)
