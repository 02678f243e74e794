"""Geometric median by RFA's smoothed Weiszfeld algorithm: against a direct float64 loop,
optimality when run long, hostile rows, far rows, diagnostics and options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedpoison
from fedpoison.data.base import Dataset
from fedpoison.errors import ConfigError
from fedpoison.server import ServerContext, bind_rule


def ctx_for(W: torch.Tensor, previous: torch.Tensor) -> ServerContext:
    return ServerContext(1, previous, {}, torch.Generator(), notes={}, rows=W.shape[0])


def geomed(W: torch.Tensor, previous: torch.Tensor, **options: object
           ) -> tuple[torch.Tensor, ServerContext]:
    ctx = ctx_for(W, previous)
    return bind_rule("geomed", options)(W, 0, ctx), ctx


def ref_weiszfeld(X: np.ndarray, p: np.ndarray, iterations: int, nu: float, tol: float,
                  init: str) -> tuple[np.ndarray, int]:
    """One row at a time in float64: the RFA authors' loop (non-finite rows dropped)."""
    U = [x.astype(np.float64) - p for x in X if np.isfinite(x).all()]
    alpha = 1.0 / len(U)
    v = sum(alpha * u for u in U) if init == "mean" else np.zeros_like(p)

    def objective(v: np.ndarray) -> float:
        return sum(alpha * float(np.linalg.norm(v - u)) for u in U)

    obj, steps = objective(v), 0
    for _ in range(iterations):
        betas = [alpha / max(nu, float(np.linalg.norm(v - u))) for u in U]
        v = sum(b * u for b, u in zip(betas, U, strict=True)) / sum(betas)
        steps += 1
        new = objective(v)
        stop = abs(obj - new) < tol * new
        obj = new
        if stop:
            break
    return p + v, steps


def sample(seed: int, m: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(d).astype(np.float32)
    W = p + rng.standard_normal((m, d)).astype(np.float32) * rng.uniform(0.1, 2.0, (m, 1))
    return torch.from_numpy(W.astype(np.float32)), torch.from_numpy(p)


@pytest.mark.parametrize("init", ["previous", "mean"])
@pytest.mark.parametrize(("seed", "iterations", "tol"), [(0, 4, 1e-6), (1, 1, 0.0),
                                                         (2, 30, 0.0), (3, 50, 1e-9)])
def test_matches_a_direct_weiszfeld_loop(seed: int, iterations: int, tol: float,
                                         init: str) -> None:
    W, p = sample(seed, 9, 5)
    W[4] = float("nan")  # dropped, as the RFA code drops non-finite updates
    out, ctx = geomed(W, p, iterations=iterations, tolerance=tol, init=init)
    ref, steps = ref_weiszfeld(W.numpy(), p.numpy().astype(np.float64), iterations, 1e-5,
                               tol, init)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6, atol=1e-6)
    assert ctx.notes == {"geomed_iterations": [float(steps)]}
    assert steps <= iterations and (tol > 0 or steps == iterations)


def test_run_long_it_is_the_geometric_median() -> None:
    """The subgradient of Σ‖v − Δᵢ‖ vanishes at the output, and moving it raises the
    objective (no other point is better)."""
    W, p = sample(4, 15, 6)
    out, _ = geomed(W, p, iterations=2000, tolerance=0.0, nu=1e-12)
    X, v = W.double(), out.double()
    diff = v - X
    unit = diff / torch.linalg.vector_norm(diff, dim=1, keepdim=True)
    assert torch.linalg.vector_norm(unit.sum(0)) < 1e-3 * len(X)

    def objective(z: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(z - X, dim=1).sum())

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        step = torch.randn(6, generator=g, dtype=torch.float64) * 1e-2
        assert objective(v + step) >= objective(v) - 1e-9


def test_tolerance_stops_early_and_iterations_caps() -> None:
    W, p = sample(5, 30, 20)
    _, ctx = geomed(W, p, iterations=100, tolerance=1e-6)
    assert 1 <= ctx.notes["geomed_iterations"][0] < 100
    _, ctx = geomed(W, p, iterations=3, tolerance=0.0)
    assert ctx.notes["geomed_iterations"] == [3.0]


def test_far_rows_move_it_a_bounded_distance_from_the_benign_mean() -> None:
    """5 of 11 rows placed arbitrarily far (same direction, the worst case): the output's
    distance to the benign mean does not grow with how far they are; run to convergence it
    is the geometric median's own bias (< 0.4 here). RFA's relative stopping test stops after
    one step once the far rows dominate the objective, which keeps the output no farther
    than the start. Starting from the mean update instead (the RFA code's start), a few
    steps do not get back."""
    rng = np.random.default_rng(6)
    p = torch.zeros(8)
    benign = rng.standard_normal((6, 8)).astype(np.float32) * 0.1 + 1.0
    mean = benign.astype(np.float64).mean(0)
    start = np.linalg.norm(mean) + np.linalg.norm(benign - mean, axis=1).max()  # ≈ 3.2
    outs = {}
    for scale in (1e3, 1e8, 1e20, 1e38):
        far = np.full((5, 8), scale, np.float32)
        W = torch.from_numpy(np.vstack([far[:2], benign, far[2:]]))
        for options in ({}, {"iterations": 30, "tolerance": 0.0}):
            out, _ = geomed(W, p, **options)
            assert torch.isfinite(out).all()
            dist = np.linalg.norm(out.numpy().astype(np.float64) - mean)
            assert dist < (start if not options else 0.4), (scale, options, dist)
            outs[scale, bool(options)] = out
        out_mean_start, _ = geomed(W, p, init="mean")
        if scale >= 1e8:
            assert np.linalg.norm(out_mean_start.numpy() - mean) > 1e3
    for converged in (False, True):  # as far as float32 can tell, the same output
        torch.testing.assert_close(outs[1e8, converged], outs[1e38, converged])


def test_hostile_rows_get_zero_weight_and_are_reported() -> None:
    W, p = sample(7, 12, 6)
    clean, _ = geomed(W[[i for i in range(12) if i not in (1, 5, 8)]], p)
    X = W.clone()
    X[1] = float("nan")
    X[5] = float("inf")
    X[8, 2] = -float("inf")
    out, ctx = geomed(X, p)
    torch.testing.assert_close(out, clean, rtol=1e-6, atol=1e-7)
    assert ctx.removed is not None and ctx.removed.nonzero().flatten().tolist() == [1, 5, 8]


def test_output_finite_whatever_the_rows() -> None:
    rng = np.random.default_rng(8)
    hostile = np.array([np.nan, np.inf, -np.inf, 1e38, -1e38, 3.4e38, -3.4e38], np.float32)
    for t in range(60):
        m = int(rng.integers(1, 9))
        X = rng.standard_normal((m, 4)).astype(np.float32)
        if t % 3 == 0:  # huge benign rows too
            X = (np.tanh(X) * 3e38).astype(np.float32)
        for i in rng.choice(m, size=int(rng.integers(0, m + 1)), replace=False):
            X[i] = rng.choice(hostile, 4) if t % 2 else rng.choice(hostile)
        for init in ("previous", "mean"):
            out, _ = geomed(torch.from_numpy(X), torch.zeros(4), init=init)
            assert torch.isfinite(out).all(), (t, X)


def test_every_row_non_finite_keeps_the_previous_model() -> None:
    p = torch.arange(3.0)
    out, ctx = geomed(torch.full((4, 3), float("nan")), p)
    assert torch.equal(out, p) and ctx.notes == {"geomed_iterations": [0.0]}


@pytest.mark.parametrize(("option", "value"), [("iterations", 0), ("nu", 0.0),
                                                ("tolerance", -1.0), ("init", "median")])
def test_bad_options_are_one_line_errors(option: str, value: object) -> None:
    with pytest.raises(ConfigError) as e:
        fedpoison.RunConfig(rule="geomed", rule_options={option: value}).resolve()
    assert "geomed" in str(e.value) and option in str(e.value) and "\n" not in str(e.value)


def test_runs_and_reports_its_steps() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 6, generator=g)
    y = (x[:, 0] > 0.5).long()
    ds = Dataset("toy-geomed", x[:300], y[:300], x[300:], y[300:], 2)
    r = fedpoison.run(fedpoison.RunConfig(rule="geomed", workers=10, compromised=2,
                                          iterations=4, eval_every=2, attack="gaussian"),
                      dataset=ds)
    steps = r.diagnostics["geomed_iterations"]
    assert steps["n"] == 4 and 1 <= steps["max"] <= 4
