"""Min-Sum (Shejwalkar, Houmansadr, "Manipulating the Byzantine", NDSS 2021: AGR-agnostic).

Every compromised worker sends ``Δ′ = μ + γ·p`` (``μ``, ``p``, the reference updates and the
search for ``γ`` as in Min-Max, :mod:`fedpoison.attacks.min_max`) with the largest ``γ``
whose sum of squared distances to the references stays within a reference's own:
``Σᵢ ‖Δ′ − Δᵢ‖² ≤ max_i Σⱼ ‖Δᵢ − Δⱼ‖²``.

The bound (option ``bound``; docs/choices.md, "Standard attacks"): ``max`` (default; the
paper's text, "within the benign updates' own maximum") or ``min`` (the authors' code compares
with the smallest benign sum, a stricter bound, so a crafted update scores no worse than the
best benign one).

Closed form: ``Σᵢ ‖μ + γp − Δᵢ‖² = Σᵢ aᵢ + 2γ Σᵢ bᵢ + nγ²‖p‖²`` (``Σᵢ bᵢ = 0`` up to
rounding since ``μ`` is the references' mean), from the terms Min-Max computes once; the
references' sums of squared distances come from one Gram matrix.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from fedpoison.attacks.base import AttackContext
from fedpoison.attacks.direction import check_context
from fedpoison.attacks.min_max import (
    PERTURBATION_OPTION,
    SPACE_OPTION,
    THRESHOLD_OPTION,
    Reference,
    check_search,
    crafted,
    distance_terms,
    halving_search,
    reference,
)
from fedpoison.registry import KNOWLEDGE, Diagnostic, Option, register_attack

__all__ = ["min_sum_attack", "min_sum_gamma"]

BOUNDS = ("max", "min")


def min_sum_gamma(ref: Reference, gamma_init: float = 10.0, threshold: float = 1e-5,
                  bound: str = "max") -> tuple[float, int]:
    """Largest γ (by the search) with ``Σᵢ ‖μ + γp − Δᵢ‖² ≤ max_i Σⱼ ‖Δᵢ − Δⱼ‖²`` (or min)."""
    if bound not in BOUNDS:
        raise ValueError(f"min-sum: bound must be one of {', '.join(BOUNDS)}, got {bound!r}")
    T = distance_terms(ref)
    n, pp = len(T.a), T.pp
    with np.errstate(invalid="ignore", over="ignore"):
        sa, sb = float(np.sum(T.a)), float(np.sum(T.b))
        sums = T.D2.sum(axis=1)
    limit = float(sums.max() if bound == "max" else sums.min())

    def ok(gamma: float) -> bool:
        return sa + 2.0 * gamma * sb + n * gamma * gamma * pp <= limit

    return halving_search(ok, gamma_init, threshold)


def min_sum_attack(ctx: AttackContext, *, perturbation: str = "std", space: str = "gradient",
                   bound: str = "max", gamma_init: float = 10.0, threshold: float = 1e-5
                   ) -> Tensor:
    """``craft(ctx)``: ``c`` copies of ``w_Re + μ + γp`` (float32 ``[c, d]``)."""
    check_context(ctx, "min-sum")
    ref = reference(ctx, perturbation, space)
    gamma, _ = min_sum_gamma(ref, gamma_init, threshold, bound)
    ctx.note("min_sum_gamma", gamma)
    return crafted(ctx, ref, gamma)


register_attack(
    "min-sum", min_sum_attack,
    reference="Shejwalkar, Houmansadr, 'Manipulating the Byzantine: Optimizing Model "
              "Poisoning Attacks and Defenses for Federated Learning', NDSS 2021: the "
              "AGR-agnostic Min-Sum attack",
    summary="every compromised worker sends μ + γp with the largest γ whose sum of squared "
            "distances to the benign updates stays within a benign update's own",
    options=[
        PERTURBATION_OPTION,
        SPACE_OPTION,
        Option("bound", "max", "a benign update's sum of squared distances it must not "
               "exceed: the largest (the paper) or the smallest (the authors' code)",
               choices=BOUNDS),
        Option("gamma_init", 10.0, "γ the search starts at (it explores [0, 2γ_init])",
               low=0.0, low_open=True),
        THRESHOLD_OPTION,
    ],
    knowledge=KNOWLEDGE, goals=(), check=check_search,
    diagnostics=[Diagnostic("min_sum_gamma", "γ of μ + γp")],
)
