"""Multi-Krum (Blanchard et al. 2017): selection against brute force, hostile rows, removal
reports, preconditions and its batched leave-one-out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedpoison
from fedpoison.aggregators import krum
from fedpoison.aggregators.multi_krum import (
    multi_krum,
    multi_krum_select,
    multi_krum_with_and_without,
)
from fedpoison.data.base import Dataset
from fedpoison.errors import ConfigError
from fedpoison.server import ServerContext, bind_rule, loop_with_and_without


def brute_force(X: np.ndarray, f: int, q: int) -> tuple[list[int], np.ndarray]:
    """Scores from direct float64 differences, the q best (ties: smaller index), their mean."""
    m = len(X)
    X64 = X.astype(np.float64)
    scores = []
    for i in range(m):
        dists = sorted(float(((X64[i] - X64[j]) ** 2).sum()) for j in range(m) if j != i)
        scores.append(sum(dists[: m - f - 2]))
    chosen = sorted(range(m), key=lambda i: (scores[i], i))[:q]
    return chosen, X64[chosen].mean(axis=0)


def rows(seed: int, m: int, d: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((m, d)).astype(np.float32))


@pytest.mark.parametrize(("seed", "m", "f", "q"), [(0, 7, 1, None), (1, 12, 3, None),
                                                   (2, 12, 3, 4), (3, 20, 4, 1), (4, 9, 2, 9)])
def test_selection_and_average_match_brute_force(seed: int, m: int, f: int, q: int | None
                                                  ) -> None:
    W = rows(seed, m, 6)
    chosen, ref = brute_force(W.numpy(), f, m - f if q is None else q)
    assert multi_krum_select(W, f, q).tolist() == chosen
    np.testing.assert_allclose(multi_krum(W, f, q).numpy(), ref, rtol=1e-6, atol=1e-7)


def test_ties_go_to_the_smaller_index() -> None:
    # rows 1, 2, 3 and 5 coincide (score 0 each); q = 2 takes rows 1 and 2
    W = torch.tensor([[5.0, 5], [0, 0], [0, 0], [0, 0], [5, 5], [0, 0]])
    assert multi_krum_select(W, 1, 2).tolist() == [1, 2]


def test_one_selected_is_krum_and_default_is_m_minus_f() -> None:
    W = rows(5, 15, 8)
    assert torch.equal(multi_krum(W, 3, 1), krum(W, 3))
    assert len(multi_krum_select(W, 3)) == 12


def test_far_hostile_rows_give_exactly_the_benign_mean() -> None:
    """f rows far away (finite or not) all score above every benign row: the default output
    is the mean of the m − f benign rows."""
    m, f = 14, 4
    benign = rows(6, m - f, 10)
    ref = benign.double().mean(0).float()
    for value in (1e6, 1e38, -3.4e38, float("nan"), float("inf")):
        W = torch.cat([benign[:3], torch.full((f, 10), value), benign[3:]])
        out = multi_krum(W, f)
        assert torch.isfinite(out).all(), value
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)


def test_hostile_rows_never_make_it_non_finite() -> None:
    rng = np.random.default_rng(7)
    hostile = np.array([np.nan, np.inf, -np.inf, 1e38, -1e38, 3.4e38, -3.4e38], np.float32)
    for t in range(40):
        f = int(rng.integers(0, 4))
        m = 2 * f + 3 + int(rng.integers(0, 4))
        X = rng.standard_normal((m, 5)).astype(np.float32)
        for i in rng.choice(m, size=int(rng.integers(0, f + 1)), replace=False):
            X[i] = rng.choice(hostile, 5) if t % 2 else rng.choice(hostile)
        out = multi_krum(torch.from_numpy(X), f)
        assert torch.isfinite(out).all(), (t, X)


def test_reports_the_rows_it_did_not_select() -> None:
    W = rows(8, 10, 4)
    W[[2, 7]] = 50.0
    ctx = ServerContext(1, W[0].clone(), {}, torch.Generator(), rows=10)
    bind_rule("multi-krum")(W, 2, ctx)
    assert ctx.removed is not None and ctx.removed.nonzero().flatten().tolist() == [2, 7]
    # a call on other rows (a defense's leave-one-out) reports nothing
    ctx = ServerContext(1, W[0].clone(), {}, torch.Generator(), rows=11)
    bind_rule("multi-krum")(W, 2, ctx)
    assert ctx.removed is None


def test_leave_one_out_equals_the_loop_with_hostile_rows() -> None:
    W = rows(9, 13, 7)
    W[4] = float("nan")
    W[9] = 1e38
    for q in (None, 3):
        A, B = multi_krum_with_and_without(W, 2, q)
        A_ref, B_ref = loop_with_and_without(lambda X, q=q: multi_krum(X, 2, q), W)
        assert torch.equal(A, A_ref)
        torch.testing.assert_close(B, B_ref, rtol=1e-6, atol=1e-7)
        assert torch.isfinite(B).all()


@pytest.mark.parametrize(("m", "f", "options", "words"), [
    (6, 2, {}, ["m > 2f + 2", "m=6", "f=2"]),
    (7, 1, {"selected": 8}, ["selected=8", "m=7"]),
])
def test_preconditions(m: int, f: int, options: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        bind_rule("multi-krum", options).check(m, f)
    for word in ["multi-krum", *words]:
        assert word in str(e.value)


def test_bad_option_is_one_line_error() -> None:
    with pytest.raises(ConfigError) as e:
        bind_rule("multi-krum", {"selected": 0})
    assert "multi-krum" in str(e.value) and "selected" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_run_reports_detection_rates() -> None:
    """In a run, the rows Multi-Krum leaves out become the detection metrics: compromised
    workers that send far models are all left out, and no benign worker is."""
    from fedpoison.registry import REGISTRY

    @fedpoison.register_attack("test-far-models", reference="test", knowledge=("full",))
    def far(ctx: object) -> torch.Tensor:
        return ctx.models_from(torch.full((ctx.c, ctx.d), 100.0))  # type: ignore[attr-defined]

    g = torch.Generator().manual_seed(0)
    x = torch.rand(500, 6, generator=g)
    y = (x[:, 0] > 0.5).long()
    ds = Dataset("toy-multi-krum", x[:400], y[:400], x[400:], y[400:], 2)
    try:
        r = fedpoison.run(fedpoison.RunConfig(dataset="mnist", rule="multi-krum", workers=10,
                                              compromised=2, iterations=3, eval_every=3,
                                              attack="test-far-models"), dataset=ds)
    finally:
        REGISTRY.remove("attack", "test-far-models")
    det = r.diagnostics["detection"]
    assert det["n"] == 3 and det["tp"] == 6 and det["fp"] == 0 and det["fn"] == 0
