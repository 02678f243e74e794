"""What every model attack shares: input checks, the before-attack direction, random draws.

Direction (paper Section 3.1). ``s_j`` is the sign of the change the ``j``-th global
parameter would make in this iteration without attack; ``s = sign(w − w_Re)``.

* Full knowledge, three estimators of ``w`` (option ``direction``; docs/choices.md, "The
  direction s"):

  - ``"rule"`` (default): the target rule applied to the before-attack local models with the
    server's ``f`` (and its options): Eq. 1's before-attack global model ``w``, and for Krum
    "the selected local model ... when there are no attacks" (Section 3.2);
  - ``"mean"``: the mean of the before-attack local models of *all* workers, i.e. the sign of
    the average update (the default before issue 18);
  - ``"authors"``: what the code of the authors' group does (their later MXNet
    ``byzantine.py``): the mean for the trimmed-mean/median attack, the rule-selected model
    for the Krum attack. Each attack says which (``resolve_estimator``).
* Partial knowledge: ``s̃ = sign(mean of the compromised before-attack models − w_Re)``
  (Section 3.2, "Partial knowledge"); the option does not apply.

Sign of a zero change (option ``zero_sign``): ``"minus-one"`` (default) gives ``s_j = −1``
where the estimate does not move, as the paper writes (``s_j ∈ {1, −1}``; partial knowledge:
"otherwise we estimate it to be −1"; Eq. 2's ``sᵀs = d``). ``"zero"`` keeps ``s_j = 0`` (the
default before issue 18): the Krum attack then uses ``d_eff = sᵀs`` and leaves those
parameters at ``w_Re``, the trimmed-mean/median attacks treat them like ``+1`` (the ``w_min``
side).

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
    "DEFAULT_ZERO_SIGN",
    "DIRECTION_ESTIMATORS",
    "DIRECTION_OPTION",
    "ZERO_SIGNS",
    "ZERO_SIGN_OPTION",
    "all_models",
    "before_attack_aggregate",
    "check_context",
    "direction",
    "full_direction",
    "partial_direction",
    "resolve_estimator",
    "rule_of",
    "sign_of_change",
    "uniform",
    "with_zero_sign",
]

#: How the full-knowledge direction estimates the before-attack global model (see above).
DIRECTION_ESTIMATORS = ("mean", "rule", "authors")
#: The estimator used when the options do not name one (Eq. 1, Section 3.2).
DEFAULT_DIRECTION = "rule"
#: What a coordinate whose estimated change is exactly zero becomes (see above).
ZERO_SIGNS = ("zero", "minus-one")
DEFAULT_ZERO_SIGN = "minus-one"

#: The ``direction`` option of the paper's attacks (full knowledge only).
DIRECTION_OPTION = Option(
    "direction", DEFAULT_DIRECTION,
    "full knowledge: estimate the before-attack change from the target rule over all "
    "before-attack models (rule, Eq. 1), from their mean (mean), or as the authors' group "
    "code does (authors: mean for trimmed mean/median, the rule for Krum)",
    choices=DIRECTION_ESTIMATORS, alias="direction", previous="mean",
    when={"knowledge": ("full",), "goal": ("directed",)})

#: The ``zero_sign`` option of the paper's attacks.
ZERO_SIGN_OPTION = Option(
    "zero_sign", DEFAULT_ZERO_SIGN,
    "a parameter whose estimated change is zero gets s_j = −1 (minus-one, the paper's "
    "'otherwise −1') or keeps s_j = 0 (zero: no push for Krum, the w_min side for trimmed "
    "mean)", choices=ZERO_SIGNS, previous="zero", when={"goal": ("directed",)})


def resolve_estimator(direction: str, authors: str) -> str:
    """``direction`` with ``"authors"`` replaced by ``authors`` (the attack's own reading)."""
    if direction not in DIRECTION_ESTIMATORS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTION_ESTIMATORS)}, "
                         f"got {direction!r}")
    return authors if direction == "authors" else direction


def with_zero_sign(s: Tensor, zero_sign: str) -> Tensor:
    """``s`` with its zeros set to −1 (``"minus-one"``) or kept (``"zero"``)."""
    if zero_sign not in ZERO_SIGNS:
        raise ValueError(f"zero_sign must be one of {', '.join(ZERO_SIGNS)}, got {zero_sign!r}")
    if zero_sign == "zero":
        return s
    return torch.where(s == 0, torch.full_like(s, -1.0), s)


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
    """``s = sign(w − w_Re)`` (Section 3.1), ``w`` from the ``estimator`` (zeros kept).

    ``"mean"``: ``w`` = mean of all before-attack local models; ``"rule"``: ``w`` = the
    target rule over them (``w_before`` passes it when already computed). ``"authors"``
    must be resolved by the attack first (``resolve_estimator``).
    """
    if estimator not in ("mean", "rule"):
        raise ValueError(f"direction estimator must be mean or rule, got {estimator!r}")
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
