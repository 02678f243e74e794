"""DnC (Shejwalkar & Houmansadr, NDSS 2021): SVD outlier scores, removal, rounds, hostile rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defense_helpers import HOSTILE_CASES, context, defense, toy_run, with_hostile_rows
from fedpoison.config import RunConfig
from fedpoison.defenses.dnc import dnc_scores
from fedpoison.errors import ConfigError
from fedpoison.server import bind_pipeline


def reference_scores(X: np.ndarray) -> np.ndarray:
    """⟨xᵢ − μ, v⟩² with v the top right singular vector (numpy SVD), one row at a time."""
    mu = X.mean(axis=0)
    _, _, vt = np.linalg.svd(X - mu, full_matrices=False)
    v = vt[0]
    return np.array([float(np.dot(row - mu, v)) ** 2 for row in X])


@pytest.mark.parametrize("seed", range(5))
def test_scores_match_svd(seed: int) -> None:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((11, 30))
    X[:3] += 4 * rng.standard_normal(30)  # a direction with more spread
    got = dnc_scores(torch.from_numpy(X), torch.zeros(11, dtype=torch.bool)).numpy()
    np.testing.assert_allclose(got, reference_scores(X), rtol=1e-8, atol=1e-10)


def test_drops_the_outliers_along_the_top_direction() -> None:
    g = torch.Generator().manual_seed(0)
    k, d, f = 20, 50, 4
    previous = torch.zeros(d)
    W = torch.randn(k, d, generator=g) * 0.1
    direction = torch.randn(d, generator=g)
    W[[3, 8, 11, 17]] += 3 * direction / direction.norm()
    drop = defense("dnc", W, f, context(previous, rows=k))
    assert drop.tolist() == [3, 8, 11, 17]
    # c scales the count: ⌈c·f⌉ per round
    assert defense("dnc", W, f, context(previous, rows=k), c=1.5).numel() == 6
    assert defense("dnc", W, 0, context(previous, rows=k)).numel() == 0


def test_subsampling_is_seeded_and_rounds_intersect() -> None:
    g = torch.Generator().manual_seed(1)
    k, d, f = 15, 400, 3
    W = torch.randn(k, d, generator=g)
    prev = torch.zeros(d)
    one = defense("dnc", W, f, context(prev, rows=k, seed=5), b=40)
    assert torch.equal(one, defense("dnc", W, f, context(prev, rows=k, seed=5), b=40))
    # with niters rounds, a row survives only if every round keeps it
    many = defense("dnc", W, f, context(prev, rows=k, seed=5), b=40, niters=4)
    assert set(one.tolist()) <= set(many.tolist()) and 3 <= many.numel() <= 12
    gen = torch.Generator().manual_seed(5)
    expected: set[int] = set()
    for _ in range(4):
        cols = torch.randperm(d, generator=gen)[:40].sort().values
        s = dnc_scores(W.double()[:, cols], torch.zeros(k, dtype=torch.bool))
        expected |= set(torch.sort(s, descending=True, stable=True).indices[:f].tolist())
    assert set(many.tolist()) == expected
    # b ≥ d: every coordinate, no randomness involved
    full = defense("dnc", W, f, context(prev, rows=k, seed=1), b=10_000)
    s = dnc_scores(W.double(), torch.zeros(k, dtype=torch.bool))
    assert set(full.tolist()) == set(torch.topk(s, f).indices.tolist())


@pytest.mark.parametrize("kinds", HOSTILE_CASES)
def test_hostile_rows_dropped_first_and_rest_finite(kinds: list[str]) -> None:
    g = torch.Generator().manual_seed(2)
    k, d, f = 12, 25, 3
    W = with_hostile_rows(torch.randn(k, d, generator=g), kinds, np.random.default_rng(0))
    drop = defense("dnc", W, f, context(torch.zeros(d), rows=k))
    nonfinite = torch.nonzero(~torch.isfinite(W).all(1)).reshape(-1)
    assert set(nonfinite.tolist()) <= set(drop.tolist())
    keep = torch.ones(k, dtype=torch.bool)
    keep[drop] = False
    big = (W.abs() > 1e30).any(1)
    if int(big.sum()) <= f:  # finite ±1e38 rows are the farthest: dropped too
        assert not bool((keep & big).any())
    assert torch.isfinite(bind_pipeline("mean", {})(W[keep], f)).all()


def test_check_and_options() -> None:
    with pytest.raises(ConfigError, match="dnc: drops up to 20"):
        RunConfig(rule="bulyan", defense="dnc").resolve()  # bulyan needs 83 > 80 left
    RunConfig(rule="mean", defense="dnc").resolve()
    for key, value in (("niters", 0), ("b", 0), ("c", 0)):
        with pytest.raises(ConfigError, match=key):
            RunConfig(rule="mean", defense="dnc", defense_options={key: value}).resolve()


def test_reports_detection_in_a_run() -> None:
    r = toy_run(rule="mean", defense="dnc", attack="trimmed-mean")
    det = r.diagnostics["detection"]
    assert det["n"] == 12 and det["tp"] + det["fp"] == 12 * 4  # ⌈c·f⌉ = 4 per iteration
    assert det["tpr"] > 0.9
