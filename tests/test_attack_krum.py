"""The Krum attack does what Section 3.2 says (Eq. 2–4, Theorem 1, Appendix B)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attack_helpers import craft, make_context
from fedpoison import RunConfig, registry
from fedpoison.aggregators import krum_scores, krum_select, pairwise_sq_distances
from fedpoison.attacks import AttackContext
from fedpoison.attacks.krum_attack import (
    KrumProblem,
    krum_attack_solution,
    partial_copies_range,
    sample_epsilon_ball,
    sub_problem_f,
)

M, C, D = 30, 6, 50


def models(seed: int, m: int = M, d: int = D, step: float = 0.02,
           noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """w_Re and m local models w_Re − step·g + noise (benign-like SGD updates)."""
    g = torch.Generator().manual_seed(seed)
    w_re = torch.randn(d, generator=g)
    grad = torch.randn(d, generator=g)
    W = w_re - step * grad + noise * torch.randn(m, d, generator=g)
    return w_re, W


def context(w_re: torch.Tensor, W: torch.Tensor, c: int = C, *, knowledge: str = "full",
            f: int | None = None, seed: int = 1, benign: torch.Tensor | None = None,
            **options: object) -> AttackContext:
    return make_context(w_re, W, rule="krum", c=c, knowledge=knowledge, f=f, seed=seed,
                        benign=benign, **options)


def solve(ctx: AttackContext) -> object:
    """The Krum attack with the test's options."""
    return krum_attack_solution(ctx, **ctx.options)  # type: ignore[attr-defined]


def brute_selects(w1: torch.Tensor, copies: int, others: torch.Tensor, f: int) -> bool:
    """Krum over {copies × w'₁} ∪ others from scratch: w'₁'s score strictly smallest."""
    A = torch.cat([w1.unsqueeze(0).repeat(copies, 1), others]).double()
    sc = krum_scores(pairwise_sq_distances(A), f)
    return bool(sc[0] < sc[copies:].min())


def theorem1_bound(benign: torch.Tensor, w_re: torch.Tensor, s: torch.Tensor, m: int,
                   c: int, f: int) -> float:
    """Eq. 3 written out independently (counts generalized to the server's f ≥ c − 1)."""
    B = benign.double()
    D2 = torch.cdist(B, B) ** 2
    n = B.shape[0]
    k = m - f - 2  # Γ̃ size: benign neighbours of a benign model, itself excluded
    sums = [torch.sort(torch.cat([D2[i, :i], D2[i, i + 1:]])).values[:k].sum() for i in range(n)]
    d = float((s.double() ** 2).sum())
    far = max(float(torch.linalg.vector_norm(B[i] - w_re.double())) for i in range(n))
    return math.sqrt(float(min(sums)) / ((m - f - c - 1) * d)) + far / math.sqrt(d)


def place(crafted: torch.Tensor, benign: torch.Tensor, seed: int) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
    """Crafted rows at random positions among the benign rows; returns (matrix, positions)."""
    m = crafted.shape[0] + benign.shape[0]
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed))
    pos = perm[: crafted.shape[0]]
    A = torch.empty(m, benign.shape[1])
    mask = torch.zeros(m, dtype=torch.bool)
    mask[pos] = True
    A[pos] = crafted
    A[~mask] = benign
    return A, pos


SEEDS = range(8)


@pytest.mark.parametrize("seed", SEEDS)
def test_full_knowledge_krum_selects_w1(seed: int) -> None:
    w_re, W = models(seed)
    r = solve(context(w_re, W))
    assert r.solution.found and r.solution.copies == C and r.solution.f == C
    w1 = r.models[0]
    # Eq. 2 as stated: c identical copies of w'₁ at random positions -> Krum picks one of them.
    A, pos = place(w1.repeat(C, 1), W[C:], seed)
    assert krum_select(A, C) in pos.tolist()
    # What is actually sent (ε-copies): Krum picks a crafted row, so the global model is
    # within ε of w'₁. (Which crafted row wins is random: a copy's score differs from w'₁'s
    # by 2δᵀΣ(w'₁ − w_l) = O(ε), larger than the O(ε²) terms; see docs/choices.md, "Krum attack".)
    A, pos = place(r.models, W[C:], seed)
    chosen = krum_select(A, C)
    assert chosen in pos.tolist()
    assert float(torch.linalg.vector_norm((A[chosen] - w1).double())) <= 0.01


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("f", [C, C + 2])
def test_lambda_never_exceeds_theorem1_bound(seed: int, f: int) -> None:
    w_re, W = models(seed)
    r = solve(context(w_re, W, f=f))
    expected = theorem1_bound(W[C:], w_re, r.direction, M, C, f)
    assert r.solution.exact_bound
    assert r.solution.bound == pytest.approx(expected, rel=1e-6)
    assert r.solution.lam <= r.solution.bound and r.solution.lam <= expected * (1 + 1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_halving_stops_at_first_lambda_that_works(seed: int) -> None:
    w_re, W = models(seed)
    r = solve(context(w_re, W))
    sol = r.solution
    s = r.direction.double()
    lam = sol.lam
    assert brute_selects((w_re.double() - lam * s).float(), C, W[C:], C)
    for t in range(sol.tried - 1):  # every larger candidate failed, from the bound down
        bigger = math.ldexp(sol.bound, -t)
        assert bigger > lam
        assert not brute_selects((w_re.double() - bigger * s).float(), C, W[C:], C)
    if lam != sol.bound:
        assert lam * 2 == pytest.approx(math.ldexp(sol.bound, -(sol.tried - 2)))


@pytest.mark.parametrize("seed", SEEDS)
def test_epsilon_copies_are_distinct_and_within_epsilon(seed: int) -> None:
    w_re, W = models(seed)
    for eps in (0.01, 0.5):
        X = solve(context(w_re, W, epsilon=eps)).models
        w1 = X[0]
        dist = torch.linalg.vector_norm((X[1:] - w1).double(), dim=1)
        assert bool((dist <= eps).all()) and bool((dist > 0).all())
        D2 = pairwise_sq_distances(X[1:])
        off = ~torch.eye(C - 1, dtype=torch.bool)
        assert bool((D2[off] > 0).all())  # pairwise distinct


def test_epsilon_ball_is_uniform_in_radius() -> None:
    # P(radius ≤ r) = (r/ε)^d: for d = 2 the median radius is ε/√2.
    center = torch.zeros(2)
    X = sample_epsilon_ball(center, 4000, 1.0, torch.Generator().manual_seed(0))
    r = torch.linalg.vector_norm(X.double(), dim=1)
    assert float(r.max()) <= 1.0
    assert float(r.median()) == pytest.approx(1 / math.sqrt(2), abs=0.03)
    angle = torch.atan2(X[:, 1], X[:, 0])
    assert float((angle > 0).double().mean()) == pytest.approx(0.5, abs=0.03)


def test_epsilon_zero_gives_identical_copies() -> None:
    w_re, W = models(0)
    X = solve(context(w_re, W, epsilon=0.0)).models
    assert torch.equal(X, X[0].repeat(C, 1))


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_distances_and_scores_match_recomputation(seed: int) -> None:
    w_re, W = models(seed)
    gen = torch.Generator().manual_seed(seed)
    s = torch.sign(torch.randn(D, generator=gen))
    s[:5] = 0  # zero changes: d_eff = 45
    others = W[C:]
    problem = KrumProblem(others, w_re, s)
    assert problem.d_eff == 45.0
    lams = torch.tensor([0.0, 1e-3, 0.05, 0.3, 2.0], dtype=torch.float64)
    e = problem.distances(lams)
    for t, lam in enumerate(lams.tolist()):
        w1 = w_re.double() - lam * s.double()
        direct = ((w1 - others.double()) ** 2).sum(dim=1)
        torch.testing.assert_close(e[t], direct, rtol=1e-6, atol=1e-9)
    # Scores from the merge equal Krum's scores recomputed on the assembled matrix, for
    # several (copies, f): f = copies (q > 0), f large (copies fill w'₁'s neighbours, q ≤ 0)
    # and f < copies − 1 (copies forced into the others' neighbour sets, p > 0).
    n_o = others.shape[0]
    for copies, f in [(C, C), (C, 1), (3, 0), (C, (C + n_o - 3) // 2), (1, 1), (10, 2)]:
        crafted, oth = problem.scores(lams, copies, f)
        for t, lam in enumerate(lams.tolist()):
            w1 = w_re.double() - lam * s.double()
            A = torch.cat([w1.unsqueeze(0).repeat(copies, 1), others.double()])
            ref = krum_scores(pairwise_sq_distances(A), f)
            torch.testing.assert_close(crafted[t], ref[0], rtol=1e-6, atol=1e-8)
            torch.testing.assert_close(oth[t], ref[copies:], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("copies", "f"), [(C, C), (C, C + 3), (C, 2), (C, 0)])
def test_no_lambda_above_the_generalized_bound_works(seed: int, copies: int, f: int) -> None:
    """Theorem 1 (generalized, including Krum's f < c − 1) is a necessary condition."""
    w_re, W = models(seed, step=0.05, noise=0.05)
    s = torch.sign(torch.randn(D, generator=torch.Generator().manual_seed(seed)))
    problem = KrumProblem(W[C:], w_re, s)
    bound, exact = problem.bound(copies, f)
    assert exact
    above = bound * torch.tensor([1.0001, 1.01, 1.1, 1.5, 3.0, 10.0], dtype=torch.float64)
    assert not bool(problem.selects(above, copies, f).any())
    for lam in above.tolist():
        assert not brute_selects((w_re.double() - lam * s.double()).float(), copies, W[C:], f)


def test_no_solution_sends_w_re_and_copies() -> None:
    # Benign models far from w_Re relative to their spread: even w'₁ = w_Re is never chosen.
    w_re, W = models(0, step=0.1, noise=0.05)
    r = solve(context(w_re, W))
    sol = r.solution
    assert not sol.found
    assert sol.lam < 1e-5 and sol.lam * 2 >= 1e-5  # where the halving loop stops
    assert float((r.models[0] - w_re).abs().max()) <= 1e-5
    assert r.models.shape == (C, D)


def test_no_finite_bound_uses_fallback_start() -> None:
    """q ≤ 0 (copies fill w'₁'s neighbour set) or q ≤ p: start at (R + √S)/√d_eff."""
    w_re, W = models(0, m=12)
    s = torch.ones(D)
    others = W[6:]  # 6 other models
    problem = KrumProblem(others, w_re, s)
    B = others.double()
    D2 = torch.cdist(B, B) ** 2
    S = min(float(torch.sort(D2[i]).values[1:].sum()) for i in range(6))  # k_b = 5
    R = float(torch.linalg.vector_norm(B - w_re.double(), dim=1).max())
    fallback = (R + math.sqrt(S)) / math.sqrt(D)
    # 9 copies, f = 6: M = 15, k = 7 < 8 copies: q = −1, w'₁'s score is 0 for every λ.
    bound, exact = problem.bound(9, 6)
    assert not exact and bound == pytest.approx(fallback, rel=1e-6)
    sol = problem.solve(9, 6, 1e-5)
    assert sol.found and sol.lam == sol.bound and sol.tried == 1
    # 9 copies, f = 4: k = 9, q = 1 but every other model needs p = 4 copies: q ≤ p.
    bound, exact = problem.bound(9, 4)
    assert not exact and bound == pytest.approx(fallback, rel=1e-6)


# ---------------------------------------------------------------- partial knowledge


@pytest.mark.parametrize("seed", SEEDS)
def test_partial_never_reads_benign_rows(seed: int) -> None:
    w_re, W = models(seed)
    none = craft("krum", context(w_re, W, knowledge="partial"))
    nan = craft("krum",
        context(w_re, W, knowledge="partial", benign=torch.full((M - C, D), torch.nan))
    )
    assert torch.equal(none, nan)
    assert bool(torch.isfinite(none).all())


@pytest.mark.parametrize("seed", SEEDS)
def test_partial_sub_problem_selects_w1(seed: int) -> None:
    w_re, W = models(seed)
    r = solve(context(w_re, W, knowledge="partial"))
    sol = r.solution
    assert sol.found
    s = torch.sign(W[:C].double().mean(0) - w_re.double())
    assert torch.equal(r.direction.double(), s)
    n, f = sol.copies, sol.f
    assert f == sub_problem_f(C, n)
    assert brute_selects(r.models[0], n, W[:C], f)
    bigger = sol.lam * 2
    if sol.lam != sol.bound:
        assert not brute_selects((w_re.double() - bigger * s).float(), n, W[:C], f)


def test_partial_adds_copies_when_one_does_not_suffice() -> None:
    # Compromised models closer to each other than to w_Re: w'₁ alone never wins, so the
    # search must add copies (Section 3.2, "we add one more crafted local model").
    w_re, W = models(0, step=0.1, noise=0.05)
    r = solve(context(w_re, W, knowledge="partial"))
    sol = r.solution
    assert sol.found and sol.copies > 1
    s = r.direction
    for n in range(1, sol.copies):  # every smaller n has no λ ≥ threshold
        problem = KrumProblem(W[:C], w_re, s)
        assert not problem.solve(n, sub_problem_f(C, n), 1e-5).found
    assert brute_selects(r.models[0], sol.copies, W[:C], sol.f)


def test_sub_problem_counts() -> None:
    assert [sub_problem_f(20, n) for n in (1, 2, 17, 18, 19, 20)] == [1, 2, 17, 17, 18, 18]
    for c in range(1, 30):
        for n in partial_copies_range(c):
            f = sub_problem_f(c, n)
            assert c + n > 2 * f + 2 and f >= 0
    assert list(partial_copies_range(1)) == [2]
    assert list(partial_copies_range(2)) == [1, 2]
    assert list(partial_copies_range(5)) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="c \\+ n >= 3"):
        sub_problem_f(1, 1)


@pytest.mark.parametrize("c", [1, 2, 3])
def test_partial_tiny_c(c: int) -> None:
    w_re, W = models(0, m=10)
    ctx = context(w_re, W, c, knowledge="partial", f=c)
    r = solve(ctx)
    assert r.models.shape == (c, D) and bool(torch.isfinite(r.models).all())
    assert r.solution.copies in partial_copies_range(c)
    if c == 1:  # w'₁ at the compromised model's distance from w_Re, reversed
        dist = float(torch.linalg.vector_norm((W[0] - w_re).double()))
        d_eff = float((r.direction ** 2).sum())
        assert r.solution.bound == pytest.approx(dist / math.sqrt(d_eff))


# ---------------------------------------------------------------- goal, seeds, checks


@pytest.mark.parametrize("knowledge", ["full", "partial"])
def test_deviation_goal_moves_w1_along_minus_ones(knowledge: str) -> None:
    w_re, W = models(3)
    r = solve(context(w_re, W, knowledge=knowledge, goal="deviation"))
    assert torch.equal(r.direction, torch.ones(D))
    assert r.solution.found
    torch.testing.assert_close(r.models[0], w_re - r.solution.lam, rtol=0, atol=1e-6)
    if knowledge == "full":  # Eq. 3 with d_eff = d and s = 1
        bound = theorem1_bound(W[C:], w_re, torch.ones(D), M, C, C)
        assert r.solution.bound == pytest.approx(bound, rel=1e-6)


@pytest.mark.parametrize("knowledge", ["full", "partial"])
def test_same_seed_same_models_different_seed_different(knowledge: str) -> None:
    w_re, W = models(2)
    a = craft("krum", context(w_re, W, knowledge=knowledge, seed=7))
    b = craft("krum", context(w_re, W, knowledge=knowledge, seed=7))
    c = craft("krum", context(w_re, W, knowledge=knowledge, seed=8))
    assert torch.equal(a, b)
    assert torch.equal(a[0], c[0]) and not torch.equal(a[1:], c[1:])
    assert a.dtype == torch.float32 and a.device == w_re.device


@pytest.mark.parametrize("estimator", ["mean", "rule"])
def test_full_direction_with_zero_for_no_change(estimator: str) -> None:
    w_re, W = models(4)
    W[:, :3] = w_re[:3]  # three parameters nobody changes
    r = solve(context(w_re, W, direction=estimator, zero_sign="zero"))
    w = W.double().mean(0) if estimator == "mean" else W[krum_select(W, C)].double()
    assert torch.equal(r.direction, torch.sign(w - w_re.double()).float())
    assert bool((r.direction[:3] == 0).all()) and bool((r.direction[3:] != 0).all())
    assert torch.equal(r.models[0, :3], w_re[:3])  # w'₁ leaves them alone
    assert r.solution.found


@pytest.mark.parametrize(
    ("option", "value"),
    [("epsilon", -0.1), ("threshold", 0.0), ("b", 1.0), ("goal", "x"), ("direction", "median")],
)
def test_bad_options_raise_naming_the_option(option: str, value: object) -> None:
    spec = registry.get("attack", "krum")
    with pytest.raises(ValueError, match=option):
        if option == "goal":
            RunConfig(rule="krum", attack="krum", goal=value).resolve()  # type: ignore[arg-type]
        else:
            spec.resolve_options({option: value})


def test_full_knowledge_needs_benign_and_valid_krum() -> None:
    w_re, W = models(0)
    ctx = context(w_re, W)
    bad = AttackContext(compromised=ctx.compromised, benign=None, w_re=w_re, m=M,
                        knowledge="full", f=C, generator=ctx.generator, target=ctx.target)
    with pytest.raises(ValueError, match="benign"):
        craft("krum", bad)
    with pytest.raises(ValueError, match="krum"):
        craft("krum", context(w_re, W, f=14))  # m = 30 ≤ 2f + 2


# ---------------------------------------------------------------- ill-conditioned others


def test_selects_matches_float64_reference_on_far_tight_others() -> None:
    """The others form a tight cluster (one float32 ulp per coordinate) ~1e3 per coordinate
    from the origin, two of them mirrored through it, so their Gram distances are far off;
    w'₁ sweeps from inside the cluster outwards. ``selects`` must agree with Krum computed
    paper-literally (float64 direct differences) on the assembled matrix wherever the
    reference decision is not a rounding-level tie."""
    def reference(others: np.ndarray, w1: np.ndarray, copies: int, f: int) -> tuple[bool, float]:
        A = np.vstack([np.repeat(w1[None], copies, 0), others.astype(np.float64)])
        D = ((A[:, None] - A[None]) ** 2).sum(-1)
        np.fill_diagonal(D, np.inf)
        sc = np.sort(D, axis=1)[:, : len(A) - f - 2].sum(axis=1)
        best_other = sc[copies:].min()
        return bool(sc[0] < best_other), abs(sc[0] - best_other) / max(sc[0], best_other)

    n_o, d = 8, 16
    checked = 0
    for seed in range(30):
        rng = np.random.default_rng([31, seed])
        base = (rng.standard_normal(d) * 1e3).astype(np.float32)
        steps = rng.integers(-1, 2, (n_o, d)).astype(np.float32)
        X = (base + steps * np.spacing(np.abs(base))).astype(np.float32)
        order = np.argsort(np.linalg.norm(X.astype(np.float64), axis=1), kind="stable")
        X[order[(n_o - 1) // 2 : (n_o - 1) // 2 + 2]] *= -1
        copies = int(rng.integers(1, 4))
        f = int(rng.integers(0, (copies + n_o - 3) // 2 + 1))
        w_re = torch.from_numpy(X[rng.integers(0, n_o)].copy())
        s = torch.from_numpy(np.sign(rng.standard_normal(d)).astype(np.float32))
        lams = torch.from_numpy(np.geomspace(1e-7, 1e-2, 40))
        got = KrumProblem(torch.from_numpy(X), w_re, s).selects(lams, copies, f)
        for t, lam in enumerate(lams.tolist()):
            w1 = w_re.double().numpy() - lam * s.double().numpy()
            expected, margin = reference(X, w1, copies, f)
            if margin > 1e-6:
                checked += 1
                assert bool(got[t]) == expected, (seed, lam, copies, f)
    assert checked > 500
