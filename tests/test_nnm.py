"""Nearest-neighbour mixing (Allouah et al., AISTATS 2023): against brute force, hostile
rows, and composed before a rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedpoison
from fedpoison.aggregators.nnm import nnm, nnm_output
from fedpoison.errors import ConfigError
from fedpoison.server import ServerContext, bind_pipeline


def brute_force(X: np.ndarray, f: int) -> np.ndarray:
    """Each row: the float64 mean of its m − f nearest rows by direct differences, itself
    first, ties to the smaller index; a row with a non-finite entry is infinitely far."""
    m = len(X)
    X64 = X.astype(np.float64)
    finite = np.isfinite(X64).all(axis=1)

    def sq(i: int, j: int) -> float:
        if i == j:
            return -1.0
        return float(((X64[i] - X64[j]) ** 2).sum()) if finite[i] and finite[j] else np.inf

    out = []
    for i in range(m):
        dist = [(sq(i, j), j) for j in range(m)]
        nearest = [j for _, j in sorted(dist)[: m - f]]
        with np.errstate(invalid="ignore", over="ignore"):  # the hostile rows' own mixtures
            out.append(X64[nearest].mean(axis=0))
    return np.array(out)


@pytest.mark.parametrize(("seed", "m", "f"), [(0, 6, 1), (1, 10, 3), (2, 9, 0), (3, 7, 6)])
def test_matches_brute_force(seed: int, m: int, f: int) -> None:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, 5)).astype(np.float32)
    X[1] = X[0]  # an exact duplicate: itself still counts first
    np.testing.assert_allclose(nnm(torch.from_numpy(X), f).numpy(), brute_force(X, f),
                               rtol=1e-6, atol=1e-7)


def test_only_the_hostile_rows_own_mixtures_are_non_finite() -> None:
    rng = np.random.default_rng(4)
    hostile = [np.nan, np.inf, -np.inf, 1e38, -1e38, 3.4e38, -3.4e38]
    for t in range(30):
        f = int(rng.integers(1, 4))
        m = 2 * f + 1 + int(rng.integers(0, 4))
        X = rng.standard_normal((m, 4)).astype(np.float32)
        bad = rng.choice(m, size=f, replace=False)
        for i in bad:
            X[i] = rng.choice(hostile, 4) if t % 2 else rng.choice(hostile)
        out = nnm(torch.from_numpy(X), f).numpy()
        good = np.setdiff1d(np.arange(m), bad)
        assert np.isfinite(out[good]).all(), (t, X)
        np.testing.assert_allclose(out[good], brute_force(X, f)[good], rtol=1e-6, atol=1e-6)
        pipe = bind_pipeline("median", {}, [("nnm", {})])
        ctx = ServerContext(1, torch.zeros(4), {}, torch.Generator(), rows=m)
        assert torch.isfinite(pipe(torch.from_numpy(X), f, ctx)).all()


def test_non_finite_sums_follow_ieee() -> None:
    """A mixture with +inf and -inf, or NaN, is NaN; with +inf only, +inf (as a direct sum)."""
    X = torch.tensor([[0.0, 0.0], [float("inf"), 1.0], [-float("inf"), float("inf")]])
    out = nnm(X, 0)  # every row averages all three
    assert torch.isnan(out[:, 0]).all() and torch.isposinf(out[:, 1]).all()


def test_keeps_m_and_f_and_needs_f_below_m() -> None:
    assert nnm_output(10, 3) == (10, 3)
    with pytest.raises(ValueError, match="nnm: needs f < m"):
        nnm_output(4, 4)
    fedpoison.RunConfig(rule="krum", preaggregators=["nnm"]).resolve()
    with pytest.raises(ConfigError, match="nnm has no option"):
        fedpoison.RunConfig(rule="krum", preaggregators=["nnm:k=3"]).resolve()
