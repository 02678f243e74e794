"""Bucketing (Karimireddy, He, Jaggi, ICLR 2022): buckets against an explicit
shuffle-and-average, the rows and Byzantine count the rule sees, seeding, hostile rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedpoison
from fedpoison.aggregators.bucketing import bucketing_output
from fedpoison.data.base import Dataset
from fedpoison.errors import ConfigError
from fedpoison.server import ServerContext, bind_pipeline


def context(seed: int, rows: int) -> ServerContext:
    return ServerContext(1, torch.zeros(1), {}, torch.Generator().manual_seed(seed), rows=rows)


def bucket(W: torch.Tensor, s: int, seed: int) -> torch.Tensor:
    pipe = bind_pipeline("mean", {}, [("bucketing", {"s": s})])
    return pipe.preaggs[0](W, 0, context(seed, W.shape[0]))


def explicit(W: torch.Tensor, s: int, seed: int) -> np.ndarray:
    """Shuffle with the same generator, cut into consecutive groups of s, average each."""
    perm = torch.randperm(W.shape[0], generator=torch.Generator().manual_seed(seed)).tolist()
    X = W.numpy().astype(np.float64)
    return np.array([X[perm[k : k + s]].mean(axis=0) for k in range(0, len(perm), s)])


@pytest.mark.parametrize(("m", "s"), [(10, 2), (11, 2), (10, 3), (7, 7), (5, 9), (6, 1)])
def test_buckets_equal_an_explicit_shuffle_and_average(m: int, s: int) -> None:
    W = torch.randn(m, 4, generator=torch.Generator().manual_seed(m * 10 + s))
    out = bucket(W, s, seed=3)
    assert out.shape == (-(-m // s), 4) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), explicit(W, s, 3), rtol=1e-6, atol=1e-7)


def test_the_rule_sees_ceil_m_over_s_rows_and_f_unchanged() -> None:
    assert bucketing_output(100, 20, 2) == (50, 20)
    assert bucketing_output(101, 20, 2) == (51, 20)
    assert bucketing_output(10, 8, 5) == (2, 2)  # never more Byzantine buckets than buckets
    fedpoison.RunConfig(rule="krum", preaggregators=["bucketing:s=2"]).resolve()
    with pytest.raises(ConfigError) as e:  # 34 buckets, f = 20: Krum needs 34 > 42
        fedpoison.RunConfig(rule="krum", preaggregators=["bucketing:s=3"]).resolve()
    assert "m=34, f=20" in str(e.value) and "after bucketing" in str(e.value)
    with pytest.raises(ConfigError) as e:
        fedpoison.RunConfig(rule="median", preaggregators=["bucketing:s=0"]).resolve()
    assert "bucketing" in str(e.value) and "\n" not in str(e.value)


def test_each_call_draws_a_new_permutation_from_the_seeded_generator() -> None:
    W = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    pipe = bind_pipeline("mean", {}, [("bucketing", {"s": 3})])
    ctx = context(5, 12)
    first, second = pipe.preaggs[0](W, 0, ctx), pipe.preaggs[0](W, 0, ctx)
    assert not torch.equal(first, second)
    assert torch.equal(first, bucket(W, 3, seed=5))


def test_hostile_rows_contaminate_at_most_f_buckets() -> None:
    rng = np.random.default_rng(1)
    for t in range(30):
        W = torch.from_numpy(rng.standard_normal((20, 5)).astype(np.float32))
        f = int(rng.integers(0, 5))
        values = [float("nan"), float("inf"), -float("inf"), 1e38, -3.4e38]
        for i in rng.choice(20, size=f, replace=False):
            W[i] = values[int(rng.integers(0, 5))]
        out = bucket(W, 2, seed=t)
        assert int((~torch.isfinite(out).all(1)).sum()) <= f
        if not (~torch.isfinite(W)).any():  # ±1e38 and -3.4e38 rows: finite means
            assert torch.isfinite(out).all()
        # a robust rule after it stays finite (10 buckets, at most 4 hostile)
        pipe = bind_pipeline("median", {}, [("bucketing", {"s": 2})])
        assert torch.isfinite(pipe(W, f, context(t, 20))).all()


def test_runs_seeded_and_reproducible() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(500, 6, generator=g)
    y = (x[:, 0] > 0.5).long()
    ds = Dataset("toy-bucketing", x[:400], y[:400], x[400:], y[400:], 2)
    cfg = fedpoison.RunConfig(rule="median", preaggregators=["bucketing:s=2"], workers=12,
                              compromised=2, iterations=5, eval_every=1, lr=0.5)
    a, b = fedpoison.run(cfg, dataset=ds), fedpoison.run(cfg, dataset=ds)
    c = fedpoison.run(fedpoison.RunConfig(**{**cfg.to_dict(), "seed": 3}), dataset=ds)
    assert a.loss_curve == b.loss_curve and a.loss_curve != c.loss_curve


def loo_reference(W: torch.Tensor, s: int, seed: int, rule: str, f: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain loop: one shuffle; without row i, i leaves its bucket (an emptied bucket goes)."""
    perm = torch.randperm(W.shape[0], generator=torch.Generator().manual_seed(seed)).tolist()
    groups = [perm[k : k + s] for k in range(0, len(perm), s)]
    X = W.to(torch.float64)
    agg = bind_pipeline(rule, {}, []).rule

    def means(gs: list[list[int]]) -> torch.Tensor:
        return torch.stack([X[g].mean(dim=0) for g in gs if g]).to(torch.float32)

    full = agg(means(groups), f)
    without = [agg(means([[r for r in g if r != i] for g in groups]), f)
               for i in range(W.shape[0])]
    return full, torch.stack(without)


@pytest.mark.parametrize(("m", "s", "rule"), [(10, 2, "mean"), (11, 2, "median"),
                                              (10, 3, "trimmed-mean"), (7, 1, "median"),
                                              (9, 4, "mean")])
def test_leave_one_out_keeps_the_shuffle_and_drops_the_row_from_its_bucket(
        m: int, s: int, rule: str) -> None:
    W = torch.randn(m, 6, generator=torch.Generator().manual_seed(m + s))
    W[1] = float("inf")  # a hostile row: its partners' mean without it stays exact
    W[2, 3] = 1e38
    pipe = bind_pipeline(rule, {}, [("bucketing", {"s": s})])
    A, B = pipe.with_and_without(W, 1, context(4, m))
    refA, refB = loo_reference(W, s, 4, rule, 1)
    torch.testing.assert_close(A, refA, rtol=1e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(B, refB, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert torch.isfinite(B[1]).all()  # without the hostile row, no bucket holds an Inf


def test_leave_one_out_draws_one_permutation_and_fresh_one_per_call() -> None:
    m = 12
    W = torch.randn(m, 3, generator=torch.Generator().manual_seed(1))
    for option, sizes in (("same", [m]), ("fresh", [m - 1] * m + [m])):
        pipe = bind_pipeline("median", {}, [("bucketing", {"s": 2, "leave_one_out": option})])
        ctx = context(9, m)
        pipe.with_and_without(W, 1, ctx)
        g = torch.Generator().manual_seed(9)
        for n in sizes:
            torch.randperm(n, generator=g)
        assert torch.equal(ctx.generator.get_state(), g.get_state()), option


def test_fresh_leave_one_out_runs_the_pipeline_once_per_left_out_row() -> None:
    from fedpoison.server import loop_with_and_without

    W = torch.randn(10, 4, generator=torch.Generator().manual_seed(2))
    pipe = bind_pipeline("median", {}, [("bucketing", {"s": 2, "leave_one_out": "fresh"})])
    A, B = pipe.with_and_without(W, 1, context(3, 10))
    ctx = context(3, 10)
    refA, refB = loop_with_and_without(lambda X: pipe(X, 1, ctx), W)
    assert torch.equal(A, refA) and torch.equal(B, refB)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_median_with_rows_replaced_is_the_median_of_each_replaced_matrix(
        n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedpoison.aggregators import leave_one_out
    from fedpoison.aggregators.coordinate import median, median_with_rows_replaced

    monkeypatch.setattr(leave_one_out, "CHUNK_BYTES", 8 * 64 * 3)  # several column chunks
    g = torch.Generator().manual_seed(n)
    W = torch.randint(-3, 4, (n, 300), generator=g).to(torch.float32)  # many ties
    W[0, :7] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e38, -1e38, 0.0, 2.5])
    k = 3 * n
    rows = torch.randint(0, n, (k,), generator=g)
    R = torch.randint(-4, 5, (k, 300), generator=g).to(torch.float32)
    R[0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e38])
    B = median_with_rows_replaced(W, rows, R, 0)
    for i in range(k):
        X = W.clone()
        X[rows[i]] = R[i]
        assert torch.equal(B[i], median(X, 0)), i
