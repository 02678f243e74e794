"""Centered clipping (Karimireddy, He, Jaggi, ICML 2021): against a plain float64 loop, its
center across iterations (state), hostile and far rows, reproducibility and options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedpoison
from fedpoison.data.base import Dataset
from fedpoison.errors import ConfigError
from fedpoison.server import ServerContext, bind_pipeline, bind_rule


def ref_cclip(X: np.ndarray, p: np.ndarray, center: np.ndarray, tau: float, L: int
              ) -> np.ndarray:
    """The authors' loop, one row at a time in float64, on the updates X − p; a non-finite
    row adds nothing to a step."""
    m = len(X)
    v = center.astype(np.float64)
    for _ in range(L):
        step = np.zeros_like(v)
        for x in X:
            if not np.isfinite(x).all():
                continue
            z = x.astype(np.float64) - p - v
            norm = float(np.linalg.norm(z))
            step += z * min(1.0, tau / norm) if norm > 0 else z
        v = v + step / m
    return p + v


def call(W: torch.Tensor, ctx: ServerContext, **options: object) -> torch.Tensor:
    return bind_rule("cclip", options)(W, 0, ctx)


def context(t: int, previous: torch.Tensor, state: dict, rows: int) -> ServerContext:
    return ServerContext(t, previous, state, torch.Generator(), notes={}, rows=rows)


def rows(seed: int, m: int, d: int, scale: float = 1.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.standard_normal((m, d)) * scale).astype(np.float32))


@pytest.mark.parametrize(("tau", "L"), [(0.5, 1), (0.5, 3), (10.0, 2), (0.01, 5)])
def test_matches_a_plain_loop_over_two_iterations(tau: float, L: int) -> None:
    """Iteration 1 is centred on the zero update; iteration 2 on the update the server
    applied in iteration 1 (w_2 − w_1)."""
    W1, W2 = rows(0, 9, 6), rows(1, 9, 6) + 0.3
    W2[3] = float("nan")
    w1 = torch.zeros(6)
    state: dict = {}
    out1 = call(W1, context(1, w1, state, 9), tau=tau, iterations=L)
    ref1 = ref_cclip(W1.numpy(), w1.numpy().astype(np.float64), np.zeros(6), tau, L)
    np.testing.assert_allclose(out1.numpy(), ref1, rtol=1e-6, atol=1e-6)
    w2 = out1.clone()  # the server applied out1
    out2 = call(W2, context(2, w2, state, 9), tau=tau, iterations=L)
    center = w2.double().numpy() - w1.double().numpy()
    ref2 = ref_cclip(W2.numpy(), w2.numpy().astype(np.float64), center, tau, L)
    np.testing.assert_allclose(out2.numpy(), ref2, rtol=1e-6, atol=1e-6)


def test_every_call_in_an_iteration_uses_the_same_center() -> None:
    """A defense's leave-one-out calls the rule k + 1 times in one iteration."""
    state: dict = {}
    call(rows(2, 8, 4), context(1, torch.zeros(4), state, 8), tau=0.3)
    w2 = torch.full((4,), 0.2)
    W = rows(3, 8, 4)
    first = call(W, context(2, w2, state, 8), tau=0.3)
    call(W[:5], context(2, w2, state, 8), tau=0.3)
    assert torch.equal(call(W, context(2, w2, state, 8), tau=0.3), first)
    # a gap in the iterations (the rule was not called) starts from zero again
    fresh = call(W, context(5, w2, {}, 8), tau=0.3)
    assert torch.equal(call(W, context(5, w2, state, 8), tau=0.3), fresh)


def test_large_tau_is_the_mean_and_small_tau_moves_little() -> None:
    W, p = rows(4, 10, 5), torch.zeros(5)
    out = call(W, context(1, p, {}, 10), tau=1e6)
    torch.testing.assert_close(out, W.mean(0), rtol=1e-6, atol=1e-6)
    out = call(W, context(1, p, {}, 10), tau=1e-3, iterations=3)
    assert float(torch.linalg.vector_norm(out - p)) <= 3e-3 + 1e-9


@pytest.mark.parametrize("L", [1, 3])
def test_far_rows_move_it_a_bounded_distance(L: int) -> None:
    """f < m/2 rows placed arbitrarily far: the output is within L·τ·f/m of what the benign
    rows alone give (hostile rows contributing nothing), whatever the distance."""
    m, f, tau = 11, 5, 0.5
    benign = rows(5, m - f, 8, 0.2) + 1.0
    p = torch.zeros(8)
    alone = call(torch.cat([benign, torch.full((f, 8), float("nan"))]),
                 context(1, p, {}, m), tau=tau, iterations=L)
    for scale in (1e3, 1e10, 1e38, -3.4e38):
        W = torch.cat([benign, torch.full((f, 8), scale)])
        out = call(W, context(1, p, {}, m), tau=tau, iterations=L)
        assert torch.isfinite(out).all()
        gap = float(torch.linalg.vector_norm(out.double() - alone.double()))
        assert gap <= L * tau * f / m + 1e-6, (scale, gap)


def test_hostile_rows_never_make_it_non_finite_and_are_reported() -> None:
    rng = np.random.default_rng(6)
    hostile = np.array([np.nan, np.inf, -np.inf, 1e38, -1e38, 3.4e38, -3.4e38], np.float32)
    for t in range(40):
        m = int(rng.integers(1, 9))
        X = rng.standard_normal((m, 4)).astype(np.float32)
        bad = rng.choice(m, size=int(rng.integers(0, m + 1)), replace=False)
        for i in bad:
            X[i] = rng.choice(hostile, 4) if t % 2 else rng.choice(hostile)
        ctx = context(1, torch.zeros(4), {}, m)
        out = call(torch.from_numpy(X), ctx, tau=float(10.0 ** rng.uniform(-3, 3)),
                   iterations=int(rng.integers(1, 4)))
        assert torch.isfinite(out).all(), (t, X)
        non_finite = ~np.isfinite(X).all(axis=1)
        if non_finite.any():
            assert ctx.removed is not None and ctx.removed.numpy().tolist() == non_finite.tolist()


def test_output_saturates_instead_of_overflowing() -> None:
    """Global models near the float32 maximum: center + clipped steps would overflow
    float32; the result saturates at ±3.4e38."""
    state: dict = {}
    W = torch.full((4, 3), 3.4e38)
    call(W, context(1, torch.full((3,), 0.4e38), state, 4), tau=1.0)
    out = call(W, context(2, torch.full((3,), 3.4e38), state, 4), tau=1.0)
    assert torch.isfinite(out).all() and float(out.max()) == float(torch.finfo(torch.float32).max)


def _toy() -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(500, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 1).long()
    return Dataset("toy-cclip", x[:400], y[:400], x[400:], y[400:], 2)


def test_same_seed_same_numbers_and_no_state_leaks_between_runs() -> None:
    ds = _toy()
    cfg = fedpoison.RunConfig(rule="cclip", rule_options={"tau": 0.05}, workers=10,
                              compromised=2, iterations=6, eval_every=2, attack="gaussian")
    a = fedpoison.run(cfg, dataset=ds)
    other = fedpoison.run(fedpoison.RunConfig(**{**cfg.to_dict(), "seed": 1}), dataset=ds)
    b = fedpoison.run(cfg, dataset=ds)  # after another run: nothing carried over
    assert a.curve == b.curve and a.loss_curve == b.loss_curve
    assert other.curve != a.curve
    assert a.diagnostics["cclip_clipped"]["n"] == 6


def test_state_holds_the_iteration_its_global_model_and_center() -> None:
    pipe = bind_pipeline("cclip", {"tau": 0.2})
    state: dict = {}
    p = torch.tensor([1.0, 2.0, 3.0])
    pipe(rows(7, 6, 3), 0, context(1, p, state, 6))
    assert state["iteration"] == 1 and torch.equal(state["previous"], p.double())
    assert torch.equal(state["center"], torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize(("option", "value"), [("tau", 0.0), ("iterations", 0)])
def test_bad_options_are_one_line_errors(option: str, value: object) -> None:
    with pytest.raises(ConfigError) as e:
        fedpoison.RunConfig(rule="cclip", rule_options={option: value}).resolve()
    assert "cclip" in str(e.value) and option in str(e.value) and "\n" not in str(e.value)
