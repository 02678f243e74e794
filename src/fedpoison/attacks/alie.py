"""A Little Is Enough (Baruch, Baruch, Goldberg, NeurIPS 2019: the attack and its Algorithm 1).

Every compromised worker sends the same update, per coordinate ``Δ′_j = μ_j − z·σ_j``, where
``μ_j`` and ``σ_j`` are the mean and standard deviation of the updates ``Δᵢ = wᵢ − w_Re``
the attacker estimates from. ``z`` keeps the crafted value within the spread of enough
benign values that a majority-based rule still takes it: with ``n`` workers
(``ctx.m``, those aggregated this iteration) and ``c`` of them compromised, the attacker
needs ``s = ⌊n/2 + 1⌋ − c`` "supporters" among the benign workers, and
``z = max{z : Φ(z) < (n − s)/n} = Φ⁻¹((n − s)/n)``. The option ``z`` overrides it.

Gradients or updates (option ``space``; docs/choices.md, "Standard attacks"): the paper and
its code apply ``μ − zσ`` to gradients ``g``, and a worker's update after local SGD is
``Δ = −lr·g`` (a negative multiple), so ``gradient`` (default) sends ``Δ′ = μ + zσ`` of the
updates, the same crafted step; ``update`` applies ``μ − zσ`` to the updates literally (the
opposite drift). ``μ`` and ``σ`` below are those of the updates.

Which updates the statistics come from (option ``estimate``; docs/choices.md, "Standard
attacks"): ``all`` (default) — every update the attacker sees: all workers' under full
knowledge, the compromised workers' own under partial knowledge (exactly the paper's
Algorithm 1, whose attackers estimate from their own, benign-like, data); ``benign`` — the
benign workers' only (the bucketing paper's and Shejwalkar's code; under partial knowledge,
where the attacker sees no benign update, its own); ``own`` — the compromised workers' own
under both knowledge levels. Standard deviation
(option ``std``): ``population`` (default; the authors' code takes ``var ** 0.5`` with
NumPy's default ``ddof = 0``) or ``sample`` (``n − 1``, as ``torch.std`` in later code).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import torch
from torch import Tensor

from fedpoison.attacks.base import AttackContext
from fedpoison.attacks.direction import check_context
from fedpoison.registry import KNOWLEDGE, Diagnostic, Option, register_attack

__all__ = ["SPACES", "alie_attack", "alie_z", "estimation_rows"]

ESTIMATES = ("all", "benign", "own")
#: Where a formula written for gradients is applied (updates are ``Δ = −lr·g``).
SPACES = ("gradient", "update")
SPACE_HELP = ("the paper's formula on gradients (g ∝ −Δ, the updates negated; the papers' "
              "definition) or on the updates Δ literally")


def alie_z(n: int, c: int) -> float:
    """``Φ⁻¹((n − s)/n)`` with ``s = ⌊n/2 + 1⌋ − c`` supporters. When the attackers need no
    supporters (``s ≤ 0``: a majority, the quantile 1 and ``z`` infinite; with worker
    sampling, an iteration whose sample holds that many compromised workers) ``s = 1``,
    the largest finite ``z``."""
    s = max(math.floor(n / 2 + 1) - c, 1)
    return NormalDist().inv_cdf((n - s) / n)


def estimation_rows(ctx: AttackContext, estimate: str) -> Tensor:
    """The before-attack models an estimate is taken over: ``all`` it sees, the ``benign``
    workers' (its own under partial knowledge), or its ``own``."""
    if estimate == "own" or ctx.knowledge == "partial":
        return ctx.compromised
    assert ctx.benign is not None
    if estimate == "benign":
        if ctx.benign.shape[0] < 1:
            raise ValueError("estimate 'benign' needs at least one benign model")
        return ctx.benign
    return torch.cat([ctx.compromised, ctx.benign.to(ctx.compromised.device)])


def mean_and_std(U: Tensor, ddof: int) -> tuple[Tensor, Tensor]:
    """Per-coordinate mean and standard deviation (``n − ddof`` denominator; 0 for one row),
    float64; CPU tensors through NumPy (much faster than torch's along the worker axis)."""
    n = U.shape[0]
    if U.device.type == "cpu":
        A = U.detach().numpy()
        with np.errstate(invalid="ignore", over="ignore"):  # +inf and -inf rows: NaN
            mu = np.mean(A, axis=0, dtype=np.float64)
            sd = (np.std(A, axis=0, ddof=ddof, dtype=np.float64) if n > 1
                  else np.zeros_like(mu))
        return torch.from_numpy(mu), torch.from_numpy(sd)
    U64 = U.detach().to(torch.float64)
    sd = U64.std(dim=0, correction=ddof) if n > 1 else torch.zeros_like(U64[0])
    return U64.mean(dim=0), sd


def alie_attack(ctx: AttackContext, *, z: float | None = None, estimate: str = "all",
                std: str = "population", space: str = "gradient") -> Tensor:
    """``craft(ctx)``: ``c`` copies of ``w_Re + μ + z·σ`` (``space="gradient"``: ``μ − z·σ``
    of the negated updates) or ``w_Re + μ − z·σ`` (``"update"``), float32 ``[c, d]``."""
    check_context(ctx, "alie")
    if estimate not in ESTIMATES:
        raise ValueError(f"alie: estimate must be one of {', '.join(ESTIMATES)}, got "
                         f"{estimate!r}")
    zz = alie_z(ctx.m, ctx.c) if z is None else float(z)
    mu, sigma = mean_and_std(ctx.updates(estimation_rows(ctx, estimate)),
                             1 if std == "sample" else 0)
    ctx.note("alie_z", zz)
    if space not in SPACES:
        raise ValueError(f"alie: space must be one of {', '.join(SPACES)}, got {space!r}")
    sign = 1.0 if space == "gradient" else -1.0
    delta = (mu + sign * zz * sigma).float().to(ctx.w_re.device)
    return ctx.models_from(delta).expand(ctx.c, -1).clone()


register_attack(
    "alie", alie_attack,
    reference="Baruch, Baruch, Goldberg, 'A Little Is Enough: Circumventing Defenses For "
              "Distributed Learning', NeurIPS 2019: the attack, Algorithm 1",
    summary="every compromised worker sends μ − z·σ per coordinate of the gradients it sees, "
            "z = Φ⁻¹((n − s)/n) with s = ⌊n/2 + 1⌋ − c supporters",
    options=[
        Option("z", None, "how many standard deviations below the mean", type=float,
               default_text="Φ⁻¹((m − s)/m), s = ⌊m/2 + 1⌋ − c"),
        Option("estimate", "all", "updates μ and σ come from: all it sees, the benign "
               "workers' (its own under partial knowledge) or its own", choices=ESTIMATES),
        Option("std", "population", "standard deviation with n (population) or n − 1 "
               "(sample) in the denominator", choices=("population", "sample")),
        Option("space", "gradient", SPACE_HELP, choices=SPACES),
    ],
    knowledge=KNOWLEDGE, goals=(),
    diagnostics=[Diagnostic("alie_z", "z of μ − z·σ")],
)
