"""FLAME (Nguyen et al., USENIX Security 2022): HDBSCAN admission, median clipping, noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from defense_helpers import HOSTILE_CASES, context, rule, toy_run, with_hostile_rows
from fedpoison.config import RunConfig
from fedpoison.defenses.flame import noise_level
from fedpoison.errors import ConfigError

QUIET = {"epsilon": 1e15}  # λ ≈ 4e-15: the noise is far below float32 resolution


def models(k: int, bad: int, d: int, g: torch.Generator) -> torch.Tensor:
    """k models around a common direction; the first ``bad`` point the opposite way."""
    base = torch.randn(d, generator=g)
    W = base + 0.1 * torch.randn(k, d, generator=g)
    W[:bad] = -base + 0.3 * torch.randn(bad, d, generator=g)
    return W * (0.5 + torch.rand(k, 1, generator=g))


def reference(W: torch.Tensor, G: torch.Tensor, admitted: list[bool]) -> np.ndarray:
    """Mean over admitted of G + (Wᵢ − G) · min(1, S/eᵢ), S the median of all eᵢ; loops."""
    D = (W.double() - G.double()).numpy()
    e = [math.sqrt(sum(v * v for v in row)) for row in D]
    S = float(np.median(e))
    acc = np.zeros(D.shape[1])
    for row, ei, ok in zip(D, e, admitted, strict=True):
        if ok:
            acc += row * min(1.0, S / ei)
    return G.double().numpy() + acc / sum(admitted)


def test_noise_level() -> None:
    assert noise_level(3705, 0.001) == pytest.approx(math.sqrt(2 * math.log(1250)) / 3705)
    assert noise_level(3705, 0.001) == pytest.approx(1.0e-3, rel=0.03)


def test_admits_the_majority_cluster_and_clips_to_the_median() -> None:
    g = torch.Generator().manual_seed(0)
    k, bad, d = 21, 6, 40
    W = models(k, bad, d, g)
    G = torch.zeros(d)
    ctx = context(G, rows=k)
    out = rule("flame", W, bad, ctx, **QUIET)
    assert ctx.removed is not None
    assert bool(ctx.removed[:bad].all())
    assert int((~ctx.removed).sum()) >= k // 2 + 1  # HDBSCAN's cluster: a majority
    np.testing.assert_allclose(out.double().numpy(),
                               reference(W, G, (~ctx.removed).tolist()), rtol=1e-5, atol=1e-6)
    # clipping: no admitted update counts for more than the median distance
    G2 = torch.randn(d, generator=g) * 0.1
    out2 = rule("flame", G2 + (W - G) * 5, bad, context(G2, rows=k), **QUIET)
    e = (W - G).double().norm(dim=1) * 5
    assert (out2 - G2).double().norm() <= float(e.median()) * (1 + 1e-5)


def test_noise_is_gaussian_with_sigma_lambda_s_and_seeded() -> None:
    g = torch.Generator().manual_seed(1)
    k, d = 9, 20_000
    G = torch.randn(d, generator=g)
    W = G + torch.randn(k, d, generator=g) * 0.01
    quiet = rule("flame", W, 2, context(G, rows=k, seed=4), **QUIET)
    noisy = rule("flame", W, 2, context(G, rows=k, seed=4), epsilon=100.0, delta=1e-5)
    S = float((W - G).double().norm(dim=1).median())
    sigma = noise_level(100.0, 1e-5) * S
    noise = (noisy - quiet).double()
    assert float(noise.mean()) == pytest.approx(0.0, abs=4 * sigma / math.sqrt(d))
    assert float(noise.std()) == pytest.approx(sigma, rel=0.03)
    again = rule("flame", W, 2, context(G, rows=k, seed=4), epsilon=100.0, delta=1e-5)
    other = rule("flame", W, 2, context(G, rows=k, seed=5), epsilon=100.0, delta=1e-5)
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)


@pytest.mark.parametrize("kinds", HOSTILE_CASES)
def test_hostile_rows_finite_and_not_admitted(kinds: list[str]) -> None:
    g = torch.Generator().manual_seed(2)
    k, d = 15, 30
    W = with_hostile_rows(models(k, 0, d, g), kinds, np.random.default_rng(0))
    G = torch.zeros(d)
    ctx = context(G, rows=k)
    out = rule("flame", W, len(kinds), ctx)
    assert torch.isfinite(out).all()
    finite = torch.isfinite(W).all(1)
    assert ctx.removed is not None and bool(ctx.removed[~finite].all())
    # ±1e38 rows, admitted or not, are clipped to the median distance
    assert float((out - G).double().norm()) < 1e3


def test_tiny_inputs_and_options() -> None:
    W = torch.randn(2, 5, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(rule("flame", W, 0, context(torch.zeros(5), rows=2))).all()
    for key, value in (("epsilon", 0), ("delta", 1.0), ("delta", 0)):
        with pytest.raises(ConfigError, match=key):
            RunConfig(rule="flame", rule_options={key: value}).resolve()


def test_reports_detection_in_a_run() -> None:
    r = toy_run(rule="flame", attack="trimmed-mean")
    det = r.diagnostics["detection"]
    assert det["n"] == 12 and det["tp"] + det["fn"] == 12 * 4 and det["tpr"] > 0.7
