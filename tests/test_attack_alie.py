"""ALIE does what Baruch et al. (NeurIPS 2019, Section 4, Algorithm 1) say."""

from __future__ import annotations

import math

import pytest
import torch

from attack_helpers import craft, hostile, loops_outside, make_context, synthetic
from fedpoison import RunConfig
from fedpoison.attacks import alie
from fedpoison.errors import ConfigError

M, C, D = 30, 6, 200


def context(w_re: torch.Tensor, W: torch.Tensor, *, c: int = C, knowledge: str = "full",
            benign: torch.Tensor | None = None, seed: int = 1, **options: object):
    return make_context(w_re, W, rule="alie", c=c, knowledge=knowledge, benign=benign,
                        seed=seed, **options)


def expected(rows: torch.Tensor, w_re: torch.Tensor, z: float, ddof: int,
             space: str = "gradient") -> torch.Tensor:
    """The model whose update is μ_j − zσ_j of the gradients (g = −Δ: the updates negated)
    or, for ``space="update"``, of the updates of ``rows``; coordinate by coordinate."""
    flip = -1.0 if space == "gradient" else 1.0
    U = flip * (rows.double() - w_re.double())
    n = U.shape[0]
    out = torch.empty(U.shape[1], dtype=torch.float64)
    for j in range(U.shape[1]):
        col = [float(v) for v in U[:, j]]
        mu = sum(col) / n
        var = sum((v - mu) ** 2 for v in col) / (n - ddof)
        out[j] = mu - z * math.sqrt(var)
    return flip * out + w_re.double()


def largest_z_below(q: float) -> float:
    """max{z : Φ(z) < q} by bisection on Φ(z) = (1 + erf(z/√2))/2 (independent of the code)."""
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 + math.erf(mid / math.sqrt(2))) / 2 < q else (lo, mid)
    return lo


@pytest.mark.parametrize(("n", "c"), [(50, 24), (100, 20), (51, 12), (20, 4), (10, 1)])
def test_z_is_the_papers_formula(n: int, c: int) -> None:
    s = (n // 2 + 1) - c  # ⌊n/2 + 1⌋ − c supporters
    assert alie.alie_z(n, c) == pytest.approx(largest_z_below((n - s) / n), abs=1e-9)


def test_z_needs_supporters() -> None:
    assert alie.alie_z(100, 20) == pytest.approx(0.4958503473474533, abs=1e-12)  # Φ⁻¹(0.69)
    # attackers that need no supporters (a majority; or a sample holding many of them):
    # one supporter, the largest finite z, no failure
    assert alie.alie_z(10, 6) == pytest.approx(largest_z_below(9 / 10))
    w_re, W = synthetic(5, 10, D)
    X = craft("alie", make_context(w_re, W, rule="alie", c=6))
    assert bool(torch.isfinite(X).all())


@pytest.mark.parametrize(("knowledge", "estimate", "rows"), [
    ("full", "all", slice(0, M)), ("full", "benign", slice(C, M)), ("full", "own", slice(0, C)),
    ("partial", "all", slice(0, C)), ("partial", "benign", slice(0, C)),
    ("partial", "own", slice(0, C))])
@pytest.mark.parametrize("std", ["population", "sample"])
@pytest.mark.parametrize("space", ["gradient", "update"])
def test_every_coordinate_is_mu_minus_z_sigma_of_the_rows_it_may_see(
        knowledge: str, estimate: str, rows: slice, std: str, space: str) -> None:
    w_re, W = synthetic(0, M, D)
    X = craft("alie", context(w_re, W, knowledge=knowledge, estimate=estimate, std=std,
                              space=space))
    z = alie.alie_z(M, C)
    want = expected(W[rows], w_re, z, 0 if std == "population" else 1, space)
    assert X.shape == (C, D) and X.dtype == torch.float32
    assert bool((X[0] == X).all())  # every compromised worker sends the same model
    torch.testing.assert_close(X[0].double(), want, rtol=0, atol=1e-6)


def test_option_z_overrides_the_formula() -> None:
    w_re, W = synthetic(1, M, D)
    X = craft("alie", context(w_re, W, z=1.5))
    torch.testing.assert_close(X[0].double(), expected(W, w_re, 1.5, 0), rtol=0, atol=1e-6)
    # the default (gradients) drifts the model the other way than the formula on updates
    mu = (W.double() - w_re.double()).mean(0)
    assert bool(((X[0].double() - w_re.double()) >= mu).all())


def test_partial_output_unchanged_when_benign_rows_are_nan() -> None:
    w_re, W = synthetic(2, M, D)
    base = craft("alie", context(w_re, W, knowledge="partial"))
    nan = torch.full((M - C, D), torch.nan)
    again = craft("alie", context(w_re, W, knowledge="partial", benign=nan))
    assert torch.equal(base, again) and bool(torch.isfinite(base).all())
    # full knowledge does read them
    full = craft("alie", context(w_re, W))
    W2 = W.clone()
    W2[C:] += 0.5
    assert not torch.equal(full, craft("alie", context(w_re, W2)))


def test_hostile_benign_rows_do_not_crash() -> None:
    w_re, W = synthetic(3, M, D)
    for B in hostile(W[C:]):
        for estimate in ("all", "benign", "own"):
            X = craft("alie", context(w_re, W, benign=B, estimate=estimate))
            assert X.shape == (C, D)


def test_same_seed_same_rows() -> None:
    w_re, W = synthetic(4, M, D)
    assert torch.equal(craft("alie", context(w_re, W, seed=3)),
                       craft("alie", context(w_re, W, seed=3)))


def test_vectorized() -> None:
    assert loops_outside(alie.__file__, set()) == []


def test_config_errors_are_one_line() -> None:
    base = {"dataset": "breast-cancer", "workers": 20, "compromised": 4}
    RunConfig(**base, attack="alie").resolve()
    RunConfig(**base, attack="alie", attack_options={"z": 1.0}, sample=8).resolve()
    with pytest.raises(ConfigError, match="estimate"):
        RunConfig(**base, attack="alie", attack_options={"estimate": "nope"}).resolve()
    with pytest.raises(ConfigError, match="space"):
        RunConfig(**base, attack="alie", attack_options={"space": "model"}).resolve()
