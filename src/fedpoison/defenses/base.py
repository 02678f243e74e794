"""What a defense sees (Section 5): the local models, the server's rule and a validation set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class DefenseContext:
    """One iteration's input to a defense.

    ``W`` [k, d] are the local models received (after any attack). ``rule`` and ``beta`` are
    the server's aggregation rule and trimmed mean's β, ``f`` the server's assumed number of
    compromised workers (Section 5: the server knows the upper bound c and removes c models).
    ``evaluate(models [n, d]) -> (error rates [n], cross-entropies [n])`` evaluates models on
    the server's validation set in one batched pass.
    """

    W: Tensor
    f: int
    rule: str
    beta: int | None
    evaluate: Callable[[Tensor], tuple[Tensor, Tensor]]


Defense = Callable[[DefenseContext], Tensor]
"""reject(ctx) -> indices (int64) of the rows of W to drop before aggregation."""
