"""Sign flipping: every compromised worker sends its own update negated and scaled.

``Δ′ᵢ = −scale · Δᵢ`` with ``Δᵢ = wᵢ − w_Re`` the compromised worker's own before-attack
update: the "bit flipping" attack of Karimireddy, He, Jaggi (ICLR 2022, whose code sends
``−gradient``, i.e. ``scale = 1``, the default) and the sign-flipping attack of the
robust-aggregation literature (e.g. Li et al., AAAI 2019, RSA); `scale` sets its size.
A worker only reads its own update, so full and partial knowledge give the same models.
"""

from __future__ import annotations

from torch import Tensor

from fedpoison.attacks.base import AttackContext
from fedpoison.attacks.direction import check_context
from fedpoison.registry import KNOWLEDGE, Option, register_attack

__all__ = ["sign_flip_attack"]


def sign_flip_attack(ctx: AttackContext, *, scale: float = 1.0) -> Tensor:
    """``craft(ctx)``: row i is ``w_Re − scale·Δᵢ`` (float32 ``[c, d]``)."""
    check_context(ctx, "sign-flip")
    return ctx.models_from(-scale * ctx.updates(ctx.compromised))


register_attack(
    "sign-flip", sign_flip_attack,
    reference="Karimireddy, He, Jaggi, ICLR 2022 (bit flipping, their code); Li, Xu, Chen, "
              "Giannakis, Ling, AAAI 2019 (sign flipping)",
    summary="every compromised worker sends its own update negated, times scale",
    options=[Option("scale", 1.0, "how far along the negated own update", low=0.0)],
    knowledge=KNOWLEDGE, goals=(),
)
