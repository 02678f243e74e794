"""Min-Max (Shejwalkar, Houmansadr, "Manipulating the Byzantine", NDSS 2021: AGR-agnostic).

Every compromised worker sends ``Δ′ = μ + γ·p``: ``μ`` the mean of the reference updates
``Δᵢ = wᵢ − w_Re`` (the benign workers' under full knowledge; the compromised workers' own,
benign-like ones under partial knowledge, the paper's "unknown benign gradients" case),
``p`` a perturbation (option ``perturbation``):

* ``std`` (default; every experiment of the authors' code): inverse standard deviation,
  ``−σ`` of the gradients, ``σ`` the per-coordinate sample standard deviation; the updates
  are negated gradients (``Δ = −lr·g``), so on updates ``p = +σ`` (option ``space``:
  ``gradient``, the default; ``update`` takes ``p = −σ`` of the updates literally). The two
  other perturbations are odd in the updates and the same in both spaces;
* ``unit_vec``: inverse unit vector, ``p = −μ/‖μ‖``;
* ``sign``: inverse sign, ``p = −sign(μ)``.

``γ`` is the largest value the paper's search finds with the crafted update's largest
distance to a reference no larger than the largest distance between two references:
``max_i ‖Δ′ − Δᵢ‖ ≤ max_{i,j} ‖Δᵢ − Δⱼ‖``.

The search (the paper's Algorithm for γ, as the authors' code runs it; shared with Min-Sum
and the AGR-tailored attacks): start at ``γ = γ_init`` with step ``γ_init``; if the
constraint holds, remember ``γ`` and move up by half the step, else down by half; halve the
step; stop when the step is at most ``τ`` and return the last ``γ`` that held (0 if none).
It is a bisection of ``[0, 2γ_init]``: the feasible ``γ`` form an interval from 0 (the
largest distance is convex in ``γ`` and ``μ`` itself is feasible), so the answer is within
``2τ`` of the largest feasible ``γ`` below ``2γ_init``. Defaults ``γ_init = 10``, ``τ = 1e−5``
(the authors' code).

Closed form: only the distances from ``Δ′`` change with ``γ``;
``‖μ + γp − Δᵢ‖² = aᵢ + 2γbᵢ + γ²‖p‖²`` with ``aᵢ = ‖μ − Δᵢ‖²`` and ``bᵢ = pᵀ(μ − Δᵢ)``,
and the references' pairwise distances, all from one Gram matrix of the references centred
on ``μ``; a search step is O(n).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedpoison.attacks.alie import SPACE_HELP, SPACES
from fedpoison.attacks.base import AttackContext
from fedpoison.attacks.direction import check_context
from fedpoison.attacks.trimmed_mean_attack import mean_std
from fedpoison.registry import KNOWLEDGE, Diagnostic, Option, register_attack

__all__ = ["PERTURBATIONS", "Reference", "Terms", "distance_terms", "halving_search",
           "min_max_attack", "perturbation", "reference"]

#: The paper's perturbations (``p`` of ``Δ′ = μ + γp``).
PERTURBATIONS = ("std", "unit_vec", "sign")


@dataclass(frozen=True)
class Reference:
    """The reference updates ``U`` [n, d] (float64), their mean ``mu`` and ``p``."""

    U: Tensor
    mu: Tensor
    p: Tensor


def perturbation(U: Tensor, mu: Tensor, kind: str, space: str = "gradient") -> Tensor:
    """``p`` (float64 [d]) on updates: ``±σ`` (``std``: ``+σ`` for ``space="gradient"``,
    the gradients' ``−σ``; ``−σ`` for ``"update"``), ``−μ/‖μ‖`` (``unit_vec``) or
    ``−sign(μ)`` (``sign``).

    A zero ``μ`` gives ``p = 0`` for ``unit_vec``; one reference row gives ``σ = 0``.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    if kind == "std":
        with np.errstate(invalid="ignore", over="ignore"):  # hostile rows: NaN, no warning
            sd = mean_std(U)[1].to(mu.device)
        return sd if space == "gradient" else -sd
    if kind == "unit_vec":
        norm = torch.linalg.vector_norm(mu)
        return -mu / norm if bool(norm > 0) else torch.zeros_like(mu)
    if kind == "sign":
        return -torch.sign(mu)
    raise ValueError(f"perturbation must be one of {', '.join(PERTURBATIONS)}, got {kind!r}")


def reference(ctx: AttackContext, kind: str, space: str = "gradient") -> Reference:
    """The benign updates (full knowledge) or the compromised ones (partial), with ``p``."""
    rows = ctx.compromised if ctx.knowledge == "partial" else ctx.benign
    assert rows is not None
    if rows.shape[0] < 1:
        raise ValueError("full knowledge needs at least one benign model")
    U = ctx.updates(rows).to(torch.float64)
    mu = U.mean(dim=0)
    return Reference(U, mu, perturbation(U, mu, kind, space))


def halving_search(ok: Callable[[float], bool], gamma_init: float, threshold: float
                   ) -> tuple[float, int]:
    """The paper's search for γ: ``(γ_succ, steps)`` (see the module docstring)."""
    gamma, step, succ, steps = float(gamma_init), float(gamma_init), 0.0, 0
    while abs(succ - gamma) > threshold:
        if ok(gamma):
            succ = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
        steps += 1
    return succ, steps


@dataclass(frozen=True)
class Terms:
    """``‖μ + γp − Δᵢ‖² = a[i] + 2γ·b[i] + γ²·pp`` and the references' pairwise squared
    distances ``D2`` (float64 NumPy), from one Gram matrix of the centred references."""

    a: np.ndarray
    b: np.ndarray
    pp: float
    D2: np.ndarray


def distance_terms(ref: Reference) -> Terms:
    """The :class:`Terms` of ``ref``: ``aᵢ = ‖μ − Δᵢ‖²``, ``bᵢ = pᵀ(μ − Δᵢ)``, ``pp = ‖p‖²``,
    ``D2[i, j] = ‖Δᵢ − Δⱼ‖²`` (clamped at 0), all from ``G = (Δ − μ)(Δ − μ)ᵀ``."""
    # The products run in torch, not NumPy: NumPy's BLAS threads and torch's would spin
    # against each other on the same cores and slow the whole iteration (docs/design.md).
    C = ref.U - ref.mu  # centred on the mean: no cancellation
    G = (C @ C.T).cpu().numpy()
    b = -(C @ ref.p).cpu().numpy()
    pp = float(ref.p @ ref.p)
    Cfinite = torch.isfinite(C).all(dim=1).cpu().numpy()
    with np.errstate(invalid="ignore", over="ignore"):
        a = np.diagonal(G).copy()
        D2 = np.maximum(a[:, None] + a[None, :] - 2.0 * G, 0.0)
    # A row with NaN or ±Inf (or overflowing) is infinitely far from every other, as in
    # aggregators.krum.pairwise_sq_distances.
    bad = ~(Cfinite & np.isfinite(a))
    D2[np.isnan(D2)] = np.inf
    D2[bad, :] = np.inf
    D2[:, bad] = np.inf
    np.fill_diagonal(D2, 0.0)
    a[bad], b[bad] = np.inf, 0.0
    return Terms(a, b, pp, D2)


def crafted(ctx: AttackContext, ref: Reference, gamma: float) -> Tensor:
    """``c`` copies of ``w_Re + μ + γp`` (float32 ``[c, d]``)."""
    return ctx.models_from((ref.mu + gamma * ref.p).float()).expand(ctx.c, -1).clone()


def min_max_gamma(ref: Reference, gamma_init: float = 10.0, threshold: float = 1e-5
                  ) -> tuple[float, int]:
    """Largest γ (by the search) with ``max_i ‖μ + γp − Δᵢ‖² ≤ max_{i,j} ‖Δᵢ − Δⱼ‖²``."""
    T = distance_terms(ref)
    a, b, pp = T.a, T.b, T.pp
    bound = float(T.D2.max())

    def ok(gamma: float) -> bool:
        return bool(np.max(a + 2.0 * gamma * b + gamma * gamma * pp) <= bound)

    with np.errstate(invalid="ignore", over="ignore"):
        return halving_search(ok, gamma_init, threshold)


def min_max_attack(ctx: AttackContext, *, perturbation: str = "std", space: str = "gradient",
                   gamma_init: float = 10.0, threshold: float = 1e-5) -> Tensor:
    """``craft(ctx)``: ``c`` copies of ``w_Re + μ + γp`` (float32 ``[c, d]``)."""
    check_context(ctx, "min-max")
    ref = reference(ctx, perturbation, space)
    gamma, _ = min_max_gamma(ref, gamma_init, threshold)
    ctx.note("min_max_gamma", gamma)
    return crafted(ctx, ref, gamma)


#: Options shared by Min-Max, Min-Sum and the AGR-tailored attacks.
PERTURBATION_OPTION = Option(
    "perturbation", "std", "p of μ + γp: inverse standard deviation (std), inverse unit "
    "vector (unit_vec) or inverse sign (sign)", choices=PERTURBATIONS)
SPACE_OPTION = Option("space", "gradient", "std perturbation: " + SPACE_HELP, choices=SPACES)
THRESHOLD_OPTION = Option("threshold", 1e-5, "the search stops when its step is at most τ",
                          low=0.0, low_open=True)


def check_search(m: int, c: int, f: int, knowledge: str | None, goal: str | None,
                 gamma_init: float | None = None, threshold: float = 1e-5,
                 **options: object) -> None:
    """Partial knowledge needs two compromised workers (a spread to compare against)."""
    if knowledge == "partial" and c < 2:
        raise ValueError(f"the partial-knowledge search compares against the compromised "
                         f"workers' own updates and needs c >= 2, got c={c}")


register_attack(
    "min-max", min_max_attack,
    reference="Shejwalkar, Houmansadr, 'Manipulating the Byzantine: Optimizing Model "
              "Poisoning Attacks and Defenses for Federated Learning', NDSS 2021: the "
              "AGR-agnostic Min-Max attack",
    summary="every compromised worker sends μ + γp with the largest γ whose largest distance "
            "to a benign update stays within the benign updates' largest pairwise distance",
    options=[
        PERTURBATION_OPTION,
        SPACE_OPTION,
        Option("gamma_init", 10.0, "γ the search starts at (it explores [0, 2γ_init])",
               low=0.0, low_open=True),
        THRESHOLD_OPTION,
    ],
    knowledge=KNOWLEDGE, goals=(), check=check_search,
    diagnostics=[Diagnostic("min_max_gamma", "γ of μ + γp")],
)
