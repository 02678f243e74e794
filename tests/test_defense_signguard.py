"""SignGuard (Xu et al., ICDCS 2022): norm filter, sign clustering, clipped mean, hostile rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from defense_helpers import HOSTILE_CASES, context, rule, toy_run, with_hostile_rows
from fedpoison.config import RunConfig
from fedpoison.errors import ConfigError


def benign_updates(k: int, d: int, g: torch.Generator) -> torch.Tensor:
    """Updates with ~75% positive entries and similar norms."""
    signs = torch.where(torch.rand(k, d, generator=g) < 0.75, 1.0, -1.0)
    return signs * (0.5 + torch.rand(k, d, generator=g))


def reference(W: torch.Tensor, previous: torch.Tensor, trusted: list[bool]) -> np.ndarray:
    """previous + mean over trusted of Δᵢ · min(1, M/‖Δᵢ‖), M the median norm; loops."""
    D = (W.double() - previous.double()).numpy()
    norms = [math.sqrt(sum(v * v for v in row)) for row in D]
    M = float(np.median(norms))
    out = np.zeros(D.shape[1])
    for row, n, ok in zip(D, norms, trusted, strict=True):
        if ok:
            out += row * min(1.0, M / n)
    return previous.double().numpy() + out / sum(trusted)


def test_norm_filter_and_clipped_mean() -> None:
    g = torch.Generator().manual_seed(0)
    k, d = 20, 60
    previous = torch.randn(d, generator=g)
    D = benign_updates(1, d, g).abs() * torch.sign(benign_updates(1, d, g))  # one sign pattern
    D = D * (1 + 0.1 * torch.rand(k, 1, generator=g))  # same signs, other norms: one cluster
    D[2] *= 10  # norm > 3 x median
    D[7] *= 0.01  # norm < 0.1 x median
    D[9] *= 2.5  # large but inside: kept and clipped to the median norm
    W = previous + D
    ctx = context(previous, rows=k)
    out = rule("signguard", W, 2, ctx, fraction=1.0)
    assert ctx.removed is not None
    assert bool(ctx.removed[2]) and bool(ctx.removed[7]) and not bool(ctx.removed[9])
    trusted = (~ctx.removed).tolist()
    np.testing.assert_allclose(out.double().numpy(), reference(W, previous, trusted),
                               rtol=1e-5, atol=1e-5)
    # the filter bounds are options
    ctx2 = context(previous, rows=k)
    rule("signguard", W, 2, ctx2, fraction=1.0, upper=20.0, lower=0.0)
    assert not bool(ctx2.removed[2]) and not bool(ctx2.removed[7])


def test_sign_clustering_removes_flipped_updates() -> None:
    """Updates with the opposite sign statistics (same norms) form their own cluster."""
    g = torch.Generator().manual_seed(1)
    k, d, bad = 25, 200, 6
    previous = torch.zeros(d)
    D = benign_updates(k, d, g)
    D[:bad] = -D[:bad]
    ctx = context(previous, rows=k, seed=3)
    rule("signguard", previous + D, bad, ctx)
    assert ctx.removed is not None
    assert bool(ctx.removed[:bad].all()) and int(ctx.removed[bad:].sum()) <= 2


def test_seeded_block_and_no_trust_no_move() -> None:
    g = torch.Generator().manual_seed(2)
    k, d = 12, 100
    previous = torch.randn(d, generator=g)
    W = previous + benign_updates(k, d, g)
    a = rule("signguard", W, 2, context(previous, rows=k, seed=7))
    assert torch.equal(a, rule("signguard", W, 2, context(previous, rows=k, seed=7)))
    # every norm outside the band: nobody trusted, the model stays
    out = rule("signguard", W, 2, context(previous, rows=k), lower=2.0, upper=3.0)
    assert torch.equal(out, previous)


@pytest.mark.parametrize("kinds", HOSTILE_CASES)
def test_hostile_rows_finite_and_untrusted(kinds: list[str]) -> None:
    g = torch.Generator().manual_seed(3)
    k, d = 15, 80
    previous = torch.randn(d, generator=g)
    W = with_hostile_rows(previous + benign_updates(k, d, g), kinds, np.random.default_rng(1))
    ctx = context(previous, rows=k)
    out = rule("signguard", W, len(kinds), ctx)
    assert torch.isfinite(out).all()
    assert ctx.removed is not None and bool(ctx.removed[: len(kinds)].all())


def test_options_and_detection_in_a_run() -> None:
    with pytest.raises(ConfigError, match="lower < upper"):
        RunConfig(rule="signguard", rule_options={"lower": 3.0, "upper": 2.0}).resolve()
    with pytest.raises(ConfigError, match="fraction"):
        RunConfig(rule="signguard", rule_options={"fraction": 0}).resolve()
    # the readings the threshold below was measured with (defaults before issue 18; with
    # direction=rule, copies=radius, zero_sign=minus-one the TPR here is 0.67)
    r = toy_run(rule="signguard", attack="krum",
                attack_options={"direction": "mean", "copies": "ball", "zero_sign": "zero"})
    det = r.diagnostics["detection"]
    assert det["n"] == 12 and det["tp"] + det["fn"] == 12 * 4 and det["tpr"] > 0.7
