"""Centered clipping (Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
Optimization", ICML 2021; the authors' code, ``codes/aggregator/clipping.py``).

The rule aggregates the updates ``Δᵢ = wᵢ − w_Re`` around a center ``v``, the previous
aggregate update, with ``L`` = ``iterations`` steps

    v ← v + (1/m) Σᵢ clip_τ(Δᵢ − v),    clip_τ(z) = z · min(1, τ / ‖z‖),

vectorized over workers (one [m, d] pass per step), and returns ``w_Re + v``. As in the
authors' code (``Clipping.__call__``: ``self.momentum`` starts as ``torch.zeros_like`` and
holds the previous output), the center starts at the zero update in the first iteration
and is the previous aggregate update afterwards. Their inputs are the workers' (momentum)
updates, so the rule clips updates, not models. The center is read from the global models:
at iteration t it is ``w_t − w_{t−1}``, the update the server applied last (kept in
``ctx.state`` with the iteration it belongs to), so every call within one iteration
(a defense's leave-one-out calls the rule k + 1 times) uses the same center, and a new run
starts from zero.

Hostile rows. A row with any NaN or ±Inf has no direction: its clipped difference is taken
to be 0 (it adds nothing to a step) and it is reported with ``ctx.remove``. Every clipped
difference has norm at most τ, so each step moves ``v`` by at most τ and a hostile row
moves it by at most τ/m: the output lies within ``L·τ`` of ``w_Re + center`` whatever the
rows hold, and within ``L·τ·f/m`` of what the benign rows alone would give it (rows placed
arbitrarily far cannot move it further). Norms and steps are computed in float64, so rows
of ±1e38 are clipped exactly; the output is finite.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fedpoison.aggregators.helpers import clip_scales, model_from_update, report_removed, updates64
from fedpoison.aggregators.mean import check_count, check_matrix
from fedpoison.registry import Diagnostic, Option, register_rule

__all__ = ["cclip", "centered_clipping", "check_cclip"]


def check_cclip(m: int, f: int, **options: object) -> None:
    """Preconditions of cclip without data: ``m ≥ 1``, ``f ≥ 0``."""
    check_count("cclip", m, f)


def centered_clipping(U: Tensor, bad: Tensor, center: Tensor, tau: float, iterations: int
                      ) -> tuple[Tensor, float]:
    """``(v, clipped)``: ``iterations`` centered-clipping steps from ``center`` on the
    float64 updates ``U`` [m, d] (the ``bad`` rows contribute 0), and the fraction of rows
    clipped in the last step. ``U`` is overwritten with the differences ``Δᵢ − v``, updated
    in place after each step (no new [m, d] temporary per step)."""
    m = U.shape[0]
    Z = U.sub_(center)
    v = center.clone()
    clipped = 0.0
    for step in range(iterations):
        scale = clip_scales(torch.linalg.vector_norm(Z, dim=1), tau, bad)
        delta = (scale @ Z) / m
        v += delta
        clipped = float(((scale < 1.0) & ~bad).sum()) / m
        if step + 1 < iterations:
            Z.sub_(delta)
    return v, clipped


def _center(state: dict[str, Any], t: int, p: Tensor) -> Tensor:
    """The previous aggregate update ``w_t − w_{t−1}`` (zero in a run's first iteration),
    the same for every call in iteration ``t``."""
    if state.get("iteration") == t:
        return state["center"]
    last = state.get("iteration") == t - 1
    center = p - state["previous"] if last else torch.zeros_like(p)
    state.update(iteration=t, previous=p.clone(), center=center)
    return center


def cclip(W: Tensor, f: int, *, ctx: Any, tau: float = 0.1, iterations: int = 1) -> Tensor:
    """Centered clipping of the updates around the previous aggregate update (ICML 2021),
    plus the previous global model. Output finite whatever the rows."""
    check_matrix(W, "cclip", f)
    U, bad, p, _ = updates64(W, ctx.previous)
    if bool(bad.any()):
        report_removed(ctx, bad)
    center = _center(ctx.state, ctx.iteration, p)
    v, clipped = centered_clipping(U, bad, center, tau, iterations)
    ctx.note("cclip_clipped", clipped)
    return model_from_update(p, v)


register_rule(
    "cclip", cclip,
    reference="Karimireddy, He, Jaggi, Learning from History for Byzantine Robust "
              "Optimization, ICML 2021 (centered clipping)",
    summary="the previous aggregate update plus the mean of the updates' differences from "
            "it, each clipped to norm τ (L steps), plus the previous global model",
    options=[
        Option("tau", 0.1, "clipping radius τ (an L2 norm, in update units)", low=0.0,
               low_open=True),
        Option("iterations", 1, "clipping steps L", low=1),
    ],
    diagnostics=[Diagnostic("cclip_clipped", "fraction of rows clipped in the last step")],
    check=check_cclip, needs=("previous", "state", "iteration"), stateful=True,
)
