"""The Krum attack (paper Section 3.2, Eq. 2–4, Theorem 1; Appendix B for the deviation goal).

``w'₁ = w_Re − λs``; ``λ`` starts at Theorem 1's bound and halves until Krum selects
``w'₁`` among ``{n copies of w'₁} ∪ others`` (Eq. 2: ``n = c``, others = the benign models;
Eq. 4: ``n = 1, 2, …``, others = the ``c`` compromised before-attack models), or ``λ`` drops
below ``options.threshold`` (1e−5). The other ``c − 1`` crafted models are random vectors
within distance ``ε`` of ``w'₁`` (option ``copies``: at radius ``U·ε`` in a random direction,
uniform in the ε-ball, or exact copies), row 0 is ``w'₁`` itself.

Closed form. Only distances to ``w'₁`` depend on ``λ``:
``‖w_Re − λs − w_i‖² = a_i − 2λ b_i + λ² d_eff`` with ``a_i = ‖w_Re − w_i‖²``,
``b_i = sᵀ(w_Re − w_i)`` and ``d_eff = sᵀs``. The other models' distances to each other are
computed once (float64), sorted per row with prefix sums; a model's Krum score when the ``n``
copies sit at distance ``e_i`` from it is then the sum of its ``k`` smallest values of a
sorted list merged with ``n`` copies of ``e_i``: one ``searchsorted`` and one gather for all
models and all candidate ``λ`` at once. All candidates ``λ₀, λ₀/2, …`` (down to the
threshold) are checked in one batch and the first that works is taken, which is exactly the
halving loop's answer.

Exact decisions. The others' distances come from one Gram matrix, whose error is bounded
(``aggregators.krum``); "Krum selects ``w'₁``" is decided on the Gram scores wherever their
error bound cannot change it, and otherwise on the float64 reference distances (direct
differences) of the other models that could beat ``w'₁`` (``KrumProblem.selects``).
Theorem 1's bound keeps the Gram estimate (it is only where the search starts).

Choices (docs/choices.md): the bound with the server's ``f``, its fallback when Theorem 1
gives none, what is sent when no ``λ`` works, the partial-knowledge sub-problem's ``f`` and
copies limit, and the sampling of the copies; each is described where it is implemented.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedpoison.aggregators.krum import (
    _ExactDistances,
    _gram,
    _krum_pick,
    _score_bounds,
    check_krum,
)
from fedpoison.attacks.base import AttackContext
from fedpoison.attacks.direction import (
    DEFAULT_DIRECTION,
    DEFAULT_ZERO_SIGN,
    DIRECTION_OPTION,
    ZERO_SIGN_OPTION,
    check_context,
    full_direction,
    partial_direction,
    resolve_estimator,
    with_zero_sign,
)
from fedpoison.registry import KNOWLEDGE, Diagnostic, Option, register_attack

__all__ = [
    "COPIES",
    "DEFAULT_COPIES",
    "KrumAttackResult",
    "KrumLambda",
    "KrumProblem",
    "krum_attack",
    "krum_attack_solution",
    "partial_copies_range",
    "sample_copies",
    "sample_epsilon_ball",
    "sample_epsilon_radius",
    "solve_krum_lambda",
    "solve_partial_krum_lambda",
    "sub_problem_f",
]


@dataclass(frozen=True)
class KrumLambda:
    """The outcome of one λ search (Eq. 2 or Eq. 4).

    ``lam`` is the λ used for ``w'₁``: the first λ that works when ``found``, otherwise the
    value the halving loop ends at (the first one below the threshold; see ``krum_attack``).
    ``bound`` is where the search started; ``exact_bound`` says whether it is Theorem 1's
    (generalized) upper bound or the fallback used when the theorem gives no finite bound.
    ``tried`` is how many λ values were checked, ``copies`` the number ``n`` of copies of
    ``w'₁`` in Krum's input and ``f`` the ``f`` that Krum used.
    """

    lam: float
    bound: float
    exact_bound: bool
    found: bool
    tried: int
    copies: int
    f: int


def _merged_scores(sorted_rows: Tensor, prefix: Tensor, eT: Tensor, k: int,
                   copies: int) -> Tensor:
    """Krum score of each other model when ``copies`` copies of ``w'₁`` sit at distance
    ``eT[i, t]`` from model i: the sum of its ``k`` smallest values among its sorted
    distances to the other models (``sorted_rows`` [r, n_o − 1], ``prefix`` their prefix
    sums [r, n_o]) and ``copies`` values ``eT[i, t]``. Returns ``[r, T]``."""
    if sorted_rows.shape[1] == 0:
        t = torch.zeros_like(eT, dtype=torch.long)
    else:
        t = torch.searchsorted(sorted_rows, eT)  # others strictly closer than the copies
    j = t.clamp(max=k)
    u = (k - j).clamp(max=copies)  # copies among the k nearest
    return prefix.gather(1, k - u) + u.to(torch.float64) * eT


class KrumProblem:
    """Krum over ``{n copies of w'₁ = w_Re − λs} ∪ others``, for any ``λ``, ``n`` and ``f``.

    ``others`` [n_o, d] are the models ``w'₁`` competes with (benign models under full
    knowledge, compromised before-attack models under partial knowledge). ``D2_others`` may
    pass their squared distances if already computed (float64 ``[n_o, n_o]``), with
    ``D2_norms``, the centred row norms of the Gram matrix they come from (their error scale,
    see ``aggregators.krum``); without ``D2_norms`` they are taken as exact.
    """

    def __init__(self, others: Tensor, w_re: Tensor, s: Tensor,
                 D2_others: Tensor | None = None, *, D2_norms: Tensor | None = None) -> None:
        X = others.detach().float()
        w = w_re.detach().to(X.device, torch.float32)
        s32 = s.detach().to(X.device, torch.float32)
        diff = w - X  # float32: exact for nearby values (Sterbenz), sums in float64
        self.n_others = int(X.shape[0])
        self.a = (diff * diff).sum(dim=1, dtype=torch.float64)  # ‖w_Re − w_i‖²
        self.b = (diff * s32).sum(dim=1, dtype=torch.float64)  # sᵀ(w_Re − w_i) (exact products)
        self.d_eff = float((s32 * s32).sum(dtype=torch.float64))  # sᵀs
        if D2_others is None:
            D2, norms = _gram(X)
        else:
            D2 = D2_others.to(torch.float64)
            norms = torch.zeros(X.shape[0]) if D2_norms is None else D2_norms
        self._dist = _ExactDistances(X, D2, norms)
        off = D2.clone()
        off.fill_diagonal_(torch.inf)
        n = self.n_others
        self.sorted = off.sort(dim=1).values[:, : n - 1].contiguous()  # [n_o, n_o − 1]
        zeros = torch.zeros((n, 1), dtype=torch.float64, device=X.device)
        self.prefix = torch.cat([zeros, self.sorted.cumsum(dim=1)], dim=1)  # [n_o, n_o]

    # -- counts -----------------------------------------------------------------------
    def neighbours(self, copies: int, f: int) -> int:
        """Krum's neighbour count ``k = M − f − 2`` for ``M = copies + n_o`` models."""
        M = copies + self.n_others
        check_krum(M, f)
        return M - f - 2

    # -- distances and scores -------------------------------------------------------
    def distances(self, lams: Tensor) -> Tensor:
        """``‖w_Re − λs − w_i‖²`` for every λ in ``lams`` [T] and other model i: ``[T, n_o]``."""
        lam = lams.to(self.a.device, torch.float64).unsqueeze(1)
        e = self.a.unsqueeze(0) - 2.0 * lam * self.b.unsqueeze(0) + lam * lam * self.d_eff
        return e.clamp_(min=0.0)

    def scores(self, lams: Tensor, copies: int, f: int) -> tuple[Tensor, Tensor]:
        """Krum scores for each λ: (``w'₁``'s [T], the others' [T, n_o]), float64.

        ``w'₁``'s ``k`` nearest are its ``copies − 1`` copies (distance 0) and then its
        ``k − copies + 1`` nearest others; other model ``i`` merges its sorted distances with
        ``copies`` values ``e_i``. The others' distances are the Gram matrix's (estimates;
        ``selects`` decides exactly).
        """
        crafted, others, _, _ = self._scores(lams, copies, f)
        return crafted, others

    def _scores(self, lams: Tensor, copies: int, f: int) -> tuple[Tensor, Tensor, Tensor, int]:
        """``scores`` plus the distances ``e`` [T, n_o] and Krum's neighbour count ``k``."""
        k = self.neighbours(copies, f)
        e = self.distances(lams)  # [T, n_o]
        T = e.shape[0]
        q = k - (copies - 1)
        if q <= 0:
            crafted = torch.zeros(T, dtype=torch.float64, device=e.device)
        else:
            crafted = torch.topk(e, q, dim=1, largest=False).values.sum(dim=1)
        others = _merged_scores(self.sorted, self.prefix, e.T.contiguous(), k, copies)
        return crafted, others.T, e, k

    def selects(self, lams: Tensor, copies: int, f: int) -> Tensor:
        """Whether Krum selects ``w'₁`` (score strictly below every other model's), per λ.

        Decided on the Gram scores where their error bound (``_score_bounds``) cannot change
        the answer; for the other λ, the other models whose score could be at or below
        ``w'₁``'s are rescored from their float64 reference distances.
        """
        crafted, others, e, k = self._scores(lams, copies, f)
        c = crafted.detach().cpu().numpy()
        o = others.detach().cpu().numpy()
        lo, hi = _score_bounds(o, self._dist.norms[None, :], k, self._dist.d,
                               copies + self.n_others)
        yes = c < lo.min(axis=1)
        unsure = ~yes & (c < hi.min(axis=1))
        if unsure.any():
            rows = np.flatnonzero((lo[unsure] <= c[unsure, None]).any(axis=0))
            R = self._dist.exact_rows(rows)
            R[np.arange(len(rows)), rows] = np.inf  # not its own neighbour
            srt = torch.from_numpy(np.sort(R, axis=1)[:, : self.n_others - 1].copy())
            zeros = torch.zeros((len(rows), 1), dtype=torch.float64)
            prefix = torch.cat([zeros, srt.cumsum(dim=1)], dim=1)
            e_rows = e.cpu()[:, torch.from_numpy(rows)]
            exact = _merged_scores(srt, prefix, e_rows.T.contiguous(), k, copies).numpy()
            yes[unsure] = c[unsure] < exact[:, unsure].min(axis=0)
        return torch.from_numpy(yes).to(crafted.device)

    # -- Theorem 1 ------------------------------------------------------------------
    def bound(self, copies: int, f: int) -> tuple[float, bool]:
        """Theorem 1's upper bound on λ, generalized to ``n`` copies and Krum's ``f``.

        With ``k = M − f − 2``, ``w'₁``'s neighbour set holds its ``n − 1`` copies and
        ``q = k − n + 1`` others (Eq. 3: ``q = m − 2c − 1`` when ``n = f = c``). ``S`` is the
        smallest sum of squared distances from an other model to its ``k_b = min(k, n_o − 1)``
        nearest others (Eq. 3's ``min Σ_{Γ̃} D²``), ``R = max_i D(w_i, w_Re)``, ``x = λ√d_eff``.
        Eq. 6–8: ``q (x − R)² ≤ S`` gives ``x ≤ R + √(S/q)``, i.e. exactly Eq. 3 with
        ``d_eff`` for ``d``. When ``k > n_o − 1`` (Krum's ``f`` below ``n − 1``) every other
        model's neighbour set must also hold ``p = k − k_b`` copies, each within ``x + R``, and
        ``q (x − R)² ≤ S + p (x + R)²`` gives the root of that quadratic (equal to the above
        for ``p = 0``). Returns ``(bound, True)``.

        When ``q ≤ 0`` (the copies alone fill ``w'₁``'s neighbour set) or ``q ≤ p`` there is no
        finite bound (Eq. 2 may be unbounded); we then start from Eq. 3's expression with its
        count set to 1, ``(R + √S)/√d_eff``, the largest value Eq. 3 takes for any positive
        count, and return ``(bound, False)``. ``d_eff = 0`` (no direction) gives 0.
        """
        k = self.neighbours(copies, f)
        if self.d_eff == 0.0:
            return 0.0, True
        q = k - (copies - 1)
        kb = min(k, self.n_others - 1)
        p = k - kb
        S = float(self.prefix[:, kb].min())
        R = math.sqrt(float(self.a.max()))
        if q >= 1 and q > p:
            x = ((q + p) * R + math.sqrt(4.0 * q * p * R * R + (q - p) * S)) / (q - p)
            exact = True
        else:
            x = R + math.sqrt(S)
            exact = False
        return x / math.sqrt(self.d_eff), exact

    # -- the halving search ---------------------------------------------------------
    def solve(self, copies: int, f: int, threshold: float) -> KrumLambda:
        """Start at ``bound`` and halve until Krum selects ``w'₁`` or ``λ < threshold``."""
        lam0, exact = self.bound(copies, f)
        if not math.isfinite(lam0):
            raise ValueError(f"krum attack: Theorem 1's bound is not finite ({lam0}); "
                             "the models hold NaN or Inf")
        T = 0  # number of candidates λ₀/2^t >= threshold
        if lam0 >= threshold:
            T = math.floor(math.log2(lam0 / threshold)) + 1
            while math.ldexp(lam0, -T) >= threshold:
                T += 1
            while T > 0 and math.ldexp(lam0, -(T - 1)) < threshold:
                T -= 1
        if T == 0:
            return KrumLambda(lam0, lam0, exact, False, 0, copies, f)
        lams = lam0 * torch.pow(2.0, -torch.arange(T, dtype=torch.float64))
        ok = self.selects(lams, copies, f)
        hits = torch.nonzero(ok)
        if hits.numel():
            i = int(hits[0, 0])
            return KrumLambda(float(lams[i]), lam0, exact, True, i + 1, copies, f)
        return KrumLambda(math.ldexp(lam0, -T), lam0, exact, False, T, copies, f)


def solve_krum_lambda(others: Tensor, w_re: Tensor, s: Tensor, copies: int, f: int,
                      threshold: float = 1e-5) -> KrumLambda:
    """Eq. 2: λ such that Krum (with ``f``) selects ``w'₁`` among ``copies`` copies ∪ others."""
    return KrumProblem(others, w_re, s).solve(copies, f, threshold)


def sub_problem_f(c: int, n: int) -> int:
    """Krum's ``f`` in the partial-knowledge sub-problem over ``n`` copies ∪ ``c`` models.

    Choice: ``f_sub = n`` (as in Eq. 2, where Krum's ``f`` counts the crafted models), capped
    at the largest value Krum allows for ``c + n`` models (``c + n > 2 f_sub + 2``). Then
    ``w'₁`` needs ``c − f_sub − 1`` (``= c − n − 1`` before the cap) of the ``c`` models
    among its neighbours, the analogue of Eq. 3's ``m − 2c − 1``.
    """
    if c + n < 3:
        raise ValueError(f"krum attack: the sub-problem needs c + n >= 3 models, got c={c}, n={n}")
    return min(n, (c + n - 3) // 2)


def partial_copies_range(c: int) -> range:
    """The copies ``n`` tried in Eq. 4's search: ``max(1, 3 − c), …, max(c, 3 − c)``.

    Choice: start at 1 (the paper) and add one copy at a time up to ``c``: the attacker
    really sends ``c`` crafted models (``w'₁`` and ``c − 1`` near-copies), so a sub-problem
    with more copies would assume support it does not have, and the loop ends. Krum needs
    at least 3 models, so ``c = 1`` tries ``n = 2`` (and ``c = 2`` starts at 1 as usual).
    """
    lo = max(1, 3 - c)
    return range(lo, max(c, lo) + 1)


def solve_partial_krum_lambda(compromised: Tensor, w_re: Tensor, s: Tensor,
                              threshold: float = 1e-5) -> KrumLambda:
    """Eq. 4 with the paper's added copies: ``n = 1, 2, …`` until some λ ≥ threshold works.

    Uses only the compromised before-attack models. Returns the first solution, or the last
    (failed) search, with ``n = c``, when no ``n`` in ``partial_copies_range(c)`` works.
    """
    problem = KrumProblem(compromised, w_re, s)
    c = problem.n_others
    result: KrumLambda | None = None
    for n in partial_copies_range(c):
        result = problem.solve(n, sub_problem_f(c, n), threshold)
        if result.found:
            break
    assert result is not None
    return result


#: How the ``c − 1`` copies of ``w'₁`` are drawn (option ``copies``, docs/choices.md).
COPIES = ("ball", "radius", "exact")
#: The authors' group code: a random direction scaled to ``U·ε`` (the paper: "randomly
#: sample c − 1 vectors, whose distance to w′1 is at most ε").
DEFAULT_COPIES = "radius"


def _place(center: Tensor, z: Tensor, radius: Tensor, epsilon: float) -> Tensor:
    """``center + radius_i · z_i/‖z_i‖`` in float32, no row farther than ``ε`` from ``center``.

    ``z`` [count, d] float64 directions, ``radius`` [count] float64. A row that float32
    rounding puts beyond ``ε`` is pulled back along its own direction (a few ulps).
    """
    c32 = center.detach().float()
    delta = z * (radius / torch.linalg.vector_norm(z, dim=1)).unsqueeze(1)
    c64 = c32.to(torch.float64)
    rows = (c64 + delta).float()
    for _ in range(4):  # float32 rounding can add a few ulps of distance
        dist = torch.linalg.vector_norm(rows.to(torch.float64) - c64, dim=1)
        over = dist > epsilon
        if not bool(over.any()):
            return rows
        shrink = torch.where(over, (1.0 - 1e-3) * epsilon / dist, 1.0)
        delta = delta * shrink.unsqueeze(1)
        rows = (c64 + delta).float()
    dist = torch.linalg.vector_norm(rows.to(torch.float64) - c64, dim=1)
    return torch.where((dist > epsilon).unsqueeze(1), c32.unsqueeze(0), rows)


def _directions(count: int, d: int, generator: torch.Generator, device: torch.device
                ) -> tuple[Tensor, Tensor]:
    """``count`` standard normal vectors (float32 draws, as float64) and ``count`` uniforms."""
    z = torch.randn((count, d), generator=generator,
                    device=generator.device).to(device, torch.float64)
    u = torch.rand((count,), generator=generator, dtype=torch.float64,
                   device=generator.device).to(device)
    return z, u


def sample_epsilon_ball(center: Tensor, count: int, epsilon: float,
                        generator: torch.Generator) -> Tensor:
    """``count`` random vectors uniform in the ball of radius ``ε`` around ``center`` [d].

    Direction = a standard Gaussian vector normalized to unit length, radius ``ε·U^{1/d}``
    with ``U`` uniform in [0, 1) (the uniform distribution on the ball; in high dimension
    almost every draw lies near the sphere). Directions are float32 normal draws from
    ``generator`` (normalized in float64), the radius a float64 uniform; the result is
    float32 on ``center``'s device. ``ε = 0`` (or an ``ε`` below float32 resolution) gives
    exact copies of ``center``.
    """
    return _sample_around(center, count, epsilon, generator,
                          lambda u, d: epsilon * u.pow(1.0 / d))


def sample_epsilon_radius(center: Tensor, count: int, epsilon: float,
                          generator: torch.Generator) -> Tensor:
    """``count`` random vectors at distance ``U·ε`` from ``center`` [d], ``U`` uniform in [0, 1).

    What the authors' group code does (a random direction, its norm scaled to a uniform
    fraction of ``ε``); the distances spread over [0, ε), mean ε/2. Same draws as
    :func:`sample_epsilon_ball` (a normalized Gaussian direction, then one uniform per row).
    """
    return _sample_around(center, count, epsilon, generator, lambda u, d: epsilon * u)


def _sample_around(center: Tensor, count: int, epsilon: float, generator: torch.Generator,
                   radius: Callable[[Tensor, int], Tensor]) -> Tensor:
    """The draws both samplers share: a normalized Gaussian direction and one uniform ``u``
    per row, placed at ``radius(u, d)`` from ``center``; exact copies when ``ε = 0``."""
    d = center.shape[0]
    c32 = center.detach().float()
    if count == 0:
        return c32.new_empty((0, d))
    if epsilon == 0:
        return c32.unsqueeze(0).repeat(count, 1)
    z, u = _directions(count, d, generator, c32.device)
    return _place(c32, z, radius(u, d), epsilon)


def sample_copies(center: Tensor, count: int, epsilon: float, generator: torch.Generator,
                  copies: str = DEFAULT_COPIES) -> Tensor:
    """The ``count`` other crafted models around ``w'₁`` (``copies``: ball, radius, exact)."""
    if copies == "ball":
        return sample_epsilon_ball(center, count, epsilon, generator)
    if copies == "radius":
        return sample_epsilon_radius(center, count, epsilon, generator)
    if copies == "exact":
        return center.detach().float().unsqueeze(0).repeat(count, 1)
    raise ValueError(f"krum attack: copies must be one of {', '.join(COPIES)}, got {copies!r}")


@dataclass(frozen=True)
class KrumAttackResult:
    """The crafted models [c, d] (row 0 is ``w'₁``), the λ search and the direction used."""

    models: Tensor
    solution: KrumLambda
    direction: Tensor


def krum_attack_solution(ctx: AttackContext, *, epsilon: float = 0.01,
                         threshold: float = 1e-5,
                         direction: str = DEFAULT_DIRECTION,
                         copies: str = DEFAULT_COPIES,
                         zero_sign: str = DEFAULT_ZERO_SIGN) -> KrumAttackResult:
    """Craft the ``c`` compromised models against Krum and say how (Section 3.2, Appendix B).

    * Full knowledge: ``s`` from all before-attack models (``direction.full_direction``:
      Krum with the server's ``f`` for ``direction="rule"`` or ``"authors"``, their mean
      for ``"mean"``); Eq. 2 over ``{c copies of w'₁} ∪ benign`` with the server's ``f``.
    * Partial knowledge: ``s̃`` from the compromised models' mean; Eq. 4 over
      ``{n copies} ∪ compromised`` (``solve_partial_krum_lambda``). Benign rows are never read.
    * ``goal="deviation"`` (Appendix B): ``w'₁ = w_Re − λ·𝟙`` (``s = 𝟙``, ``d_eff = d``) with
      the same search. Partial knowledge is a direct extension (Eq. 4 with ``𝟙`` for ``s̃``):
      the deviation goal needs no direction, so nothing beyond the compromised models is used.

    No λ ≥ threshold (choice): ``w'₁ = w_Re − λs`` with ``λ`` the value the halving loop
    ends at (below the threshold, so ``w'₁ ≈ w_Re``), plus the ε-copies as usual: the paper's
    loop just stops there, and if Krum selects such a model the global model does not move,
    which still deviates it against ``s`` (``sᵀ(w − w_Re) ≥ 0``), whereas sending the honest
    models would let training progress.
    """
    check_context(ctx, "krum")
    estimator = resolve_estimator(direction, authors="rule")
    w_re = ctx.w_re.detach().float()
    c, d = ctx.c, ctx.d
    deviation = ctx.goal == "deviation"
    if ctx.knowledge == "full":
        assert ctx.benign is not None
        check_krum(ctx.m, ctx.f)
        benign = ctx.benign.detach().float()
        if deviation:
            s = torch.ones(d, dtype=torch.float32, device=w_re.device)
            D2_benign = norms_benign = None
        elif estimator == "rule":
            # The target is Krum: one Gram matrix serves both Krum's before-attack choice
            # and the search.
            W = torch.cat([ctx.compromised.detach().float(), benign])
            dist = _ExactDistances(W)
            chosen = _krum_pick(dist, ctx.f)
            s = with_zero_sign(full_direction(ctx, estimator, W[chosen]), zero_sign)
            D2_benign = dist.D2[c:, c:]
            norms_benign = torch.from_numpy(dist.norms[c:])
        else:
            s = with_zero_sign(full_direction(ctx, estimator), zero_sign)
            D2_benign = norms_benign = None
        problem = KrumProblem(benign, w_re, s, D2_benign, D2_norms=norms_benign)
        solution = problem.solve(c, ctx.f, threshold)
    else:
        if deviation:
            s = torch.ones(d, dtype=torch.float32, device=w_re.device)
        else:
            s = with_zero_sign(partial_direction(ctx), zero_sign).to(w_re.device)
        solution = solve_partial_krum_lambda(ctx.compromised, w_re, s, threshold)
    ctx.note("krum_lambda", solution.lam)
    ctx.note("krum_lambda_found", solution.found)
    ctx.note("krum_copies", solution.copies)
    w1 = (w_re.to(torch.float64) - solution.lam * s.to(torch.float64)).float()
    others = sample_copies(w1, c - 1, epsilon, ctx.generator, copies)
    models = torch.cat([w1.unsqueeze(0), others])
    return KrumAttackResult(models=models, solution=solution, direction=s)


def krum_attack(ctx: AttackContext, *, epsilon: float = 0.01, threshold: float = 1e-5,
                direction: str = DEFAULT_DIRECTION, copies: str = DEFAULT_COPIES,
                zero_sign: str = DEFAULT_ZERO_SIGN) -> Tensor:
    """``craft(ctx)`` for the Krum attack: ``[c, d]`` float32, row 0 is ``w'₁``."""
    return krum_attack_solution(ctx, epsilon=epsilon, threshold=threshold,
                                direction=direction, copies=copies,
                                zero_sign=zero_sign).models


def check_krum_attack(m: int, c: int, f: int, knowledge: str | None, goal: str | None,
                      **options: object) -> None:
    """Full knowledge: Krum must accept the m models with the server's f (Eq. 2)."""
    if knowledge == "full":
        check_krum(m, f)
    elif c + 2 < 3:
        raise ValueError(f"krum attack: the partial-knowledge search needs c >= 1, got c={c}")


register_attack(
    "krum", krum_attack,
    reference="Fang, Cao, Jia, Gong, USENIX Security 2020: Section 3.2 (Eq. 2–4, Theorem 1), "
              "Appendix B",
    summary="Fang et al.'s attack on Krum: w'₁ = w_Re − λs with the largest λ (halving from "
            "Theorem 1's bound) that Krum selects, plus c − 1 copies within ε",
    options=[
        Option("epsilon", 0.01, "the c − 1 other crafted models lie within ε of w'₁",
               low=0.0, alias="epsilon"),
        Option("threshold", 1e-5, "smallest λ tried before the search gives up", low=0.0,
               low_open=True),
        DIRECTION_OPTION,
        Option("copies", DEFAULT_COPIES,
               "the c − 1 other crafted models: at distance U·ε from w'₁ in a random "
               "direction (radius, the authors' group code), uniform in the ε-ball (ball), "
               "or exact copies of w'₁ (exact)", choices=COPIES, previous="ball"),
        ZERO_SIGN_OPTION,
    ],
    knowledge=KNOWLEDGE, goals=("directed", "deviation"), target="krum",
    check=check_krum_attack,
    diagnostics=[
        Diagnostic("krum_lambda", "λ of w'₁ = w_Re − λs"),
        Diagnostic("krum_lambda_found", "a λ ≥ threshold made Krum select w'₁", flag=True),
        Diagnostic("krum_copies", "copies of w'₁ in the search"),
    ],
)
