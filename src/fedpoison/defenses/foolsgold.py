"""FoolsGold (Fung, Yoon, Beschastnikh, RAID 2020): down-weight workers whose update
histories look alike (sybils share a goal, honest workers' data differ).

Per iteration (Algorithm 1), for the workers present:

1. history ``Hᵢ += Δᵢ`` (the sum of a worker's updates over the run, kept in ``ctx.state``
   as one [workers, d] float64 matrix indexed by worker id); added once per iteration: a
   rejection defense (ERR/LFR) calls the rule k + 1 times in one iteration (leave-one-out),
   each call sees the history of the earlier iterations plus its own rows' updates, and
   only the call over all the received rows (``ctx.rows``) is kept for the history;
2. ``csᵢⱼ = cos(Hᵢ, Hⱼ)`` for i ≠ j, ``vᵢ = maxⱼ csᵢⱼ``;
3. pardoning: ``csᵢⱼ ← csᵢⱼ · vᵢ / vⱼ`` where ``vᵢ < vⱼ``;
4. ``αᵢ = 1 − maxⱼ csᵢⱼ`` clipped to [0, 1], divided by its maximum;
5. logit: ``αᵢ = κ (ln(αᵢ / (1 − αᵢ)) + 0.5)`` clipped to [0, 1] (``αᵢ = 1`` taken as 0.99);
6. the global model moves by ``(1/k) Σᵢ αᵢ Δᵢ``.

Choices (docs/choices.md, "Trust and detection defenses"):

* the self-similarity counts as 0 in the maxima (as the authors' code, ``cs − I``), so
  ``vᵢ ≥ 0``; a history of norm 0 has cosine 0 with every other;
* the weighted updates are averaged over the k workers present (the authors' PyTorch code
  divides by the client count); the paper's ``Σᵢ αᵢ Δᵢ`` would multiply the step by k in this
  simulator, where the global model is the average of the local models;
* if every αᵢ is 0 before the rescale (all histories alike), every weight is 0: no move;
* a hostile row (NaN or ±Inf entry) gets weight 0 and is not added to its history; ±1e38 rows
  are summed in float64;
* workers with weight 0 are reported removed (``ctx.remove``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedpoison.aggregators.mean import check_count, check_matrix
from fedpoison.defenses._shared import report, updates, worker_ids
from fedpoison.registry import Option, register_rule

__all__ = ["foolsgold", "foolsgold_history", "foolsgold_weights"]


def foolsgold_weights(H: Tensor, kappa: float = 1.0) -> Tensor:
    """FoolsGold's weights αᵢ ([k] float64) for the update histories ``H`` [k, d] (float64):
    steps 2-5 of Algorithm 1, for all workers at once."""
    k = H.shape[0]
    norms = torch.linalg.vector_norm(H, dim=1, keepdim=True)
    U = torch.where(norms > 0, H / torch.where(norms > 0, norms, torch.ones_like(norms)),
                    torch.zeros_like(H))
    cs = (U @ U.T).clamp(-1.0, 1.0)
    cs.fill_diagonal_(0.0)
    v = cs.max(dim=1).values
    pardon = v[:, None] < v[None, :]
    ratio = v[:, None] / torch.where(pardon, v[None, :], torch.ones_like(cs))
    cs = torch.where(pardon, cs * ratio, cs)
    alpha = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    top = alpha.max() if k else alpha.new_tensor(0.0)
    if not bool(top > 0):
        return torch.zeros_like(alpha)
    alpha = alpha / top
    alpha = torch.where(alpha == 1.0, torch.full_like(alpha, 0.99), alpha)
    logit = kappa * (torch.log(alpha / (1.0 - alpha)) + 0.5)
    return torch.nan_to_num(logit, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


def _grown(H: Tensor | None, need: int, D: Tensor) -> Tensor:
    """The history matrix with at least ``need`` rows (new rows zero)."""
    if H is not None and H.shape[0] >= need:
        return H
    grown = torch.zeros(need, D.shape[1], dtype=torch.float64, device=D.device)
    if H is not None:
        grown[: H.shape[0]] = H
    return grown


def foolsgold_history(state: dict) -> Tensor:
    """The per-worker update histories [workers, d] (float64) in a FoolsGold state, the last
    iteration's call included."""
    H, pending = state.get("history"), state.get("pending")
    if pending is None:
        return H
    H = _grown(H, int(pending[1].max()) + 1, pending[2]).clone()
    H[pending[1]] += pending[2]
    return H


def check_foolsgold(m: int, f: int, kappa: float) -> None:
    """Needs m >= 1 local models."""
    check_count("foolsgold", m, f)


def foolsgold(W: Tensor, f: int, *, ctx, kappa: float) -> Tensor:
    """FoolsGold: cosine similarity of update histories, pardoning, logit weights
    (Fung, Yoon, Beschastnikh, RAID 2020, Algorithm 1)."""
    k, _ = check_matrix(W, "foolsgold", f)
    previous = ctx.previous.detach()
    D, hostile = updates(W, previous)
    ids = worker_ids(ctx, k).to(D.device)
    state = ctx.state
    H = state.get("history")  # the sum of the updates of the iterations before this one
    pending = state.get("pending")  # (iteration, ids, D): the last iteration's own call
    if pending is not None and pending[0] != ctx.iteration:
        H = _grown(H, int(pending[1].max()) + 1, D)
        H[pending[1]] += pending[2]  # hostile rows of D are zero: their history is unchanged
        pending = None
    H = _grown(H, int(ids.max()) + 1, D)
    state["history"], state["pending"] = H, pending
    # Once per iteration: the call over all the rows the server received (not the k
    # leave-one-out calls of a rejection defense, nor a repeated call in the same iteration)
    # is the one added to the history, when the next iteration starts.
    if getattr(ctx, "rows", 0) in (0, k):
        state["pending"] = (ctx.iteration, ids, D)
    alpha = foolsgold_weights(H[ids] + D, kappa).masked_fill(hostile, 0.0)
    report(ctx, alpha == 0)
    step = (alpha @ D) / k
    return (previous.to(torch.float64) + step).to(W.dtype)


register_rule(
    "foolsgold", foolsgold,
    reference="Fung, Yoon, Beschastnikh, The Limitations of Federated Learning in Sybil "
              "Settings, RAID 2020 (Algorithm 1)",
    summary="weights from the cosine similarity of per-worker update histories, with "
            "pardoning and a logit: sybils with alike histories get ~0",
    options=[Option("kappa", 1.0, "confidence κ of the logit", low=0.0, low_open=True)],
    check=check_foolsgold, needs=("previous", "state"), stateful=True,
)
