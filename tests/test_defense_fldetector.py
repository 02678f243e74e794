"""FLDetector (Zhang et al., KDD 2022): L-BFGS product, 1-D k-means and gap statistics,
detection of an inconsistent worker and its removal for the rest of the run, hostile rows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from defense_helpers import HOSTILE, context, defense, toy_run
from fedpoison.config import RunConfig
from fedpoison.defenses.fldetector import gap_clusters, kmeans_1d, lbfgs_hvp, two_means_upper
from fedpoison.errors import ConfigError


def test_lbfgs_product_equals_recursive_bfgs() -> None:
    """The compact form equals m BFGS updates of B₀ = σI applied in order."""
    g = torch.Generator().manual_seed(0)
    d, m = 9, 4
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    A = A @ A.T + torch.eye(d, dtype=torch.float64)
    S = torch.randn(m, d, generator=g, dtype=torch.float64)
    Y = S @ A.T + 0.05 * torch.randn(m, d, generator=g, dtype=torch.float64)
    v = torch.randn(d, generator=g, dtype=torch.float64)
    sigma = (Y[-1] @ S[-1]) / (S[-1] @ S[-1])
    B = sigma * torch.eye(d, dtype=torch.float64)
    for s, y in zip(S, Y, strict=True):
        Bs = B @ s
        B = B - torch.outer(Bs, Bs) / (s @ Bs) + torch.outer(y, y) / (y @ s)
    torch.testing.assert_close(lbfgs_hvp(S, Y, v), B @ v, rtol=1e-10, atol=1e-10)
    # one exact pair of a quadratic: the secant condition B s = y
    torch.testing.assert_close(lbfgs_hvp(S[:1], (S @ A.T)[:1], S[0]), A @ S[0])
    # a degenerate system gives no prediction instead of NaN
    assert torch.equal(lbfgs_hvp(torch.zeros(2, d, dtype=torch.float64),
                                 torch.zeros(2, d, dtype=torch.float64), v), torch.zeros(d,
                                                                                    dtype=torch.float64))


def test_kmeans_1d_is_optimal() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((3, 8))
    got = kmeans_1d(torch.from_numpy(x), 4).numpy()
    for b in range(3):
        s = np.sort(x[b])
        for k in range(1, 5):
            best = min(sum(((p - p.mean()) ** 2).sum() for p in np.split(s, cuts))
                       for cuts in itertools.combinations(range(1, 8), k - 1))
            assert got[b, k - 1] == pytest.approx(best, abs=1e-12)


def test_gap_statistics_and_two_means() -> None:
    gen = torch.Generator().manual_seed(1)
    g = torch.Generator().manual_seed(2)
    uniform = torch.rand(100, generator=g, dtype=torch.float64)
    assert gap_clusters(uniform, gen) == 1
    two = torch.cat([0.01 * torch.rand(80, generator=g), 0.5 + 0.01 * torch.rand(20, generator=g)])
    assert gap_clusters(two.double(), gen) > 1
    upper = two_means_upper(two)
    assert torch.equal(torch.nonzero(upper).reshape(-1), torch.arange(80, 100))
    assert gap_clusters(torch.ones(10), gen) == 1
    assert not bool(two_means_upper(torch.ones(5)).any())


def simulate(T: int, *, bad: dict[int, str], k: int = 10, d: int = 20, switch: int | None = None,
             seed: int = 0, median: bool = False, **options: int) -> tuple[list[list[int]], dict]:
    """Workers on a quadratic, the server averaging (or taking the coordinate-wise median of)
    what FLDetector keeps. Benign workers
    send one SGD step (gradient + fixed bias + small noise); ``bad`` workers send a constant
    large update (``"constant"``) or a hostile value. After ``switch`` they behave."""
    g = torch.Generator().manual_seed(seed)
    a = 0.5 + torch.rand(d, generator=g)
    target = torch.randn(d, generator=g)
    bias = 0.05 * torch.randn(k, d, generator=g)
    w = torch.zeros(d)
    state: dict = {}
    drops = []
    for t in range(1, T + 1):
        grads = a * (w - target) + bias + 0.002 * torch.randn(k, d, generator=g)
        W = w - 0.3 * grads
        for i, kind in bad.items():
            if switch is None or t < switch:
                W[i] = w + 2.0 if kind == "constant" else HOSTILE[kind]
        ctx = context(w, rows=k, state=state, iteration=t, seed=seed)
        drop = defense("fldetector", W, len(bad), ctx, **options)
        drops.append(drop.tolist())
        keep = torch.ones(k, dtype=torch.bool)
        keep[drop] = False
        kept = W[keep].double()
        w = (kept.nanmedian(dim=0).values if median else kept.mean(0)).float()
    return drops, state


OPTIONS = {"warmup": 3, "window": 4, "history": 5}


def test_removes_a_constant_large_update_within_its_window() -> None:
    drops, state = simulate(20, bad={6: "constant"}, **OPTIONS)
    first = next(t for t, d in enumerate(drops, start=1) if d)
    # predictions from iteration warmup + 1 (a pair needs two iterations), a full window
    assert first <= OPTIONS["warmup"] + 2 + OPTIONS["window"]
    assert all(d == [6] for d in drops[first - 1:])
    assert state["detected"]


def test_removal_lasts_for_the_rest_of_the_run() -> None:
    """A detected worker that turns honest is still dropped; nobody benign is flagged."""
    drops, _ = simulate(25, bad={2: "constant", 7: "constant"}, switch=12, **OPTIONS)
    first = next(t for t, d in enumerate(drops, start=1) if d)
    assert first < 12 and all(d == [2, 7] for d in drops[first - 1:])


def test_no_detection_without_an_attack() -> None:
    drops, state = simulate(25, bad={}, **OPTIONS)
    assert not any(drops) and not state.get("detected", False)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_rows_never_crash_and_nonfinite_ones_are_detected(kind: str) -> None:
    """A NaN or ±Inf row gets the largest normalised distance; a constant ±1e38 model is
    consistent (its pseudo-gradient moves with the global model, to float64 rounding) and
    need not be detected, but nothing breaks and no benign worker is flagged."""
    drops, _ = simulate(20, bad={1: kind, 4: kind}, median=True, **OPTIONS)
    assert all(set(d) <= {1, 4} for d in drops)
    if kind in ("nan", "inf", "-inf"):
        assert [1, 4] in drops


def test_keeps_what_the_rule_needs() -> None:
    """Dropping every detected worker would leave krum too few models: the highest scores go
    first, as many as the rule allows."""
    k, d = 8, 5
    state = {"removed": torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool),
             "score_at": torch.tensor([0.4, 0.1, 0.3, 0.2, 0, 0, 0, 0], dtype=torch.float64),
             "detected": True}
    W = torch.randn(k, d, generator=torch.Generator().manual_seed(3))
    ctx = context(torch.zeros(d), rows=k, state=state)
    # krum with f = 1 needs m > 2f + 2 = 4 models: at most 3 of the 4 detected rows go
    assert defense("fldetector", W, 1, ctx, rule_name="krum").tolist() == [0, 2, 3]
    assert defense("fldetector", W, 1, ctx).tolist() == [0, 1, 2, 3]


def test_same_seed_same_numbers_no_leak_and_detection_reported() -> None:
    cfg = dict(rule="median", defense="fldetector", attack="gaussian",
               defense_options={"warmup": 2, "window": 3})
    a = toy_run(**cfg)
    toy_run(**{**cfg, "seed": 4})
    b = toy_run(**cfg)
    assert a.curve == b.curve and a.diagnostics == b.diagnostics
    det = a.diagnostics["detection"]
    assert det["n"] == 12 and det["tp"] + det["fn"] == 12 * 4


def test_options() -> None:
    for key, value in (("window", 0), ("history", 0), ("warmup", -1)):
        with pytest.raises(ConfigError, match=key):
            RunConfig(rule="mean", defense="fldetector", defense_options={key: value}).resolve()
