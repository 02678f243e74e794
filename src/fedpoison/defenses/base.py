"""What a defense sees (Section 5): the local models, the server's rule and its held-out data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from fedpoison.registry import Bound, DefenseSpec


@dataclass(frozen=True)
class DefenseContext:
    """One iteration's input to a defense.

    ``W`` [k, d] are the local models received (after any attack). ``rule`` is the server's
    rule with its options and pre-aggregators (``rule(W, f)``, ``rule.with_and_without(W,
    f)``, ``rule.check(m, f)``), ``f`` the server's assumed number of compromised workers
    (Section 5: the server knows the upper bound c and removes c models). ``server`` is the
    :class:`fedpoison.server.ServerContext`: the previous global model, the defense's own
    state across iterations, a seeded generator and the server's data.
    """

    W: Tensor
    f: int
    rule: Any
    server: Any = None

    @property
    def evaluate(self) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """``evaluate(models [n, d]) -> (error rates [n], cross-entropies [n])`` on the
        server's validation set, in one batched pass."""
        data = getattr(self.server, "server_data", None)
        if data is None:
            raise ValueError("this defense needs the server's validation set")
        return data.evaluate


Defense = Callable[..., Tensor]
"""reject(ctx, **options) -> indices (int64) of the rows of W to drop before aggregation."""


class BoundDefense(Bound):
    """A registered defense with its options bound: ``defense(W, f, rule, ctx) -> drop``."""

    spec: DefenseSpec

    def __call__(self, W: Tensor, f: int, rule: Any, server: Any = None) -> Tensor:
        return self.spec.impl(DefenseContext(W=W, f=f, rule=rule, server=server),
                              **self.options)
