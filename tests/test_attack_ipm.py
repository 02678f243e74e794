"""IPM does what Xie, Koyejo, Gupta (UAI 2019, Section 4) say."""

from __future__ import annotations

import pytest
import torch

from attack_helpers import craft, hostile, loops_outside, make_context, synthetic
from fedpoison import RunConfig
from fedpoison.attacks import ipm
from fedpoison.errors import ConfigError

M, C, D = 30, 6, 200


def context(w_re: torch.Tensor, W: torch.Tensor, *, knowledge: str = "full",
            benign: torch.Tensor | None = None, seed: int = 1, **options: object):
    return make_context(w_re, W, rule="ipm", c=C, knowledge=knowledge, benign=benign,
                        seed=seed, **options)


@pytest.mark.parametrize("epsilon", [0.1, 1.0, 100.0])
@pytest.mark.parametrize("seed", range(3))
def test_inner_product_with_the_benign_mean_is_minus_epsilon_norm_squared(
        epsilon: float, seed: int) -> None:
    w_re, W = synthetic(seed, M, D)
    X = craft("ipm", context(w_re, W, epsilon=epsilon))
    mu = (W[C:].double() - w_re.double()).mean(0)  # the benign mean update
    crafted = X.double() - w_re.double()
    assert bool((X[0] == X).all())
    want = -epsilon * float(mu @ mu)
    for row in crafted:
        assert float(row @ mu) == pytest.approx(want, rel=1e-5)
    # and it is exactly −ε·μ, not only in projection
    torch.testing.assert_close(crafted[0], -epsilon * mu, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("knowledge", "estimate", "rows"), [
    ("full", "all", slice(0, M)), ("full", "own", slice(0, C)),
    ("partial", "benign", slice(0, C)), ("partial", "all", slice(0, C))])
def test_estimate_reads_the_rows_it_names(knowledge: str, estimate: str, rows: slice) -> None:
    w_re, W = synthetic(5, M, D)
    X = craft("ipm", context(w_re, W, knowledge=knowledge, estimate=estimate))
    mu = (W[rows].double() - w_re.double()).mean(0)
    torch.testing.assert_close(X[0].double() - w_re.double(), -0.1 * mu, rtol=1e-5, atol=1e-7)


def test_partial_output_unchanged_when_benign_rows_are_nan() -> None:
    w_re, W = synthetic(6, M, D)
    base = craft("ipm", context(w_re, W, knowledge="partial"))
    again = craft("ipm", context(w_re, W, knowledge="partial",
                                 benign=torch.full((M - C, D), torch.nan)))
    assert torch.equal(base, again) and bool(torch.isfinite(base).all())


def test_hostile_benign_rows_do_not_crash() -> None:
    w_re, W = synthetic(7, M, D)
    for B in hostile(W[C:]):
        assert craft("ipm", context(w_re, W, benign=B)).shape == (C, D)


def test_same_seed_same_rows() -> None:
    w_re, W = synthetic(8, M, D)
    assert torch.equal(craft("ipm", context(w_re, W, seed=2)),
                       craft("ipm", context(w_re, W, seed=2)))


def test_vectorized() -> None:
    assert loops_outside(ipm.__file__, set()) == []


def test_bad_epsilon_is_a_config_error() -> None:
    base = {"dataset": "breast-cancer", "workers": 20, "compromised": 4, "attack": "ipm"}
    RunConfig(**base, attack_options={"epsilon": 100}).resolve()
    with pytest.raises(ConfigError, match="epsilon"):
        RunConfig(**base, attack_options={"epsilon": -1}).resolve()
