"""FoolsGold (Fung et al., RAID 2020): sybils down-weighted, weights against a plain loop,
history kept per worker id, hostile rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from defense_helpers import HOSTILE_CASES, context, rule, toy_run, with_hostile_rows
from fedpoison.config import RunConfig
from fedpoison.defenses.foolsgold import foolsgold_history, foolsgold_weights
from fedpoison.errors import ConfigError
from fedpoison.server import bind_rule


def reference(H: np.ndarray, kappa: float = 1.0) -> np.ndarray:
    """Algorithm 1 with explicit loops, float64."""
    n = len(H)
    norm = [math.sqrt(sum(v * v for v in h)) for h in H]
    cs = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i != j and norm[i] > 0 and norm[j] > 0:
                cs[i][j] = sum(a * b for a, b in zip(H[i], H[j], strict=True)) / (norm[i] * norm[j])
    v = [max(row) for row in cs]
    for i in range(n):
        for j in range(n):
            if i != j and v[i] < v[j]:
                cs[i][j] *= v[i] / v[j]
    alpha = [min(max(1 - max(row), 0.0), 1.0) for row in cs]
    top = max(alpha)
    if top == 0:
        return np.zeros(n)
    out = []
    for a in alpha:
        a = a / top
        a = 0.99 if a == 1 else a
        x = kappa * (math.log(a / (1 - a)) + 0.5) if a > 0 else 0.0
        out.append(min(max(x, 0.0), 1.0))
    return np.array(out)


@pytest.mark.parametrize("seed", range(6))
def test_weights_match_plain_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    H = rng.standard_normal((9, 7))
    H[3] = H[1] * 2 + 0.01 * rng.standard_normal(7)  # a near-duplicate pair
    if seed == 5:
        H[6] = 0.0  # a history of norm 0
    kappa = 1.0 if seed < 3 else 0.5
    got = foolsgold_weights(torch.from_numpy(H), kappa).numpy()
    np.testing.assert_allclose(got, reference(H, kappa), rtol=1e-9, atol=1e-12)


def test_identical_sybils_are_down_weighted() -> None:
    """c sybils sending the same update each iteration get weight 0; honest workers with
    diverse data keep weight (paper Section 4)."""
    g = torch.Generator().manual_seed(0)
    d, honest, c = 40, 10, 5
    previous = torch.zeros(d)
    state: dict = {}
    for t in range(1, 6):
        sybil = torch.randn(d, generator=g)
        W = torch.cat([sybil.expand(c, d), torch.randn(honest, d, generator=g)])
        ctx = context(previous, rows=c + honest, state=state, iteration=t)
        out = rule("foolsgold", W, c, ctx)
        last, previous = previous, out
    H = foolsgold_history(state)
    alpha = foolsgold_weights(H)
    assert bool((alpha[:c] == 0).all()) and bool((alpha[c:] > 0.5).all())
    # the step averages the weighted updates over all k workers (sybils count as zeros)
    step = (alpha @ (W - last).double()) / (c + honest)
    torch.testing.assert_close(out.double(), last.double() + step, rtol=1e-6, atol=1e-6)
    assert ctx.removed is not None and bool(ctx.removed[:c].all())
    assert not bool(ctx.removed[c:].any())


def test_history_is_kept_per_worker_id_and_step_is_weighted_mean() -> None:
    g = torch.Generator().manual_seed(1)
    d = 6
    previous = torch.randn(d, generator=g)
    state: dict = {}
    ids1, ids2 = torch.tensor([5, 2, 9]), torch.tensor([2, 7, 5])
    W1 = previous + torch.randn(3, d, generator=g)
    rule("foolsgold", W1, 0, context(previous, rows=3, state=state, workers=ids1))
    W2 = previous + torch.randn(3, d, generator=g)
    out = rule("foolsgold", W2, 0, context(previous, rows=3, state=state, workers=ids2,
                                           iteration=2))
    H = foolsgold_history(state)
    assert H.shape[0] == 10
    D1, D2 = (W1 - previous).double(), (W2 - previous).double()
    torch.testing.assert_close(H[2], D1[1] + D2[0])
    torch.testing.assert_close(H[5], D1[0] + D2[2])
    torch.testing.assert_close(H[7], D2[1])
    torch.testing.assert_close(H[9], D1[2])
    alpha = foolsgold_weights(H[ids2])
    torch.testing.assert_close(out.double(), previous.double() + (alpha @ D2) / 3,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kinds", HOSTILE_CASES)
def test_hostile_rows_finite_weight_zero_history_clean(kinds: list[str]) -> None:
    g = torch.Generator().manual_seed(2)
    d, k = 12, 10
    previous = torch.randn(d, generator=g)
    state: dict = {}
    for t in range(1, 4):
        W = with_hostile_rows(previous + torch.randn(k, d, generator=g), kinds,
                              np.random.default_rng(t))
        ctx = context(previous, rows=k, state=state, iteration=t)
        out = rule("foolsgold", W, len(kinds), ctx)
        assert torch.isfinite(out).all()
        finite = torch.isfinite(W).all(1)
        assert ctx.removed is not None and bool(ctx.removed[~finite].all())
        previous = out
    assert torch.isfinite(foolsgold_history(state)).all()


def test_history_updated_once_per_iteration_under_leave_one_out() -> None:
    """ERR/LFR call the rule k + 1 times per iteration with the server's context (the
    leave-one-out loop): the history gets each iteration once, from the call over all the
    received rows, so the next iteration aggregates as without the rejection defense."""
    g = torch.Generator().manual_seed(3)
    d, k = 8, 6
    previous = torch.zeros(d)
    W1, W2 = torch.randn(k, d, generator=g), torch.randn(k, d, generator=g)
    bound = bind_rule("foolsgold")
    looped: dict = {}
    A, _ = bound.with_and_without(W1, 1, context(previous, rows=k, state=looped))
    plain: dict = {}
    torch.testing.assert_close(A, bound(W1, 1, context(previous, rows=k, state=plain)))
    ctx2 = context(previous, rows=k, state=looped, iteration=2)
    want = bound(W2, 1, context(previous, rows=k, state=plain, iteration=2))
    torch.testing.assert_close(bound(W2, 1, ctx2), want)
    torch.testing.assert_close(foolsgold_history(looped), foolsgold_history(plain))
    torch.testing.assert_close(foolsgold_history(plain), (W1 + W2).double())


def test_leave_one_out_calls_see_their_own_workers_histories() -> None:
    """B[i] of the leave-one-out (what ERR/LFR compare) is FoolsGold on the other rows with
    *their* worker ids: each row is weighted by its own worker's history. (The rows used to
    be matched to ids 0..k-2, i.e. to other workers' histories.)"""
    g = torch.Generator().manual_seed(5)
    d, k = 8, 5
    previous = torch.zeros(d)
    ids = torch.tensor([3, 7, 8, 11, 20])
    W1, W2 = torch.randn(k, d, generator=g), torch.randn(k, d, generator=g)
    W1[:2] = W1[0]  # workers 3 and 7 alike in the first iteration: history matters
    bound = bind_rule("foolsgold")
    state: dict = {}
    bound(W1, 1, context(previous, rows=k, state=state, workers=ids))
    before = foolsgold_history(state).clone()  # the first iteration's updates, by id
    ctx = context(previous, rows=k, state=state, workers=ids, iteration=2)
    _, B = bound.with_and_without(W2, 1, ctx)
    for i in range(k):
        keep = torch.arange(k) != i
        snapshot = {"history": before.clone(), "pending": None}
        want = bound(W2[keep], 1, context(previous, rows=k, state=snapshot,
                                          workers=ids[keep], iteration=2))
        torch.testing.assert_close(B[i], want, rtol=0, atol=0)


def test_same_seed_same_numbers_and_no_state_leak() -> None:
    a = toy_run(rule="foolsgold", attack="label-flip")
    toy_run(rule="foolsgold", attack="krum", seed=3)  # another run in between
    b = toy_run(rule="foolsgold", attack="label-flip")
    assert a.curve == b.curve and a.diagnostics == b.diagnostics
    det = a.diagnostics["detection"]
    assert det["n"] == 12 and det["tp"] + det["fn"] == 12 * 4


def test_bad_option() -> None:
    with pytest.raises(ConfigError, match="kappa"):
        RunConfig(rule="foolsgold", rule_options={"kappa": 0}).resolve()
