"""Min-Max does what Shejwalkar & Houmansadr (NDSS 2021, Section IV-C) say."""

from __future__ import annotations

import pytest
import torch

from attack_helpers import craft, hostile, loops_outside, make_context, synthetic
from fedpoison import RunConfig
from fedpoison.attacks import min_max
from fedpoison.errors import ConfigError

M, C, D = 30, 6, 50


def context(w_re: torch.Tensor, W: torch.Tensor, *, c: int = C, knowledge: str = "full",
            benign: torch.Tensor | None = None, seed: int = 1, **options: object):
    return make_context(w_re, W, rule="min-max", c=c, knowledge=knowledge, benign=benign,
                        seed=seed, **options)


def worst(x: torch.Tensor, U: torch.Tensor) -> float:
    """max_i ‖x − Δᵢ‖², recomputed from scratch."""
    return float(((U - x) ** 2).sum(1).max())


def budget(U: torch.Tensor) -> float:
    """max_{i,j} ‖Δᵢ − Δⱼ‖², recomputed from scratch."""
    return float((torch.cdist(U, U) ** 2).max())


def expected_p(U: torch.Tensor, kind: str) -> torch.Tensor:
    mu = U.mean(0)
    return {"std": U.std(0), "unit_vec": -mu / mu.norm(), "sign": -torch.sign(mu)}[kind]


@pytest.mark.parametrize("perturbation", ["std", "unit_vec", "sign"])
@pytest.mark.parametrize("knowledge", ["full", "partial"])
@pytest.mark.parametrize("seed", range(3))
def test_gamma_satisfies_the_constraint_and_is_maximal(perturbation: str, knowledge: str,
                                                       seed: int) -> None:
    w_re, W = synthetic(seed, M, D)
    ctx = context(w_re, W, knowledge=knowledge, perturbation=perturbation)
    ref = min_max.reference(ctx, perturbation)
    gamma, _ = min_max.min_max_gamma(ref)
    X = craft("min-max", ctx)
    U = ref.U
    assert gamma > 0
    torch.testing.assert_close(X[0].double() - w_re.double(), ref.mu + gamma * ref.p,
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(ref.p, expected_p(U, perturbation))
    assert worst(ref.mu + gamma * ref.p, U) <= budget(U) * (1 + 1e-9)
    assert worst(ref.mu + gamma * (1 + 1e-3) * ref.p, U) > budget(U)


@pytest.mark.parametrize("seed", range(6))
def test_matches_a_brute_force_grid_on_small_cases(seed: int) -> None:
    m, c, d = 7, 2, 3
    w_re, W = synthetic(100 + seed, m, d)
    X = craft("min-max", context(w_re, W, c=c, gamma_init=2.0, threshold=1e-7))
    U = W[c:].double() - w_re.double()
    mu, p = U.mean(0), expected_p(U, "std")
    grid = torch.arange(0, 4.0, 1e-4, dtype=torch.float64)
    cand = mu + grid[:, None] * p  # [G, d]
    ok = ((cand[:, None, :] - U[None]) ** 2).sum(-1).max(1).values <= budget(U)
    best = float(grid[ok].max())
    gamma = float((X[0].double() - w_re.double() - mu) @ p / (p @ p))
    assert abs(gamma - best) <= 1e-4 + 1e-5


def test_std_perturbation_is_the_gradients_inverse_std() -> None:
    """The paper's −σ of the gradients is +σ of the updates (Δ = −lr·g); ``space: update``
    takes −σ of the updates; the odd perturbations are the same in both spaces."""
    w_re, W = synthetic(11, M, D)
    U = W[C:].double() - w_re.double()
    ctx = context(w_re, W)
    torch.testing.assert_close(min_max.reference(ctx, "std").p, U.std(0))
    torch.testing.assert_close(min_max.reference(ctx, "std", "update").p, -U.std(0))
    for kind in ("unit_vec", "sign"):
        assert torch.equal(min_max.reference(ctx, kind).p,
                           min_max.reference(ctx, kind, "update").p)
    a = craft("min-max", context(w_re, W))
    b = craft("min-max", context(w_re, W, space="update"))
    assert not torch.equal(a, b)


def test_search_stays_within_two_gamma_init() -> None:
    calls: list[float] = []
    gamma, steps = min_max.halving_search(lambda g: calls.append(g) or True, 10.0, 1e-5)
    assert 20 - 2e-5 <= gamma < 20 and steps == len(calls)
    gamma, _ = min_max.halving_search(lambda g: False, 10.0, 1e-5)
    assert gamma == 0.0
    gamma, _ = min_max.halving_search(lambda g: g <= 3.3, 10.0, 1e-5)
    assert 3.3 - 2e-5 <= gamma <= 3.3


def test_partial_output_unchanged_when_benign_rows_are_nan() -> None:
    w_re, W = synthetic(7, M, D)
    base = craft("min-max", context(w_re, W, knowledge="partial"))
    again = craft("min-max", context(w_re, W, knowledge="partial",
                                     benign=torch.full((M - C, D), torch.nan)))
    assert torch.equal(base, again) and bool(torch.isfinite(base).all())


def test_hostile_benign_rows_do_not_crash() -> None:
    w_re, W = synthetic(8, M, D)
    for B in hostile(W[C:]):
        for kind in min_max.PERTURBATIONS:
            assert craft("min-max", context(w_re, W, benign=B, perturbation=kind)).shape == (C, D)


def test_same_seed_same_rows() -> None:
    w_re, W = synthetic(9, M, D)
    assert torch.equal(craft("min-max", context(w_re, W, seed=4)),
                       craft("min-max", context(w_re, W, seed=4)))


def test_vectorized_only_the_search_loops() -> None:
    assert loops_outside(min_max.__file__, {"halving_search"}) == []


def test_config_errors() -> None:
    base = {"dataset": "breast-cancer", "workers": 20, "compromised": 4, "attack": "min-max"}
    RunConfig(**base, knowledge="partial").resolve()
    with pytest.raises(ConfigError, match="perturbation"):
        RunConfig(**base, attack_options={"perturbation": "gauss"}).resolve()
    with pytest.raises(ConfigError, match="gamma_init"):
        RunConfig(**base, attack_options={"gamma_init": 0}).resolve()
    with pytest.raises(ConfigError, match="c >= 2"):
        RunConfig(**{**base, "compromised": 1}, knowledge="partial").resolve()


def test_no_benign_update_is_a_clear_error() -> None:
    w_re, W = synthetic(12, M, D)
    with pytest.raises(ValueError, match="at least one benign"):
        craft("min-max", context(w_re, W[:C], benign=W[:0]))
