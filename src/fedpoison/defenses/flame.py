"""FLAME (Nguyen et al., USENIX Security 2022): cluster the local models, clip the admitted
ones to the median distance from the global model, add Gaussian noise.

Per iteration (Section 5, Algorithm 1), with ``G`` the previous global model:

1. model filtering: pairwise cosine distances ``cᵢⱼ = 1 − cos(Wᵢ, Wⱼ)`` of the local models,
   clustered by HDBSCAN (``sklearn.cluster.HDBSCAN``, ``metric="precomputed"``, minimum
   cluster size ``k/2 + 1``, ``min_samples=1``, a single cluster allowed); the models of the
   largest cluster are admitted, the others (HDBSCAN's noise) are not;
2. adaptive clipping: ``eᵢ = ‖Wᵢ − G‖``, ``S = median(e₁..e_k)``, each admitted model becomes
   ``G + (Wᵢ − G) · min(1, S / eᵢ)``;
3. aggregation: the mean of the clipped admitted models;
4. adaptive noising: ``+ N(0, σ²I)`` with ``σ = λ S``, ``λ = (1/ε) √(2 ln(1.25/δ))``.

Choices (docs/choices.md, "Trust and detection defenses"):

* distances of the models themselves (Algorithm 1's ``CosineDistance(W₁, …, W_k)``), in
  float64; the median S is over all k models (Algorithm 1), the mean of the two middle ones
  for even k;
* defaults ε = 3705, δ = 0.001: λ ≈ 0.001, the noise level of FLAME's image-classification
  experiments; noise drawn from the server's seeded generator;
* if HDBSCAN finds no cluster, every finite model is admitted (clipping still bounds each);
  with k < 3 no clustering is possible and every finite model is admitted;
* hostile rows (NaN or ±Inf entry) are at the largest cosine distance (2) from every model and
  never admitted; ±1e38 rows stay finite in float64; rows not admitted are reported removed
  (``ctx.remove``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fedpoison.aggregators.mean import check_count, check_matrix
from fedpoison.defenses._shared import median, report, row_norms, updates
from fedpoison.registry import Option, register_rule

__all__ = ["flame", "flame_admitted", "noise_level"]


def noise_level(epsilon: float, delta: float) -> float:
    """FLAME's noise level factor ``λ = (1/ε) √(2 ln(1.25/δ))``."""
    return math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def cosine_distances(X: Tensor, hostile: Tensor) -> np.ndarray:
    """[k, k] float64 ``1 − cos`` of the rows of ``X`` (float64), hostile rows at 2."""
    norms = torch.linalg.vector_norm(X, dim=1, keepdim=True)
    U = torch.where(norms > 0, X / torch.where(norms > 0, norms, torch.ones_like(norms)),
                    torch.zeros_like(X))
    dist = (1.0 - U @ U.T).clamp(0.0, 2.0)
    dist[hostile] = 2.0
    dist[:, hostile] = 2.0
    dist.fill_diagonal_(0.0)
    dist = (dist + dist.T) / 2  # exactly symmetric
    return dist.cpu().numpy()


def flame_admitted(X: Tensor, hostile: Tensor) -> Tensor:
    """Bool mask [k] of the models in the largest HDBSCAN cluster of their cosine distances."""
    k = X.shape[0]
    finite = ~hostile
    if k < 3:
        return finite
    from sklearn.cluster import HDBSCAN  # imported here, when used: ~0.5 s

    labels = HDBSCAN(metric="precomputed", min_cluster_size=k // 2 + 1, min_samples=1,
                     allow_single_cluster=True, copy=True).fit(cosine_distances(X, hostile)).labels_
    if not (labels >= 0).any():
        return finite
    biggest = int(np.argmax(np.bincount(labels[labels >= 0])))
    return torch.from_numpy(labels == biggest).to(X.device) & finite


def check_flame(m: int, f: int, epsilon: float, delta: float) -> None:
    """Needs m >= 1 local models."""
    check_count("flame", m, f)


def flame(W: Tensor, f: int, *, ctx, epsilon: float, delta: float) -> Tensor:
    """FLAME: HDBSCAN on cosine distances, median-norm clipping, Gaussian noise
    (Nguyen et al., USENIX Security 2022, Algorithm 1)."""
    check_matrix(W, "flame", f)
    previous = ctx.previous.detach().to(torch.float64)
    D, hostile = updates(W, previous)
    X = W.detach().to(torch.float64).masked_fill(hostile[:, None], 0.0)
    admitted = flame_admitted(X, hostile)
    report(ctx, ~admitted)
    e = row_norms(D, hostile)
    S = median(e)
    if not bool(torch.isfinite(S)):
        S = torch.zeros_like(S)
    scale = torch.where(e > S, S / e, torch.ones_like(e))
    n = int(admitted.sum())
    coef = torch.where(admitted, scale, torch.zeros_like(scale)) / max(n, 1)
    noise = torch.randn(D.shape[1], generator=ctx.generator, dtype=torch.float64)
    sigma = noise_level(epsilon, delta) * S
    return (previous + coef @ D + sigma * noise.to(D.device)).to(W.dtype)


register_rule(
    "flame", flame,
    reference="Nguyen et al., FLAME: Taming Backdoors in Federated Learning, USENIX Security "
              "2022 (Section 5, Algorithm 1)",
    summary="HDBSCAN on cosine distances admits the majority cluster; mean of admitted models "
            "clipped to the median distance, plus Gaussian noise",
    options=[
        Option("epsilon", 3705.0, "privacy budget ε of the noise level λ",
               low=0.0, low_open=True),
        Option("delta", 0.001, "δ of the noise level λ = (1/ε)√(2 ln(1.25/δ))",
               low=0.0, high=1.0, low_open=True, high_open=True),
    ],
    check=check_flame, needs=("previous", "generator"),
)
