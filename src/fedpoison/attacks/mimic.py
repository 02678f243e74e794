"""Mimic (Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
Bucketing", ICLR 2022: the mimic attack, as their code's ``MimicVariantAttacker`` runs it).

Every compromised worker sends a copy of one benign worker's model, so that this worker's
(non-IID) data is over-represented while nothing looks abnormal. The worker is the one
farthest along the benign updates' direction of largest variance, estimated online:

* first attack iteration (``t = 0``): ``μ`` = the mean benign update; ``z₀`` a standard
  normal vector; one power-iteration step ``z ∝ Σᵢ ((Δᵢ − μ)ᵀz₀)(Δᵢ − μ)``, unit length;
* warm-up iterations ``0 < t < warmup``: ``μ ← t/(t+1)·μ + mean/(t+1)`` and
  ``z ← t/(t+1)·z + ẑ/(t+1)``, renormalized, where ``ẑ`` is the normalized power step from
  the current ``z`` around the new ``μ``;
* during the warm-up the target is ``argmax_i Δᵢᵀz`` over the benign workers, re-chosen every
  iteration; afterwards the last one is kept and copied every iteration.

``warmup`` defaults to 1 (the authors' code's default ``--mimic-warmup 1``): the direction
is estimated in the first attack iteration and the target is fixed from then on.

Choices (docs/choices.md, "Standard attacks"): ``z₀`` is drawn from the run's attack stream
(the authors' code seeds it with 0); the argmax is over updates ``Δ = w − w_Re`` where their
code takes gradients (``Δ ≈ −lr·g``): with ``z₀``'s random sign both pick an extreme worker
along the same axis. Needs full knowledge (it copies a benign model).

State across iterations (``t``, ``μ``, ``z``, the target) is kept per run in ``ctx.state``
(the adversary's dict for the run; earlier it was keyed by the generator object, which
torch before 2.13 cannot reference weakly); the target is a
benign *row*, the same worker in every iteration when all workers take part (with worker
sampling it is whichever benign worker holds that row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedpoison.attacks.base import AttackContext
from fedpoison.attacks.direction import check_context
from fedpoison.registry import Diagnostic, Option, register_attack

__all__ = ["MimicState", "mimic_attack", "state_of"]


@dataclass
class MimicState:
    """What the attack carries across the iterations of one run."""

    t: int = 0
    mu: Tensor | None = None  # running mean benign update (float64 [d])
    z: Tensor | None = None  # direction of largest variance (float64 [d], unit length)
    target: int = 0  # the benign row copied


def state_of(ctx: AttackContext) -> MimicState:
    """The run's state, kept in ``ctx.state`` (one dict per run, held by the adversary;
    created on first use). A context without state (a one-off craft) starts fresh: its
    iteration is the first of the warm-up."""
    if ctx.state is None:
        return MimicState()
    state = ctx.state.get("mimic")
    if state is None:
        state = ctx.state["mimic"] = MimicState()
    return state


def _power_step(U: Tensor, mu: Tensor, z: Tensor) -> Tensor:
    """``Σᵢ ((Δᵢ − μ)ᵀz)(Δᵢ − μ)``, normalized (zero stays zero)."""
    Cn = U - mu
    v = (Cn @ z) @ Cn
    norm = torch.linalg.vector_norm(v)
    return v / norm if bool(norm > 0) else v


def mimic_attack(ctx: AttackContext, *, warmup: int = 1) -> Tensor:
    """``craft(ctx)``: ``c`` copies of the chosen benign model (float32 ``[c, d]``)."""
    check_context(ctx, "mimic")
    if ctx.knowledge != "full" or ctx.benign is None:
        raise ValueError("mimic: needs full knowledge (it copies a benign worker's model)")
    B = ctx.benign
    if B.shape[0] < 1:
        raise ValueError("mimic: needs at least one benign worker")
    U = ctx.updates(B).to(torch.float64)
    avg = U.mean(dim=0)
    s = state_of(ctx)
    t = s.t
    if t == 0 or s.mu is None or s.z is None:
        z0 = torch.randn(ctx.d, generator=ctx.generator, device=ctx.generator.device)
        s.mu = avg
        s.z = _power_step(U, avg, z0.to(avg.device, torch.float64))
    elif t < warmup:
        s.mu = t / (1 + t) * s.mu + avg / (1 + t)
        z = t / (1 + t) * s.z + _power_step(U, s.mu, s.z) / (1 + t)
        norm = torch.linalg.vector_norm(z)
        s.z = z / norm if bool(norm > 0) else z
    if t < warmup:
        s.target = int(torch.argmax(U @ s.z))
    s.t = t + 1
    target = min(s.target, B.shape[0] - 1)
    ctx.note("mimic_target", target)
    return B[target].detach().to(ctx.w_re.device, torch.float32).expand(ctx.c, -1).clone()


def check_mimic(m: int, c: int, f: int, knowledge: str | None, goal: str | None,
                **options: object) -> None:
    """At least one benign worker to copy."""
    if m - c < 1:
        raise ValueError(f"mimic: needs a benign worker to copy, got m={m}, c={c}")


register_attack(
    "mimic", mimic_attack,
    reference="Karimireddy, He, Jaggi, 'Byzantine-Robust Learning on Heterogeneous Datasets "
              "via Bucketing', ICLR 2022: the mimic attack, and their code",
    summary="every compromised worker sends a copy of the benign model farthest along the "
            "benign updates' direction of largest variance (estimated online in a warm-up)",
    options=[Option("warmup", 1, "attack iterations that estimate the direction and re-choose "
                    "the copied worker; then it is fixed", low=1)],
    knowledge=("full",), goals=(), check=check_mimic,
    diagnostics=[Diagnostic("mimic_target", "benign row copied")],
)
