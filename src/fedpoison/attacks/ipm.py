"""Inner product manipulation (Xie, Koyejo, Gupta, "Fall of Empires", UAI 2019).

Every compromised worker sends ``Δ′ = −ε · μ``, ``μ`` the mean of the updates
``Δᵢ = wᵢ − w_Re`` it estimates from, so that the aggregate's inner product with the true
mean update turns negative (``⟨Δ′, μ⟩ = −ε‖μ‖²``): with a small ``ε`` the crafted updates
stay close to the benign ones (Krum, median still take them), with a large ``ε`` they
dominate an average. The paper runs ``ε = 0.1`` and ``ε = 100``; the default is 0.1 (also
the value the bucketing paper's code uses against every rule).

Which updates ``μ`` averages (option ``estimate``; docs/choices.md, "Standard attacks"):
``benign`` (default; the paper's mean of the correct workers' gradients) — under partial
knowledge the attacker sees only its own updates and averages those; ``all`` — every update
it sees (all workers' under full knowledge); ``own`` — the compromised workers' own.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedpoison.attacks.alie import ESTIMATES, estimation_rows
from fedpoison.attacks.base import AttackContext
from fedpoison.attacks.direction import check_context
from fedpoison.registry import KNOWLEDGE, Option, register_attack

__all__ = ["ipm_attack"]


def ipm_attack(ctx: AttackContext, *, epsilon: float = 0.1, estimate: str = "benign") -> Tensor:
    """``craft(ctx)``: ``c`` copies of ``w_Re − ε·μ`` (float32 ``[c, d]``)."""
    check_context(ctx, "ipm")
    if estimate not in ESTIMATES:
        raise ValueError(f"ipm: estimate must be one of {', '.join(ESTIMATES)}, got "
                         f"{estimate!r}")
    mu = ctx.updates(estimation_rows(ctx, estimate)).to(torch.float64).mean(dim=0)
    return ctx.models_from((-epsilon * mu).float()).expand(ctx.c, -1).clone()


register_attack(
    "ipm", ipm_attack,
    reference="Xie, Koyejo, Gupta, 'Fall of Empires: Breaking Byzantine-tolerant SGD by "
              "Inner Product Manipulation', UAI 2019: the inner product manipulation attack",
    summary="every compromised worker sends −ε times the mean update it sees (inner product "
            "−ε‖μ‖² with the benign mean)",
    options=[
        Option("epsilon", 0.1, "scale of the reversed mean update (the paper: 0.1 and 100)",
               low=0.0),
        Option("estimate", "benign", "updates the mean is taken over: the benign workers' "
               "(own under partial knowledge), all it sees, or its own", choices=ESTIMATES),
    ],
    knowledge=KNOWLEDGE, goals=(),
)
