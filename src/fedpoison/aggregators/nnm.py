"""Nearest-neighbour mixing (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by
Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023, NNM):
a pre-aggregator composable before any rule.

Each row is replaced by the average of its ``m − f`` nearest rows in Euclidean distance,
itself included: ``yᵢ = (1/(m − f)) Σ_{j ∈ Nᵢ} x_j``. The distances come from Krum's one
float64 distance matrix (``krum.pairwise_sq_distances``); each row of it is sorted once
(itself first, distance ties to the smaller index) and all the means are one float64 matrix
product. The rule after it sees ``m`` rows with the same ``f``.

Hostile rows. A row with any NaN or ±Inf is infinitely far from every other row: with at
most ``f`` of them, every finite row has ``m − f`` finite rows (itself included) nearer than
any of them, so its mixture is finite (a float64 mean, so rows of ±1e38 do not overflow);
only the hostile rows' own mixtures are non-finite, at most ``f`` rows, which the rule
after it handles as hostile rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedpoison.aggregators.helpers import selected_means
from fedpoison.aggregators.krum import pairwise_sq_distances
from fedpoison.aggregators.mean import check_count, check_matrix
from fedpoison.registry import register_preaggregator

__all__ = ["nnm", "nnm_neighbours", "nnm_output"]


def nnm_output(m: int, f: int) -> tuple[int, int]:
    """``(m, f)``: the same count of rows; needs ``f < m`` (at least one neighbour)."""
    m, f = check_count("nnm", m, f)
    if f >= m:
        raise ValueError(f"nnm: needs f < m (it averages m - f neighbours), got m={m}, f={f}")
    return m, f


def nnm_neighbours(W: Tensor, f: int) -> Tensor:
    """Bool [m, m]: row i marks its ``m − f`` nearest rows, itself included (distance ties
    to the smaller index)."""
    m = W.shape[0]
    D2 = pairwise_sq_distances(W)
    D2.fill_diagonal_(-1.0)  # itself first, even among exact duplicates
    nearest = torch.sort(D2, dim=1, stable=True).indices[:, : m - f]
    return torch.zeros(m, m, dtype=torch.bool, device=D2.device).scatter_(1, nearest, True)


def nnm(W: Tensor, f: int) -> Tensor:
    """Each row replaced by the mean of its ``m − f`` nearest rows (AISTATS 2023)."""
    m, f = check_matrix(W, "nnm", f)
    nnm_output(m, f)
    return selected_means(W, nnm_neighbours(W, f).to(W.device))


register_preaggregator(
    "nnm", nnm,
    reference="Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, Fixing by Mixing, "
              "AISTATS 2023 (nearest neighbour mixing, NNM)",
    summary="each model replaced by the average of its m − f nearest models (itself "
            "included)",
    output=nnm_output,
)
