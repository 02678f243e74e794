"""The trimmed-mean / median attack does what Sections 3.3, 3.4 and Appendix B say."""

from __future__ import annotations

import pytest
import torch

from attack_helpers import craft, make_context
from fedpoison import registry
from fedpoison.aggregators import median, trimmed_mean
from fedpoison.attacks import AttackContext

M, C, D = 30, 6, 400
ESTIMATORS = ["mean", "rule"]


def models(seed: int, m: int = M, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w_re = 0.3 * torch.randn(d, generator=g)  # both signs of w_max / w_min occur
    grad = torch.randn(d, generator=g)
    W = w_re - 0.02 * grad + 0.1 * torch.randn(m, d, generator=g)
    return w_re, W


def context(w_re: torch.Tensor, W: torch.Tensor, rule: str = "trimmed-mean", c: int = C, *,
            knowledge: str = "full", f: int | None = None, beta: int | None = None,
            seed: int = 1, benign: torch.Tensor | None = None, **options: object
            ) -> AttackContext:
    return make_context(w_re, W, rule=rule, c=c, knowledge=knowledge, f=f, beta=beta,
                        seed=seed, benign=benign, **options)


def aggregate(rule: str, W: torch.Tensor, f: int, beta: int | None = None) -> torch.Tensor:
    return trimmed_mean(W, f, beta) if rule == "trimmed-mean" else median(W, f)


def direction(estimator: str, rule: str, W: torch.Tensor, w_re: torch.Tensor, f: int,
              beta: int | None = None) -> torch.Tensor:
    """s: sign of the before-attack change, w = mean of all models or the assumed rule."""
    w = W.double().mean(0) if estimator == "mean" else aggregate(rule, W, f, beta).double()
    return torch.sign(w - w_re.double())


def expected_interval(benign: torch.Tensor, s: torch.Tensor, b: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Section 3.3's four cases, written out coordinate by coordinate (slow, independent)."""
    lo = torch.empty(benign.shape[1])
    hi = torch.empty(benign.shape[1])
    for j in range(benign.shape[1]):
        w_max = float(benign[:, j].max())
        w_min = float(benign[:, j].min())
        if s[j] == -1:
            lo[j], hi[j] = (w_max, b * w_max) if w_max > 0 else (w_max, w_max / b)
        elif w_min > 0:
            lo[j], hi[j] = w_min / b, w_min
        else:
            lo[j], hi[j] = b * w_min, w_min
    return lo, hi


def test_every_case_of_the_interval() -> None:
    # Coordinates: (s=−1, w_max>0), (s=−1, w_max≤0), (s=+1, w_min>0), (s=+1, w_min≤0).
    m, c = 10, 2
    g = torch.Generator().manual_seed(0)
    base = torch.tensor([1.0, -2.0, 1.0, -2.0])
    W = base + torch.rand(m, 4, generator=g)  # values in [1, 2] or [−2, −1]
    w_re = torch.tensor([5.0, 5.0, -5.0, -5.0])  # the aggregate lies below / above w_Re
    for rule in ("trimmed-mean", "median"):
        X = craft(rule, context(w_re, W, rule, c, f=c, b=3.0))
        B = W[c:]
        w_max, w_min = B.amax(0), B.amin(0)
        assert bool((X[:, 0] >= w_max[0]).all() and (X[:, 0] <= 3 * w_max[0]).all())
        assert bool((X[:, 1] >= w_max[1]).all() and (X[:, 1] <= w_max[1] / 3).all())
        assert bool((X[:, 2] >= w_min[2] / 3).all() and (X[:, 2] <= w_min[2]).all())
        assert bool((X[:, 3] >= 3 * w_min[3]).all() and (X[:, 3] <= w_min[3]).all())
        # the draws spread over the interval (not stuck at an endpoint)
        assert bool((X[:, 0] > w_max[0]).all() and (X[:, 3] < w_min[3]).all())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rule", ["trimmed-mean", "median"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_crafted_values_lie_in_documented_intervals(seed: int, rule: str, estimator: str
                                                    ) -> None:
    w_re, W = models(seed)
    X = craft(rule, context(w_re, W, rule, direction=estimator))
    s = direction(estimator, rule, W, w_re, C)
    lo, hi = expected_interval(W[C:], s, 2.0)
    assert bool(((lo <= X) & (hi >= X)).all())
    assert X.shape == (C, D) and X.dtype == torch.float32
    # all four cases occur in this data
    w_max, w_min = W[C:].amax(0), W[C:].amin(0)
    up, down = s == -1, s != -1
    for case in (up & (w_max > 0), up & (w_max <= 0), down & (w_min > 0), down & (w_min <= 0)):
        assert int(case.sum()) > 0
    # each compromised worker gets its own value per coordinate
    assert bool((X[0] != X[1]).all())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("rule", "beta"),
                         [("trimmed-mean", None), ("trimmed-mean", C + 3), ("median", None)])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_aggregate_moves_against_s(seed: int, rule: str, beta: int | None, estimator: str
                                   ) -> None:
    w_re, W = models(seed)
    X = craft(rule, context(w_re, W, rule, beta=beta, direction=estimator))
    w = aggregate(rule, W, C, beta).double()
    w_after = aggregate(rule, torch.cat([X, W[C:]]), C, beta).double()
    s = direction(estimator, rule, W, w_re, C, beta)
    assert float(s @ (w - w_after)) > 0
    # β ≥ c (and median): no coordinate moves along s
    assert bool((s * (w_after - w) <= 0).all())


def test_direction_estimators_mean_and_rule() -> None:
    # One coordinate where trimmed mean (β = 2) and the mean rise above w_Re but the median
    # falls below: "rule" distinguishes the median attack, "mean" does not.
    col = torch.tensor([0.0, 0, 0, 0, 0, 0, 10, 10, 10, 10])
    W = col.unsqueeze(1) + 0.001 * torch.arange(10.0).unsqueeze(1)
    w_re = torch.tensor([1.0])
    for rule in ("trimmed-mean", "median"):
        for estimator in ("mean", "authors"):  # the authors' group code: the mean
            X = craft(rule, context(w_re, W, rule, 2, f=2, direction=estimator))
            assert bool((W[2:].min() >= X).all())  # mean rises: s = +1 -> below w_min
    tm = craft("trimmed-mean", context(w_re, W, "trimmed-mean", 2, f=2,
                                                direction="rule"))
    md = craft("median", context(w_re, W, "median", 2, f=2, direction="rule"))
    assert bool((W[2:].min() >= tm).all())  # trimmed mean rises: s = +1 -> below w_min
    assert bool((md >= W[2:].max()).all())  # median falls: s = −1 -> above w_max
    assert torch.equal(md, craft("median", context(w_re, W, "median", 2, f=2)))  # default


def test_zero_change_is_treated_as_plus_one() -> None:
    w_re, W = models(0)
    W[:, :4] = w_re[:4]  # unchanged parameters: s_j = 0 -> the w_min side
    X = craft("trimmed-mean", context(w_re, W, zero_sign="zero"))
    assert bool((X[:, :4] <= w_re[:4]).all())


# ---------------------------------------------------------------- partial knowledge


@pytest.mark.parametrize("rule", ["trimmed-mean", "median"])
def test_partial_never_reads_benign_rows(rule: str) -> None:
    w_re, W = models(1)
    none = craft(rule, context(w_re, W, rule, knowledge="partial"))
    nan = craft(rule, context(w_re, W, rule, knowledge="partial",
                                      benign=torch.full((M - C, D), torch.nan)))
    assert torch.equal(none, nan) and bool(torch.isfinite(none).all())


def test_partial_intervals_use_compromised_mean_and_std() -> None:
    w_re, W = models(2)
    X = craft("trimmed-mean", context(w_re, W, knowledge="partial"))
    Cm = W[:C].double()
    mu, sd = Cm.mean(0), Cm.std(0)  # sample standard deviation
    s = torch.sign(mu - w_re.double())
    lo = torch.where(s == -1, mu + 3 * sd, mu - 4 * sd).float()
    hi = torch.where(s == -1, mu + 4 * sd, mu - 3 * sd).float()
    tol = 1e-6
    assert bool(((lo - tol <= X) & (hi + tol >= X)).all())
    assert int((s == -1).sum()) > 0 and int((s == 1).sum()) > 0


# ---------------------------------------------------------------- deviation goal


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rule", ["trimmed-mean", "median"])
def test_deviation_picks_the_side_with_larger_deviation(seed: int, rule: str) -> None:
    w_re, W = models(seed)
    X = craft(rule, context(w_re, W, rule, goal="deviation"))
    B = W[C:]
    w_max, w_min = B.amax(0), B.amin(0)
    up = (w_max <= X).all(0)
    down = (w_min >= X).all(0)
    assert bool((up ^ down).all())  # every coordinate on exactly one side
    # With β ≥ c the aggregate depends only on the side: any values beyond the range do.
    w = aggregate(rule, W, C).double()
    dev_up = (aggregate(rule, torch.cat([(w_max + 1).repeat(C, 1), B]), C).double() - w).abs()
    dev_dn = (aggregate(rule, torch.cat([(w_min - 1).repeat(C, 1), B]), C).double() - w).abs()
    assert torch.equal(up, dev_up > dev_dn)
    assert 0 < int(up.sum()) < D  # both sides are chosen somewhere
    got = (aggregate(rule, torch.cat([X, B]), C).double() - w).abs()
    torch.testing.assert_close(got, torch.maximum(dev_up, dev_dn))


def test_deviation_with_beta_below_c_uses_exact_aggregates() -> None:
    # β = 1 < c = 3: some crafted values are kept, so the exact draws matter.
    c, beta = 3, 1
    w_re, W = models(5, m=12, d=300)
    X = craft("trimmed-mean",
        context(w_re, W, c=c, f=c, beta=beta, goal="deviation", seed=3))
    B = W[c:]
    w = trimmed_mean(W, c, beta).double()
    U = torch.rand((c, 300), generator=torch.Generator().manual_seed(3))
    w_max, w_min = B.amax(0), B.amin(0)
    up = torch.clamp(w_max + U * (torch.where(w_max > 0, 2 * w_max, w_max / 2) - w_max),
                     min=w_max, max=torch.where(w_max > 0, 2 * w_max, w_max / 2))
    lo_dn = torch.where(w_min > 0, w_min / 2, 2 * w_min)
    dn = torch.clamp(lo_dn + U * (w_min - lo_dn), min=lo_dn, max=w_min)
    dev_up = (trimmed_mean(torch.cat([up, B]), c, beta).double() - w).abs()
    dev_dn = (trimmed_mean(torch.cat([dn, B]), c, beta).double() - w).abs()
    assert torch.equal(X, torch.where(dev_up > dev_dn, up, dn))


def test_deviation_partial_raises() -> None:
    w_re, W = models(0)
    with pytest.raises(ValueError, match="deviation"):
        craft("trimmed-mean", context(w_re, W, knowledge="partial", goal="deviation"))


# ---------------------------------------------------------------- seeds, checks


@pytest.mark.parametrize("knowledge", ["full", "partial"])
@pytest.mark.parametrize("goal", ["directed", "deviation"])
def test_same_seed_same_models(knowledge: str, goal: str) -> None:
    if knowledge == "partial" and goal == "deviation":
        return
    w_re, W = models(3)
    a = craft("median", context(w_re, W, "median", knowledge=knowledge, goal=goal))
    b = craft("median", context(w_re, W, "median", knowledge=knowledge, goal=goal))
    c = craft("median", context(w_re, W, "median", knowledge=knowledge, goal=goal,
                                        seed=2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("b", [1.0, 0.5, float("inf")])
def test_bad_b_raises(b: float) -> None:
    with pytest.raises(ValueError, match="option b"):
        registry.get("attack", "trimmed-mean").resolve_options({"b": b})
