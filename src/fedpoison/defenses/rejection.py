"""ERR, LFR and Union (paper Section 5): reject the local models with the largest impact.

For every local model i the server computes the global model A = rule(all k models) and
B_i = rule(all models but i) with its own rule, f and options (the rule's batched
``with_and_without`` where it has one: shared work, no k + 1 independent rule calls), then
evaluates A and every B_i on its validation set in ONE batched call
``ctx.evaluate([A; B_1; ...; B_k])``.

* ERR drops the f models with the largest error-rate impact ``E_A - E_B_i``;
* LFR drops the f models with the largest loss impact ``L_A - L_B_i`` (cross-entropy);
* Union drops the models that either drops (between f and 2f models).

Choices (docs/choices.md, "Defenses"):

* ties in impact go to the smaller row index (a stable descending sort). Error rates on 100
  validation examples are multiples of 0.01, so ERR meets ties often; compromised workers
  sit at random positions, so the index carries no information about them;
* hostile rows: a local model with a NaN or +-Inf entry gets impact +inf under both
  criteria, so it is dropped first (if more than f such rows exist, the f with the smallest
  indices are dropped); an impact that is NaN because both ``L_A`` and ``L_B_i`` are
  infinite (removing i does not make the model usable) counts as 0, like ``E_A - E_B_i`` =
  1 - 1 for two useless models;
* ``f == 0`` drops nothing and evaluates nothing;
* the server's rule must accept all k models, every k - 1, and the k - f (ERR, LFR) or
  k - 2f (Union, worst case) models left after the drop with the same f: checked up front
  by ``check_rejection``, which raises a ``ValueError`` naming the defense, rule, k and f.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedpoison.defenses.base import DefenseContext
from fedpoison.registry import register_defense

__all__ = ["REJECTIONS", "check_rejection", "err", "impacts", "lfr", "most_harmful", "union"]

#: The rejection defenses and the impacts each uses.
REJECTIONS: dict[str, tuple[str, ...]] = {
    "err": ("error",),
    "lfr": ("loss",),
    "union": ("error", "loss"),
}


def _max_dropped(defense: str, f: int) -> int:
    return f * len(REJECTIONS[defense])


def check_rejection(defense: str, rule: Any, k: int, f: int) -> None:
    """Validate ``defense`` with the server's bound ``rule`` on ``k`` local models.

    The rule must aggregate all k models, every k - 1 (the models B_i) and the models left
    after dropping f (ERR, LFR) or up to 2f (Union). Raises ``ValueError``.
    """
    try:
        rule.check(k, f)
        if k < 2:
            raise ValueError(f"{rule.name}: leave-one-out needs k >= 2 models, got k={k}")
        try:
            rule.check(k - 1, f)
        except ValueError as e:
            raise ValueError(f"leave-one-out on k={k} models aggregates k-1={k - 1}: {e}"
                             ) from None
    except ValueError as e:
        raise ValueError(f"{defense}: {e}") from None
    left = k - _max_dropped(defense, f)
    try:
        if left < 1:
            raise ValueError(f"{rule.name}: needs at least one model")
        rule.check(left, f)
    except ValueError as e:
        raise ValueError(
            f"{defense}: drops up to {k - left} of k={k} models (f={f}), and {rule.name} "
            f"cannot aggregate the {left} left with f={f}: {e}"
        ) from None


def impacts(ctx: DefenseContext) -> tuple[Tensor, Tensor]:
    """Error-rate impacts ``E_A - E_B_i`` and loss impacts ``L_A - L_B_i`` ([k] float64, CPU).

    One leave-one-out aggregation and one batched ``ctx.evaluate`` of the k + 1 models.
    Rows with a NaN or +-Inf entry get +inf; NaN impacts (both losses infinite) become 0.
    """
    # A pipeline that needs the server's context (e.g. bucketing's shuffle) gets it: the
    # leave-one-out aggregations are the server's pipeline as the server runs it.
    server = ctx.server if getattr(ctx.rule, "needs", None) else None
    A, B = ctx.rule.with_and_without(ctx.W, ctx.f, server)
    error, loss = ctx.evaluate(torch.cat([A.unsqueeze(0), B]))
    error = error.detach().to("cpu", torch.float64)
    loss = loss.detach().to("cpu", torch.float64)
    hostile = ~torch.isfinite(ctx.W.detach()).all(dim=1).cpu()
    out = []
    for value in (error, loss):
        impact = value[0] - value[1:]
        impact = torch.nan_to_num(impact, nan=0.0, posinf=torch.inf, neginf=-torch.inf)
        out.append(impact.masked_fill(hostile, torch.inf))
    return out[0], out[1]


def most_harmful(impact: Tensor, f: int) -> Tensor:
    """Indices (ascending, int64) of the ``f`` largest impacts; ties -> smaller index."""
    k = impact.shape[0]
    order = np.lexsort((np.arange(k), -impact.numpy()))  # last key first: impact descending
    return torch.from_numpy(np.sort(order[:f])).to(torch.int64)


def _reject(ctx: DefenseContext, defense: str) -> Tensor:
    k = ctx.W.shape[0]
    check_rejection(defense, ctx.rule, k, ctx.f)
    if ctx.f == 0:
        return torch.empty(0, dtype=torch.int64, device=ctx.W.device)
    error, loss = impacts(ctx)
    chosen = {"error": error, "loss": loss}
    drop = [most_harmful(chosen[name], ctx.f) for name in REJECTIONS[defense]]
    return torch.unique(torch.cat(drop)).to(ctx.W.device)


def err(ctx: DefenseContext) -> Tensor:
    """Error Rate based Rejection (Section 5): drop the f models whose removal lowers the
    validation error rate of the global model most (largest ``E_A - E_B_i``)."""
    return _reject(ctx, "err")


def lfr(ctx: DefenseContext) -> Tensor:
    """Loss Function based Rejection (Section 5): drop the f models whose removal lowers
    the validation cross-entropy of the global model most (largest ``L_A - L_B_i``)."""
    return _reject(ctx, "lfr")


def union(ctx: DefenseContext) -> Tensor:
    """Union of ERR and LFR (Section 5): drop every model either drops (f to 2f models),
    from one shared leave-one-out aggregation and evaluation."""
    return _reject(ctx, "union")


def _registration(name: str, fn: Any, summary: str) -> None:
    def check(rule: Any, k: int, f: int) -> None:
        check_rejection(name, rule, k, f)

    register_defense(
        name, fn, reference="Fang, Cao, Jia, Gong, USENIX Security 2020, Section 5",
        summary=summary, check=check, needs_validation=True,
    )


_registration("err", err, "Error Rate based Rejection: drop the f models whose removal lowers "
                          "the validation error rate most")
_registration("lfr", lfr, "Loss Function based Rejection: drop the f models whose removal "
                          "lowers the validation cross-entropy most")
_registration("union", union, "drop every model ERR or LFR drops (f to 2f models)")
