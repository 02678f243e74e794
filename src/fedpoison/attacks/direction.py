"""What every model attack shares: input checks, the before-attack direction, random draws.

Direction (paper Section 3.1). ``s_j`` is the sign of the change the ``j``-th global
parameter would make in this iteration without attack; ``s = sign(w − w_Re)``.

* Full knowledge, two estimators of ``w`` (choice, docs/choices.md):

  - ``"mean"`` (default): the mean of the before-attack local models of *all* workers
    (compromised and benign), i.e. the sign of the average update (the sum of the workers'
    gradients, for one local SGD step);
  - ``"rule"``: the target rule applied to them with the server's ``f`` (and its options),
    Eq. 1's before-attack global model ``w`` read literally.

  The paper's text suggests ``"rule"``, but its Table 2a full-knowledge numbers are
  reproduced only by ``"mean"``. Measured on LR/MNIST (500 iterations, paper Table 1
  setting, seeds 0/1/2), final error with ``"mean"`` vs ``"rule"``: Krum 0.79 vs 0.96
  (seed 0; paper 0.80), trimmed mean 0.52/0.60/0.50 vs 0.15/0.22/0.16 (paper 0.52),
  median 0.31/0.31/0.31 vs 0.13/0.13/0.13 (paper 0.29; no attack 0.13). ``"mean"`` is also
  what the partial-knowledge estimator estimates: ``s̃`` is the same mean, over the
  compromised models the attacker can see. The attacks' ``direction`` option selects it
  (``DEFAULT_DIRECTION``, "mean", unless the run config says otherwise).
* Partial knowledge: ``s̃ = sign(mean of the compromised before-attack models − w_Re)``
  (Section 3.2, "Partial knowledge").

Sign of a zero change (choice, docs/choices.md): ``s_j = 0``. A parameter that does not
move (e.g. logistic-regression weights of border pixels that are zero in every image: their
gradient is exactly 0) has no direction to reverse. The paper writes ``s_j ∈ {−1, 1}`` and,
for partial knowledge, "otherwise −1"; following that literally would make the Krum attack
spend its distance budget pushing parameters that cannot matter (``w'₁`` moves by ``λ`` in
every such coordinate, so Krum accepts a smaller ``λ``). The Krum attack therefore uses
``d_eff = sᵀs`` (``= d`` whenever no coordinate is zero, the paper's ``sᵀs = d``), and the
trimmed-mean/median attacks treat ``s_j = 0`` like ``s_j = +1`` (the ``w_min`` side).

Random draws come from ``ctx.generator`` on its own device (a CPU generator in a run) and are
then moved to ``w_re``'s device, so crafted models are the same on every device for one seed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import Tensor

from fedpoison.attacks.base import AttackContext
from fedpoison.registry import Option

__all__ = [
    "DEFAULT_DIRECTION",
    "DIRECTION_ESTIMATORS",
    "DIRECTION_OPTION",
    "all_models",
    "before_attack_aggregate",
    "check_context",
    "direction",
    "full_direction",
    "partial_direction",
    "rule_of",
    "sign_of_change",
    "uniform",
]

#: How the full-knowledge direction estimates the before-attack global model (see above).
DIRECTION_ESTIMATORS = ("mean", "rule")
#: The estimator used when the options do not name one.
DEFAULT_DIRECTION = "mean"

#: The ``direction`` option of the paper's attacks (full knowledge only).
DIRECTION_OPTION = Option(
    "direction", DEFAULT_DIRECTION,
    "full knowledge: estimate the before-attack change from the mean of all before-attack "
    "models (mean) or from the target rule over them (rule, Eq. 1 read literally)",
    choices=DIRECTION_ESTIMATORS, alias="direction")


def check_context(ctx: AttackContext, attack: str) -> None:
    """Validate shapes and counts of ``ctx`` (``ValueError`` naming the field).

    Under partial knowledge ``ctx.benign`` is never read (not even for its shape).
    """
    if ctx.knowledge not in ("full", "partial"):
        raise ValueError(
            f"{attack} attack: knowledge must be 'full' or 'partial', got {ctx.knowledge!r}"
        )
    C = ctx.compromised
    if not isinstance(C, Tensor) or C.dim() != 2 or not C.is_floating_point():
        raise ValueError(
            f"{attack} attack: compromised must be a 2-D floating tensor [c, d], got "
            f"{getattr(C, 'shape', type(C))}"
        )
    c, d = C.shape
    if c < 1 or d < 1:
        raise ValueError(f"{attack} attack: needs c >= 1 compromised models and d >= 1, got "
                         f"c={c}, d={d}")
    w = ctx.w_re
    if not isinstance(w, Tensor) or tuple(w.shape) != (d,):
        raise ValueError(f"{attack} attack: w_re must have shape ({d},), got "
                         f"{getattr(w, 'shape', type(w))}")
    try:
        f = operator.index(ctx.f)
        m = operator.index(ctx.m)
    except TypeError:
        raise ValueError(f"{attack} attack: m and f must be integers, got m={ctx.m!r}, "
                         f"f={ctx.f!r}") from None
    if f < 0:
        raise ValueError(f"{attack} attack: f must be >= 0, got f={f}")
    if ctx.knowledge == "full":
        B = ctx.benign
        if B is None:
            raise ValueError(f"{attack} attack: full knowledge needs the benign models "
                             "(ctx.benign is None)")
        if B.dim() != 2 or B.shape[1] != d:
            raise ValueError(f"{attack} attack: benign must have shape [m - c, {d}], got "
                             f"{tuple(B.shape)}")
        if m != c + B.shape[0]:
            raise ValueError(f"{attack} attack: m must equal c + benign rows, got m={m}, "
                             f"c={c}, benign rows={B.shape[0]}")
    elif m < c:
        raise ValueError(f"{attack} attack: m must be >= c, got m={m}, c={c}")


def rule_of(ctx: AttackContext) -> Callable[[Tensor], Tensor]:
    """The rule the attacker assumes, with the server's ``f`` bound: ``W -> w``."""
    return ctx.aggregate


def all_models(ctx: AttackContext) -> Tensor:
    """Before-attack local models of every worker, compromised rows first (full knowledge)."""
    assert ctx.benign is not None
    return torch.cat([ctx.compromised.detach(), ctx.benign.detach()]).to(torch.float32)


def before_attack_aggregate(ctx: AttackContext) -> Tensor:
    """Eq. 1's ``w``: the target rule over all before-attack local models (full knowledge)."""
    return ctx.aggregate(all_models(ctx))


def sign_of_change(new: Tensor, w_re: Tensor) -> Tensor:
    """``sign(new − w_Re)`` in float32 on ``w_re``'s device; a zero change gives 0.

    The sign of a float difference is exact (it is 0 only when the two values are equal).
    """
    return torch.sign(new.detach().to(w_re.device, torch.float32) - w_re.detach().float())


def full_direction(ctx: AttackContext, estimator: str = DEFAULT_DIRECTION,
                   w_before: Tensor | None = None) -> Tensor:
    """``s = sign(w − w_Re)`` (Section 3.1), ``w`` from the ``estimator``.

    ``"mean"``: ``w`` = mean of all before-attack local models; ``"rule"``: ``w`` = the
    target rule over them (``w_before`` passes it when already computed).
    """
    if estimator not in DIRECTION_ESTIMATORS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTION_ESTIMATORS)}, "
                         f"got {estimator!r}")
    if estimator == "mean":
        w = all_models(ctx).to(torch.float64).mean(dim=0)
        return torch.sign(w - ctx.w_re.detach().to(w.device, torch.float64)).float()
    w = before_attack_aggregate(ctx) if w_before is None else w_before
    return sign_of_change(w, ctx.w_re)


def partial_direction(ctx: AttackContext) -> Tensor:
    """``s̃ = sign(mean of the c compromised before-attack models − w_Re)`` (Section 3.2)."""
    mean = ctx.compromised.detach().to(torch.float64).mean(dim=0)
    return torch.sign(mean - ctx.w_re.detach().to(torch.float64)).to(torch.float32)


def direction(ctx: AttackContext, estimator: str = DEFAULT_DIRECTION) -> Tensor:
    """``s`` under full knowledge, ``s̃`` under partial knowledge (float32 values in {−1,0,1})."""
    return full_direction(ctx, estimator) if ctx.knowledge == "full" else partial_direction(ctx)


def uniform(ctx: AttackContext, lo: Tensor, hi: Tensor) -> Tensor:
    """``c`` independent draws per coordinate, uniform in ``[lo_j, hi_j]`` (float32 ``[c, d]``).

    One ``torch.rand`` of shape ``[c, d]`` from ``ctx.generator``; values are clamped into
    the interval so that float rounding can never leave it.
    """
    U = torch.rand((ctx.c, ctx.d), generator=ctx.generator, device=ctx.generator.device)
    U = U.to(lo.device)
    return torch.clamp(lo + U * (hi - lo), min=lo, max=hi)
