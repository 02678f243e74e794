"""Norm clipping (Sun et al. 2019): against a plain float64 loop, hostile and far rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedpoison
from fedpoison.errors import ConfigError
from fedpoison.server import ServerContext, bind_rule


def ref_norm_clip(X: np.ndarray, p: np.ndarray, tau: float) -> np.ndarray:
    """One row at a time in float64: Δ / max(1, ‖Δ‖/τ), averaged over all rows (a
    non-finite row counts as a zero update)."""
    total = np.zeros_like(p)
    for x in X:
        if np.isfinite(x).all():
            delta = x.astype(np.float64) - p
            total += delta / max(1.0, float(np.linalg.norm(delta)) / tau)
    return p + total / len(X)


def norm_clip(W: torch.Tensor, p: torch.Tensor, tau: float) -> tuple[torch.Tensor,
                                                                      ServerContext]:
    ctx = ServerContext(1, p, {}, torch.Generator(), notes={}, rows=W.shape[0])
    return bind_rule("norm-clip", {"tau": tau})(W, 0, ctx), ctx


@pytest.mark.parametrize(("seed", "tau"), [(0, 0.1), (1, 1.0), (2, 100.0)])
def test_matches_a_plain_loop(seed: int, tau: float) -> None:
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(7).astype(np.float32)
    X = p + rng.standard_normal((10, 7)).astype(np.float32) * rng.uniform(0.01, 3, (10, 1))
    X = X.astype(np.float32)
    X[2] = np.nan
    out, ctx = norm_clip(torch.from_numpy(X), torch.from_numpy(p), tau)
    np.testing.assert_allclose(out.numpy(), ref_norm_clip(X, p.astype(np.float64), tau),
                               rtol=1e-6, atol=1e-6)
    assert ctx.removed is not None and ctx.removed.nonzero().flatten().tolist() == [2]
    norms = np.linalg.norm(X[[i for i in range(10) if i != 2]] - p, axis=1)
    assert ctx.notes == {"norm_clip_clipped": [float((norms > tau).sum()) / 10]}


def test_output_within_tau_of_the_previous_model_whatever_the_rows() -> None:
    rng = np.random.default_rng(3)
    hostile = np.array([np.nan, np.inf, -np.inf, 1e38, -1e38, 3.4e38, -3.4e38], np.float32)
    for t in range(40):
        m = int(rng.integers(1, 9))
        X = rng.standard_normal((m, 4)).astype(np.float32)
        for i in rng.choice(m, size=int(rng.integers(0, m + 1)), replace=False):
            X[i] = rng.choice(hostile, 4) if t % 2 else rng.choice(hostile)
        p = torch.from_numpy(rng.standard_normal(4).astype(np.float32))
        out, _ = norm_clip(torch.from_numpy(X), p, 0.5)
        assert torch.isfinite(out).all(), (t, X)
        assert float(torch.linalg.vector_norm(out.double() - p.double())) <= 0.5 + 1e-6


def test_a_far_row_moves_it_by_at_most_tau_over_m() -> None:
    benign = torch.randn(9, 5, generator=torch.Generator().manual_seed(4)) * 0.1
    p = torch.zeros(5)
    alone, _ = norm_clip(torch.cat([benign, torch.full((1, 5), float("nan"))]), p, 0.2)
    for scale in (10.0, 1e20, 3.4e38):
        out, _ = norm_clip(torch.cat([benign, torch.full((1, 5), scale)]), p, 0.2)
        assert float(torch.linalg.vector_norm(out - alone)) <= 0.2 / 10 + 1e-6


def test_bad_tau_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError) as e:
        fedpoison.RunConfig(rule="norm-clip", rule_options={"tau": -1}).resolve()
    assert "norm-clip" in str(e.value) and "tau" in str(e.value) and "\n" not in str(e.value)
