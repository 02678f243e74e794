"""The trimmed-mean attack (paper Section 3.3), also the median attack (Section 3.4).

Registered as ``trimmed-mean`` with the option ``target_rule`` (default: the server's rule);
``median`` is an alias with ``target_rule=median``. The crafted values are the same for
both rules; the target rule gives the deviation goal's aggregates and, with the ``"rule"``
direction estimator (the default, see ``direction.py``), the full-knowledge direction ``s``
(with ``"mean"`` or ``"authors"`` the directed attack does not depend on it).

Full knowledge, per coordinate ``j`` (``w_max,j``/``w_min,j`` over the *benign* models):

* ``s_j = −1`` (push up):   ``[w_max, b·w_max]`` if ``w_max > 0`` else ``[w_max, w_max/b]``;
* ``s_j = +1`` (push down): ``[w_min/b, w_min]`` if ``w_min > 0`` else ``[b·w_min, w_min]``.

The two sides use opposite operations on a positive value (multiply by ``b`` above, divide
below), so that both intervals lie outside the benign range. With ``zero_sign="zero"``,
``s_j = 0`` is treated as ``+1`` (see ``direction.py``). Partial knowledge: ``μ_j``, ``σ_j``
over the ``c`` compromised before-attack models; ``s̃_j = −1 → [μ+3σ, μ+4σ]``, else
``[μ−4σ, μ−3σ]``.

Frame (option ``frame``): ``"model"`` (default) computes the intervals on the local model
parameters, as Section 3.3 writes them (``w_max,j`` is the largest benign *model*
parameter); ``"update"`` computes them on the updates ``Δ_i = w_i − w_Re`` (the authors'
group code works on gradients) and sends ``w_Re + Δ′``. Only the full-knowledge intervals
differ (``b`` scales); partial knowledge's ``μ ± kσ`` is the same up to rounding.

Each compromised worker draws its own value per coordinate, uniform in the interval (one
``[c, d]`` draw). Everything is vectorized over workers and coordinates.

Standard deviation (choice): the sample standard deviation (``n − 1`` denominator), since
``σ_j`` estimates the spread of the Gaussian the benign values are assumed to come from;
with ``c = 1`` it is taken as 0.

Deviation goal (Appendix B, full knowledge): per coordinate the side (above ``w_max`` or below
``w_min``, same intervals, same draw) whose after-attack aggregate ``w'_j`` lies farther from
the before-attack ``w_j``; both after-attack aggregates are computed exactly with the
assumed rule (coordinate-wise rules are separable). Ties go to the ``w_min`` side. The paper
defines it for full knowledge only; under partial knowledge ``w`` and the benign range are
unknown, so it raises ``ValueError``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fedpoison.attacks.base import AttackContext
from fedpoison.attacks.direction import (
    DEFAULT_DIRECTION,
    DEFAULT_ZERO_SIGN,
    DIRECTION_OPTION,
    ZERO_SIGN_OPTION,
    before_attack_aggregate,
    check_context,
    full_direction,
    partial_direction,
    resolve_estimator,
    uniform,
    with_zero_sign,
)
from fedpoison.registry import KNOWLEDGE, Option, register_attack

__all__ = [
    "DEFAULT_FRAME",
    "FRAMES",
    "full_knowledge_interval",
    "lower_interval",
    "mean_std",
    "partial_knowledge_interval",
    "trimmed_mean_attack",
    "upper_interval",
]


#: Where the intervals are computed (option ``frame``): on model parameters or on updates.
FRAMES = ("model", "update")
DEFAULT_FRAME = "model"


def upper_interval(w_max: Tensor, b: float) -> tuple[Tensor, Tensor]:
    """Values above the benign maximum: ``[w_max, b·w_max]`` (w_max > 0), ``[w_max, w_max/b]``."""
    hi = torch.where(w_max > 0, w_max * b, w_max / b)
    return w_max, hi


def lower_interval(w_min: Tensor, b: float) -> tuple[Tensor, Tensor]:
    """Values below the benign minimum: ``[w_min/b, w_min]`` (w_min > 0), ``[b·w_min, w_min]``."""
    lo = torch.where(w_min > 0, w_min / b, w_min * b)
    return lo, w_min


def full_knowledge_interval(benign: Tensor, s: Tensor, b: float) -> tuple[Tensor, Tensor]:
    """Per-coordinate interval ``(lo, hi)`` of the full-knowledge attack (Section 3.3)."""
    B = benign.detach().float()
    up_lo, up_hi = upper_interval(B.amax(dim=0), b)
    dn_lo, dn_hi = lower_interval(B.amin(dim=0), b)
    push_up = s < 0
    return torch.where(push_up, up_lo, dn_lo), torch.where(push_up, up_hi, dn_hi)


def mean_std(X: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean and sample standard deviation (``n − 1``; 0 for one row), float64.

    CPU tensors go through NumPy (about 10x faster than ``torch.std`` along the worker axis
    for 100 x 7850 here); other devices use torch.
    """
    X = X.detach()
    n, d = X.shape
    if X.device.type == "cpu":
        A = X.numpy() if X.dtype in (torch.float32, torch.float64) else X.double().numpy()
        # A column with +-Inf (hostile rows) gets a non-finite mean / std, quietly, as on the
        # torch path: NumPy would warn about the inf - inf inside.
        with np.errstate(invalid="ignore", over="ignore"):
            mu = torch.from_numpy(np.mean(A, axis=0, dtype=np.float64))
            sd = (torch.from_numpy(np.std(A, axis=0, ddof=1, dtype=np.float64)) if n > 1
                  else torch.zeros(d, dtype=torch.float64))
        return mu, sd
    X64 = X.to(torch.float64)
    sd = X64.std(dim=0, correction=1) if n > 1 else torch.zeros_like(X64[0])
    return X64.mean(dim=0), sd


def partial_knowledge_interval(compromised: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Per-coordinate ``(lo, hi)``: ``[μ+3σ, μ+4σ]`` if ``s̃_j = −1`` else ``[μ−4σ, μ−3σ]``."""
    mu, sd = mean_std(compromised)
    push_up = s.to(mu.device) < 0
    lo = torch.where(push_up, mu + 3.0 * sd, mu - 4.0 * sd)
    hi = torch.where(push_up, mu + 4.0 * sd, mu - 3.0 * sd)
    return lo.float(), hi.float()


def _deviation(ctx: AttackContext, benign: Tensor, origin: Tensor | None, b: float) -> Tensor:
    """Appendix B: per coordinate the side whose after-attack aggregate deviates most.

    ``benign`` are the benign rows in the attack's frame and ``origin`` maps the frame back
    to models (``w_Re`` for updates, ``None`` for models)."""
    B = benign.detach().float()
    up_lo, up_hi = upper_interval(B.amax(dim=0), b)
    dn_lo, dn_hi = lower_interval(B.amin(dim=0), b)
    U = torch.rand((ctx.c, ctx.d), generator=ctx.generator,
                   device=ctx.generator.device).to(B.device)
    X_up = _to_models(torch.clamp(up_lo + U * (up_hi - up_lo), min=up_lo, max=up_hi), origin)
    X_dn = _to_models(torch.clamp(dn_lo + U * (dn_hi - dn_lo), min=dn_lo, max=dn_hi), origin)
    models = _to_models(B, origin)
    rule = ctx.aggregate
    w = before_attack_aggregate(ctx).to(torch.float64)
    dev_up = (rule(torch.cat([X_up, models])).to(torch.float64) - w).abs()
    dev_dn = (rule(torch.cat([X_dn, models])).to(torch.float64) - w).abs()
    return torch.where(dev_up > dev_dn, X_up, X_dn)


def _to_frame(X: Tensor, origin: Tensor | None) -> Tensor:
    """Models as the attack's frame sees them: ``X − w_Re`` for updates, ``X`` for models."""
    X = X.detach().float()
    return X if origin is None else X.to(origin.device) - origin


def _to_models(X: Tensor, origin: Tensor | None) -> Tensor:
    """The inverse of :func:`_to_frame`."""
    return X if origin is None else X + origin


def trimmed_mean_attack(ctx: AttackContext, *, b: float = 2.0,
                        direction: str = DEFAULT_DIRECTION, frame: str = DEFAULT_FRAME,
                        zero_sign: str = DEFAULT_ZERO_SIGN) -> Tensor:
    """``craft(ctx)`` for trimmed mean and median (Sections 3.3–3.4, Appendix B): ``[c, d]``."""
    name = getattr(ctx.target, "name", "trimmed-mean")
    check_context(ctx, f"{name}")
    if frame not in FRAMES:
        raise ValueError(f"{name} attack: frame must be one of {', '.join(FRAMES)}, "
                         f"got {frame!r}")
    estimator = resolve_estimator(direction, authors="mean")
    deviation = ctx.goal == "deviation"
    # The frame: intervals on models, or on updates Δ = w − w_Re (origin w_Re).
    origin = ctx.w_re.detach().float() if frame == "update" else None
    if ctx.knowledge == "full":
        assert ctx.benign is not None
        if ctx.benign.shape[0] < 1:
            raise ValueError(f"{name} attack: full knowledge needs at least one benign model")
        benign = _to_frame(ctx.benign, origin)
        if deviation:
            return _deviation(ctx, benign, origin, b)
        s = with_zero_sign(full_direction(ctx, estimator), zero_sign)
        lo, hi = full_knowledge_interval(benign, s, b)
    else:
        if deviation:
            raise ValueError(
                f"{name} attack: goal 'deviation' is defined for full knowledge only "
                "(Appendix B); use goal 'directed' with partial knowledge"
            )
        s = with_zero_sign(partial_direction(ctx), zero_sign)
        lo, hi = partial_knowledge_interval(_to_frame(ctx.compromised, origin), s)
    device = ctx.w_re.device
    return _to_models(uniform(ctx, lo.to(device), hi.to(device)), origin)


def check_trimmed_mean_attack(m: int, c: int, f: int, knowledge: str | None,
                              goal: str | None, **options: object) -> None:
    """The deviation goal is defined for full knowledge only (Appendix B)."""
    if knowledge == "partial" and goal == "deviation":
        raise ValueError("trimmed-mean attack: goal 'deviation' is defined for full knowledge "
                         "only (Appendix B)")


register_attack(
    "trimmed-mean", trimmed_mean_attack,
    reference="Fang, Cao, Jia, Gong, USENIX Security 2020: Sections 3.3–3.4, Appendix B",
    summary="Fang et al.'s attack on trimmed mean and median: per coordinate, values beyond "
            "the benign range on the side opposite to the change direction",
    options=[
        Option("b", 2.0, "full knowledge: interval factor b > 1 (Section 3.3)", low=1.0,
               low_open=True, alias="b"),
        DIRECTION_OPTION,
        Option("frame", DEFAULT_FRAME,
               "compute the intervals on the model parameters (model, Section 3.3) or on "
               "the updates w − w_Re and send w_Re + the crafted update (update, the "
               "authors' group code)", choices=FRAMES, when={"knowledge": ("full",)}),
        ZERO_SIGN_OPTION,
    ],
    knowledge=KNOWLEDGE, goals=("directed", "deviation"), target="option",
    check=check_trimmed_mean_attack,
    aliases={"median": {"target_rule": "median"}},
)
