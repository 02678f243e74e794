"""FLTrust (Cao, Fang, Liu, Gong, NDSS 2021): trust bootstrapped from a small root dataset.

Each iteration the server trains the current global model on its own root dataset, exactly as
a worker trains (``ModelUpdate``, Algorithm 1), which gives the server update ``g₀``. Every
local update ``gᵢ = wᵢ − w_Re`` then gets (Section III, "Our FLTrust"):

* a trust score ``TSᵢ = ReLU(cos(gᵢ, g₀))`` (ReLU-clipped cosine similarity);
* its magnitude normalised to the server update's: ``ḡᵢ = ‖g₀‖ / ‖gᵢ‖ · gᵢ``;
* a weight in the trust-weighted average ``g = Σᵢ TSᵢ ḡᵢ / Σⱼ TSⱼ``;

and the global model becomes ``w_Re + α g`` (Algorithm 2, global learning rate ``α``).

Choices (docs/choices.md, "Trust and detection defenses"):

* the root dataset is the server's data: ``validation_size`` (100 by default, the paper's
  root-set size) examples drawn from the test set; the server trains with the workers'
  learning rate and batch size for ``rounds`` SGD steps (set it to the run's
  ``local_rounds``, 1 by default, as the paper uses the same local iterations R);
* an update of norm 0 (or a zero server update) has an undefined cosine: trust 0;
* hostile rows (a NaN or ±Inf entry) get trust 0; ±1e38 rows are handled in float64, where
  their norms, cosines and normalised updates stay finite;
* if every trust score is 0 the global model does not move (``g = 0``);
* rows with trust 0 are reported removed (``ctx.remove``) for the detection metrics.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedpoison.aggregators.mean import check_count, check_matrix
from fedpoison.defenses._shared import report, updates
from fedpoison.registry import Option, register_rule

__all__ = ["fltrust", "fltrust_weights"]


def fltrust_weights(D: Tensor, g0: Tensor, hostile: Tensor | None = None) -> Tensor:
    """The coefficients ``cᵢ = TSᵢ ‖g₀‖ / ‖gᵢ‖ / Σⱼ TSⱼ`` of ``g = Σᵢ cᵢ gᵢ`` (float64, [m]).

    ``D`` [m, d] are the local updates, ``g₀`` [d] the server update (both float64). Rows with
    a non-positive cosine, a zero norm or marked ``hostile`` get 0; all zero if no row is
    trusted.
    """
    norms = torch.linalg.vector_norm(D, dim=1)
    n0 = torch.linalg.vector_norm(g0)
    defined = (norms > 0) & (n0 > 0)
    if hostile is not None:
        defined &= ~hostile
    denom = torch.where(defined, norms * n0, torch.ones_like(norms))
    cos = torch.where(defined, (D @ g0) / denom, torch.zeros_like(norms))
    trust = torch.relu(torch.nan_to_num(cos, nan=0.0, posinf=0.0, neginf=0.0))
    total = trust.sum()
    if not bool(total > 0):
        return torch.zeros_like(trust)
    scale = torch.where(defined, n0 / torch.where(defined, norms, torch.ones_like(norms)),
                        torch.zeros_like(norms))
    return trust * scale / total


def check_fltrust(m: int, f: int, rounds: int, global_lr: float) -> None:
    """Needs m >= 1 local models (and the server's root dataset at run time)."""
    check_count("fltrust", m, f)


def fltrust(W: Tensor, f: int, *, ctx, rounds: int, global_lr: float) -> Tensor:
    """FLTrust: ReLU-clipped cosine trust in the server's root-data update, magnitude
    normalisation to it, trust-weighted average (Cao et al., NDSS 2021, Section III)."""
    check_matrix(W, "fltrust", f)
    data = ctx.server_data
    if data is None or data.train is None:
        raise ValueError("fltrust: needs the server's root dataset (server_data with train)")
    previous = ctx.previous.detach()
    g0 = (data.train(previous, rounds, ctx.generator).detach().to(torch.float64)
          - previous.to(torch.float64)).to(W.device)
    D, hostile = updates(W, previous)
    coef = fltrust_weights(D, g0, hostile)
    report(ctx, coef == 0)
    step = coef @ D
    return (previous.to(torch.float64) + global_lr * step).to(W.dtype)


register_rule(
    "fltrust", fltrust,
    reference="Cao, Fang, Liu, Gong, FLTrust: Byzantine-robust Federated Learning via Trust "
              "Bootstrapping, NDSS 2021 (Section III, Algorithms 1-2)",
    summary="trust-weighted average of updates normalised to the server's root-data update "
            "(ReLU-clipped cosine trust)",
    options=[
        Option("rounds", 1, "SGD steps of the server on its root dataset (the paper uses the "
                            "workers' local iterations: set it to local_rounds)", low=1),
        Option("global_lr", 1.0, "global learning rate α: the model moves by α·g",
               low=0.0, low_open=True),
    ],
    check=check_fltrust, needs=("previous", "server_data", "generator"),
)
