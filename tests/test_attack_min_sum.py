"""Min-Sum does what Shejwalkar & Houmansadr (NDSS 2021, Section IV-C) say."""

from __future__ import annotations

import pytest
import torch

from attack_helpers import craft, hostile, loops_outside, make_context, synthetic
from fedpoison import RunConfig
from fedpoison.attacks import min_max, min_sum
from fedpoison.errors import ConfigError

M, C, D = 30, 6, 50


def context(w_re: torch.Tensor, W: torch.Tensor, *, c: int = C, knowledge: str = "full",
            benign: torch.Tensor | None = None, seed: int = 1, **options: object):
    return make_context(w_re, W, rule="min-sum", c=c, knowledge=knowledge, benign=benign,
                        seed=seed, **options)


def score(x: torch.Tensor, U: torch.Tensor) -> float:
    """Σᵢ ‖x − Δᵢ‖², recomputed from scratch."""
    return float(((U - x) ** 2).sum())


def limit(U: torch.Tensor, bound: str) -> float:
    sums = (torch.cdist(U, U) ** 2).sum(1)
    return float(sums.max() if bound == "max" else sums.min())


@pytest.mark.parametrize("perturbation", ["std", "unit_vec", "sign"])
@pytest.mark.parametrize("knowledge", ["full", "partial"])
@pytest.mark.parametrize("bound", ["max", "min"])
@pytest.mark.parametrize("seed", range(2))
def test_gamma_satisfies_the_constraint_and_is_maximal(perturbation: str, knowledge: str,
                                                       bound: str, seed: int) -> None:
    w_re, W = synthetic(seed, M, D)
    ctx = context(w_re, W, knowledge=knowledge, perturbation=perturbation, bound=bound)
    X = craft("min-sum", ctx)
    rows = W[C:] if knowledge == "full" else W[:C]
    U = rows.double() - w_re.double()
    mu = U.mean(0)
    p = {"std": U.std(0), "unit_vec": -mu / mu.norm(), "sign": -torch.sign(mu)}[perturbation]
    delta = X[0].double() - w_re.double()
    gamma = float((delta - mu) @ p / (p @ p))
    torch.testing.assert_close(delta, mu + gamma * p, rtol=0, atol=1e-5)
    assert bool((X[0] == X).all()) and gamma > 0
    ref = min_max.reference(ctx, perturbation)
    exact, _ = min_sum.min_sum_gamma(ref, bound=bound)
    assert gamma == pytest.approx(exact, rel=1e-5)
    assert score(mu + exact * p, U) <= limit(U, bound) * (1 + 1e-9)
    assert score(mu + exact * (1 + 1e-3) * p, U) > limit(U, bound)


def test_paper_bound_allows_more_than_the_codes() -> None:
    w_re, W = synthetic(3, M, D)
    ref = min_max.reference(context(w_re, W), "std")
    assert min_sum.min_sum_gamma(ref, bound="max")[0] > min_sum.min_sum_gamma(ref, bound="min")[0]


@pytest.mark.parametrize("seed", range(6))
def test_matches_a_brute_force_grid_on_small_cases(seed: int) -> None:
    m, c, d = 7, 2, 3
    w_re, W = synthetic(200 + seed, m, d)
    X = craft("min-sum", context(w_re, W, c=c, gamma_init=2.0, threshold=1e-7))
    U = W[c:].double() - w_re.double()
    mu, p = U.mean(0), U.std(0)
    grid = torch.arange(0, 4.0, 1e-4, dtype=torch.float64)
    cand = mu + grid[:, None] * p
    ok = ((cand[:, None, :] - U[None]) ** 2).sum((1, 2)) <= limit(U, "max")
    best = float(grid[ok].max())
    gamma = float((X[0].double() - w_re.double() - mu) @ p / (p @ p))
    assert abs(gamma - best) <= 1e-4 + 1e-5


def test_partial_output_unchanged_when_benign_rows_are_nan() -> None:
    w_re, W = synthetic(7, M, D)
    base = craft("min-sum", context(w_re, W, knowledge="partial"))
    again = craft("min-sum", context(w_re, W, knowledge="partial",
                                     benign=torch.full((M - C, D), torch.nan)))
    assert torch.equal(base, again) and bool(torch.isfinite(base).all())


def test_hostile_benign_rows_do_not_crash() -> None:
    w_re, W = synthetic(8, M, D)
    for B in hostile(W[C:]):
        for bound in ("max", "min"):
            assert craft("min-sum", context(w_re, W, benign=B, bound=bound)).shape == (C, D)


def test_same_seed_same_rows() -> None:
    w_re, W = synthetic(9, M, D)
    assert torch.equal(craft("min-sum", context(w_re, W, seed=4)),
                       craft("min-sum", context(w_re, W, seed=4)))


def test_vectorized() -> None:
    assert loops_outside(min_sum.__file__, set()) == []


def test_config_errors() -> None:
    base = {"dataset": "breast-cancer", "workers": 20, "compromised": 4, "attack": "min-sum"}
    RunConfig(**base, attack_options={"bound": "min"}).resolve()
    with pytest.raises(ConfigError, match="bound"):
        RunConfig(**base, attack_options={"bound": "mean"}).resolve()
