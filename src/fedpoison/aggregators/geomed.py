"""Geometric median by the smoothed Weiszfeld algorithm (RFA: Pillutla, Kakade, Harchaoui,
"Robust Aggregation for Federated Learning", IEEE TSP 2022; the authors' code, RFA
``models/model.py``, ``geometric_median_update``).

The rule aggregates the updates ``Δᵢ = wᵢ − w_Re`` and returns ``w_Re + v`` with ``v`` an
approximate minimiser of ``Σᵢ αᵢ ‖v − Δᵢ‖`` (uniform ``αᵢ``: a worker's claimed example
count is not trusted). Each step of the smoothed Weiszfeld algorithm is one weighted
average,

    βᵢ = αᵢ / max(ν, ‖v − Δᵢ‖),    v ← Σᵢ βᵢ Δᵢ / Σᵢ βᵢ,

vectorized over workers (one [m, d] pass for the distances, one product for the average);
the loop runs over steps. It stops after ``iterations`` steps, or earlier when the objective
``Σᵢ αᵢ ‖v − Δᵢ‖`` changed by less than ``tolerance`` times its value (the stopping test of
the RFA authors' code, ``abs(prev_obj_val - obj_val) < ftol * obj_val``, with their
defaults ``maxiter = 4``, ``eps`` = ν = 1e-5, ``ftol`` = 1e-6). The steps used are reported
as the diagnostic ``geomed_iterations``.

Start. ``init="previous"`` (default) starts from the zero update, i.e. the previous global
model, as the authors of centered clipping and bucketing run RFA (Karimireddy, He, Jaggi,
``z = torch.zeros_like(inputs[0])``); ``init="mean"`` from the average of the finite updates,
as the RFA authors' code does. Only the first keeps the output within a bounded distance of
the benign updates, whatever the number of steps, when rows are placed arbitrarily far.

Hostile rows. A row with any NaN or ±Inf gets weight 0 (the RFA code drops such updates
before aggregating) and is reported with ``ctx.remove``. Every step's ``v`` is a convex
combination of the finite updates, computed in float64, so the output is finite whenever one
row is finite (none: the previous model is returned, as the RFA code keeps the model when
every update is rejected). With ``init="previous"`` and fewer than ``m/2`` rows placed
arbitrarily far away, the output stays within a bounded distance of the benign mean (the
distance does not grow with how far the hostile rows are).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fedpoison.aggregators.helpers import model_from_update, report_removed, updates64
from fedpoison.aggregators.mean import check_count, check_matrix
from fedpoison.registry import Diagnostic, Option, register_rule

__all__ = ["check_geomed", "geomed", "smoothed_weiszfeld"]

INITS = ("previous", "mean")


def check_geomed(m: int, f: int, **options: object) -> None:
    """Preconditions of geomed without data: ``m ≥ 1``, ``f ≥ 0`` (breakdown point m/2)."""
    check_count("geomed", m, f)


def smoothed_weiszfeld(U: Tensor, alpha: Tensor, start: Tensor, iterations: int, nu: float,
                       tolerance: float, dist: Tensor | None = None) -> tuple[Tensor, int]:
    """``(v, steps)``: smoothed Weiszfeld steps from ``start`` on the rows of ``U`` [m, d]
    with weights ``alpha`` [m] (both float64, ``U`` finite), at most ``iterations`` steps,
    stopping when the objective changes by less than ``tolerance`` times its value.
    ``dist``: the rows' distances to ``start``, when known.

    ``U`` is overwritten: it holds the residuals ``Δᵢ − v``, updated in place by each step
    ``v ← v + δ`` with ``δ = Σᵢ βᵢ(Δᵢ − v) / Σᵢ βᵢ`` (the same average, without a new
    [m, d] temporary per step)."""
    R = U.sub_(start)
    v = start.clone()
    if dist is None:
        dist = torch.linalg.vector_norm(R, dim=1)
    obj = float(alpha @ dist)
    steps = 0
    for _ in range(iterations):
        beta = alpha / dist.clamp(min=nu)
        delta = (beta @ R) / beta.sum()
        v += delta
        R.sub_(delta)
        steps += 1
        dist = torch.linalg.vector_norm(R, dim=1)
        new = float(alpha @ dist)
        done = abs(obj - new) < tolerance * new
        obj = new
        if done:
            break
    return v, steps


def geomed(W: Tensor, f: int, *, ctx: Any, iterations: int = 4, nu: float = 1e-5,
           tolerance: float = 1e-6, init: str = "previous") -> Tensor:
    """Approximate geometric median of the updates by the smoothed Weiszfeld algorithm
    (RFA), plus the previous global model. Output finite whatever the rows."""
    check_matrix(W, "geomed", f)
    if init not in INITS:
        raise ValueError(f"geomed: init must be one of {', '.join(INITS)}, got {init!r}")
    U, bad, p, norms = updates64(W, ctx.previous)
    if bool(bad.any()):
        report_removed(ctx, bad)
    good = ~bad
    n_good = int(good.sum())
    if n_good == 0:
        ctx.note("geomed_iterations", 0)
        return model_from_update(p, torch.zeros_like(p))
    alpha = good.to(torch.float64) / n_good
    if init == "mean":
        v, steps = smoothed_weiszfeld(U, alpha, alpha @ U, iterations, nu, tolerance)
    else:  # from the zero update, whose distances are the norms
        v, steps = smoothed_weiszfeld(U, alpha, torch.zeros_like(p), iterations, nu,
                                      tolerance, norms)
    ctx.note("geomed_iterations", steps)
    return model_from_update(p, v)


register_rule(
    "geomed", geomed,
    reference="Pillutla, Kakade, Harchaoui, Robust Aggregation for Federated Learning, IEEE "
              "TSP 2022 (RFA, smoothed Weiszfeld algorithm)",
    summary="approximate geometric median of the updates (smoothed Weiszfeld), plus the "
            "previous global model",
    options=[
        Option("iterations", 4, "largest number of Weiszfeld steps", low=1),
        Option("nu", 1e-5, "smoothing ν: distances below it count as ν", low=0.0,
               low_open=True),
        Option("tolerance", 1e-6, "stop when the objective changes by less than this "
               "fraction of its value", low=0.0),
        Option("init", "previous", "start: the previous global model (zero update) or the "
               "mean update", choices=INITS),
    ],
    diagnostics=[Diagnostic("geomed_iterations", "Weiszfeld steps used")],
    check=check_geomed, needs=("previous",),
)
