"""Mean aggregation (paper Section 2.2) and the input checks that every rule starts from.

Mean has the weakest preconditions of the five rules (a non-empty ``m x d`` float32 matrix and
``f >= 0``), so the helpers that check them live here and the other rules build on them.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

__all__ = ["check_count", "check_matrix", "check_mean", "mean"]


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


def mean(W: Tensor, f: int) -> Tensor:
    """Coordinate-wise average of the ``m`` local models (paper Section 2.2).

    ``f`` is accepted for the common signature and ignored. Mean is not robust: one row with
    NaN, Inf or a huge value moves (or poisons) the output; no promise is made about it.
    """
    check_matrix(W, "mean", f)
    return W.detach().mean(dim=0)
