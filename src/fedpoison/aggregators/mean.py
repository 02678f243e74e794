"""Mean aggregation (paper Section 2.2) and the input checks that every rule starts from.

Mean has the weakest preconditions of the five rules (a non-empty ``m x d`` float32 matrix and
``f >= 0``), so the helpers that check them live here and the other rules build on them.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

from fedpoison.aggregators.leave_one_out import chunks, exclusive_sums
from fedpoison.registry import register_rule

__all__ = ["check_count", "check_matrix", "check_mean", "mean", "mean_with_and_without"]


def check_count(rule: str, m: int, f: int) -> tuple[int, int]:
    """Check that ``m >= 1`` and ``f >= 0`` are integers; return them as ``int``.

    Raises ``ValueError`` naming ``rule``, ``m`` and ``f``.
    """
    try:
        m_i = operator.index(m)
        f_i = operator.index(f)
    except TypeError:
        raise ValueError(f"{rule}: m and f must be integers, got m={m!r}, f={f!r}") from None
    if m_i < 1:
        raise ValueError(f"{rule}: needs at least one local model (m >= 1), got m={m_i}, f={f_i}")
    if f_i < 0:
        raise ValueError(f"{rule}: needs f >= 0, got m={m_i}, f={f_i}")
    return m_i, f_i


def check_matrix(W: Tensor, rule: str, f: int) -> tuple[int, int]:
    """Check the contract's input: ``W`` a 2-D float32 tensor with ``m >= 1`` rows, ``f >= 0``.

    Returns ``(m, f)`` as ints. Raises ``ValueError`` naming ``rule``, ``m`` and ``f``.
    """
    if not isinstance(W, Tensor):
        raise ValueError(f"{rule}: W must be a torch.Tensor of shape (m, d), got {type(W)!r}")
    if W.dim() != 2:
        raise ValueError(
            f"{rule}: W must be 2-D (m local models x d parameters), got shape "
            f"{tuple(W.shape)} (m unknown), f={f!r}"
        )
    m = W.shape[0]
    if W.dtype != torch.float32:
        raise ValueError(f"{rule}: W must be float32, got {W.dtype} (m={m}, f={f!r})")
    return check_count(rule, m, f)


def check_mean(m: int, f: int) -> None:
    """Preconditions of mean without data: ``m >= 1``, ``f >= 0``."""
    check_count("mean", m, f)


def _mean_rows(W: Tensor) -> Tensor:
    """Mean over the rows of a float32 ``W``, in float32; finite whenever the exact mean is.

    The float32 average is kept as it is (bit for bit) wherever it is finite. Where it is
    not although every value of the column is finite, the float32 sum overflowed (two
    values of 2e38 already do); those columns are averaged in float64, where a sum of float32
    values cannot overflow, and rounded to float32, which is finite whenever the exact mean
    is representable.
    """
    out = W.mean(dim=0)
    overflow = ~torch.isfinite(out)
    if W.device.type == "cuda":  # the same, without making the host wait for the device
        overflow &= torch.isfinite(W).all(dim=0)
        return torch.where(overflow, W.mean(dim=0, dtype=torch.float64).to(W.dtype), out)
    if bool(overflow.any()):
        overflow &= torch.isfinite(W).all(dim=0)
        if bool(overflow.any()):
            exact = W[:, overflow].to(torch.float64).mean(dim=0)
            out[overflow] = exact.to(W.dtype)
    return out


def mean(W: Tensor, f: int) -> Tensor:
    """Coordinate-wise average of the ``m`` local models (paper Section 2.2).

    ``f`` is accepted for the common signature and ignored. Summed in float32; columns whose
    float32 sum overflows although their values are finite are averaged in float64, so the
    output is finite whenever the exact mean is. Mean is not robust: one row with NaN, Inf
    or a huge value moves (or poisons) the output; no promise is made about it.
    """
    check_matrix(W, "mean", f)
    return _mean_rows(W.detach())


def mean_with_and_without(W: Tensor, f: int) -> tuple[Tensor, Tensor]:
    """``(mean(W), B)`` with ``B[i]`` the mean without row i: exclusive prefix and suffix sums
    in float64, ``B_i = (P_i + R_{i+1}) / (k − 1)`` (never a total minus a row, so a huge
    hostile value cannot cancel the benign values next to it)."""
    from fedpoison.aggregators.leave_one_out import check_leave_one_out_count

    k = check_leave_one_out_count("mean", W)
    check_count("mean", k - 1, f)
    W = W.detach()
    d = W.shape[1]
    A = mean(W, f)
    B = torch.empty_like(W)
    for c0, c1 in chunks(k, d):
        X = W[:, c0:c1].to(torch.float64)
        B[:, c0:c1] = (exclusive_sums(X) / (k - 1)).to(W.dtype)
    return A, B


register_rule(
    "mean", mean,
    reference="Fang et al., USENIX Security 2020, Section 2.2 (FedAvg's average, McMahan et "
              "al., AISTATS 2017)",
    summary="coordinate-wise average of the local models (not robust)",
    check=check_mean, with_and_without=mean_with_and_without,
)
