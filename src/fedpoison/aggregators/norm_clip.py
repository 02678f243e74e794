"""Norm clipping (Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated
Learning?", arXiv 1911.07963, 2019: "norm thresholding of updates").

Each update ``Δᵢ = wᵢ − w_Re`` is scaled down to L2 norm at most ``τ``,
``Δᵢ / max(1, ‖Δᵢ‖ / τ)``, and the server applies their average:
``w_Re + (1/m) Σᵢ Δᵢ / max(1, ‖Δᵢ‖ / τ)`` (the paper's M is our τ). One [m, d] pass.

Hostile rows. A row with any NaN or ±Inf has no direction: its clipped update is taken to be
0 (it still counts in the average) and it is reported with ``ctx.remove``. Norms are
computed in float64, so rows of ±1e38 are clipped to norm τ exactly. Every clipped update
has norm at most τ, so the output is within τ of the previous global model and a hostile row
moves it by at most τ/m, however far it is: the output is finite whatever the rows hold.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fedpoison.aggregators.helpers import clip_scales, model_from_update, report_removed, updates64
from fedpoison.aggregators.mean import check_count, check_matrix
from fedpoison.registry import Diagnostic, Option, register_rule

__all__ = ["check_norm_clip", "norm_clip"]


def check_norm_clip(m: int, f: int, **options: object) -> None:
    """Preconditions of norm-clip without data: ``m ≥ 1``, ``f ≥ 0``."""
    check_count("norm-clip", m, f)


def norm_clip(W: Tensor, f: int, *, ctx: Any, tau: float = 0.2) -> Tensor:
    """The average of the updates clipped to norm ``tau`` (Sun et al. 2019), plus the
    previous global model. Output finite whatever the rows."""
    m, f = check_matrix(W, "norm-clip", f)
    U, bad, p, norms = updates64(W, ctx.previous)
    if bool(bad.any()):
        report_removed(ctx, bad)
    scale = clip_scales(norms, tau, bad)
    ctx.note("norm_clip_clipped", float(((scale < 1.0) & ~bad).sum()) / m)
    return model_from_update(p, (scale @ U) / m)


register_rule(
    "norm-clip", norm_clip,
    reference="Sun, Kairouz, Suresh, McMahan, Can You Really Backdoor Federated Learning?, "
              "arXiv 1911.07963, 2019 (norm thresholding of updates)",
    summary="the average of the updates, each clipped to L2 norm τ, plus the previous "
            "global model",
    options=[Option("tau", 0.2, "largest L2 norm an update keeps (the paper's M)", low=0.0,
                    low_open=True)],
    diagnostics=[Diagnostic("norm_clip_clipped", "fraction of updates clipped")],
    check=check_norm_clip, needs=("previous",),
)
