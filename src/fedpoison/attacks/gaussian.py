"""The Gaussian attack baseline (paper Section 4.1, "Compared attacks").

Per coordinate ``j``, estimate a Gaussian from the before-attack local models of all workers
(mean and sample standard deviation, ``n − 1``), and let every compromised worker draw its
own value from ``N(μ_j, σ_j²)``.

Partial knowledge (choice): the paper runs this baseline with all workers' models; under
partial knowledge the attacker cannot see benign models, so the Gaussian is estimated from
the ``c`` compromised before-attack models only (``σ = 0`` when ``c = 1``). The goal option
does not apply (the attack has no direction) and is ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedpoison.attacks.base import AttackContext
from fedpoison.attacks.direction import all_models, check_context
from fedpoison.attacks.trimmed_mean_attack import mean_std
from fedpoison.registry import KNOWLEDGE, register_attack

__all__ = ["gaussian_attack"]


def gaussian_attack(ctx: AttackContext) -> Tensor:
    """``craft(ctx)``: ``c`` models, coordinate ``j`` drawn from ``N(μ_j, σ_j²)``: ``[c, d]``."""
    check_context(ctx, "gaussian")
    X = all_models(ctx) if ctx.knowledge == "full" else ctx.compromised.detach()
    mu, sd = mean_std(X)
    Z = torch.randn((ctx.c, ctx.d), generator=ctx.generator, device=ctx.generator.device)
    dev = ctx.w_re.device
    return torch.addcmul(mu.to(dev), sd.to(dev), Z.to(dev, torch.float64)).float()


register_attack(
    "gaussian", gaussian_attack,
    reference="Fang, Cao, Jia, Gong, USENIX Security 2020: Section 4.1 (Gaussian baseline)",
    summary="each compromised worker sends N(μ_j, σ_j²) per coordinate, estimated from the "
            "models it sees",
    knowledge=KNOWLEDGE, goals=(),
)
