"""Defenses ERR, LFR, Union (paper Section 5) and the batched leave-one-out aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from defense_helpers import server_data
from fedpoison import registry
from fedpoison.aggregators import get_aggregator
from fedpoison.aggregators import leave_one_out as loo
from fedpoison.data.base import Dataset
from fedpoison.data.partition import Partition
from fedpoison.defenses import DefenseContext, impacts
from fedpoison.defenses.rejection import most_harmful
from fedpoison.models.lr import LogisticRegression
from fedpoison.server import (
    ServerContext,
    ServerData,
    bind_pipeline,
    bind_rule,
    loop_with_and_without,
)
from fedpoison.tasks import Task
from test_fuzz_rules import FAMILIES, min_workers


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: on a shared 2-core machine each multi-threaded op costs ~8 ms of
    thread hand-off; one thread keeps the module fast. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ leave-one-out = loop

CASES = [  # (rule, k, f, beta)
    ("mean", 9, 2, None),
    ("mean", 2, 0, None),
    ("krum", 10, 2, None),
    ("krum", 13, 3, None),
    ("trimmed-mean", 10, 2, None),
    ("trimmed-mean", 10, 2, 0),
    ("trimmed-mean", 11, 2, 1),
    ("trimmed-mean", 11, 2, 4),  # the largest beta k - 1 allows
    ("median", 10, 2, None),  # k - 1 odd
    ("median", 11, 2, None),  # k - 1 even
    ("median", 2, 0, None),
    ("median", 3, 0, None),
    ("bulyan", 12, 2, None),
    ("bulyan", 8, 1, None),
]


def _bound(rule: str, beta: int | None = None):
    return bind_rule(rule, {"beta": beta} if beta is not None else {})


def with_and_without(rule: str, W: Tensor, f: int, beta: int | None = None):
    """The rule's batched leave-one-out (registered in the rule's own module)."""
    return _bound(rule, beta).with_and_without(W, f)


def leave_one_out_loop(rule: str, W: Tensor, f: int, beta: int | None = None) -> Tensor:
    """The reference: k plain calls of the rule."""
    bound = _bound(rule, beta)
    return loop_with_and_without(lambda X: bound(X, f), W)[1]


class _Defenses:
    """Registered defenses by name, called like the server calls them."""

    def __getitem__(self, name: str):
        return registry.get("defense", name).impl


DEFENSES = _Defenses()


def check_defense(defense: str, rule: str, k: int, f: int, beta: int | None = None) -> None:
    registry.get("defense", defense).check(
        bind_pipeline(rule, {"beta": beta} if beta is not None else {}), k, f)


@pytest.fixture(params=[True, False], ids=["numpy-sort", "torch-sort"])
def sort_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loo, "NUMPY_ON_CPU", request.param)


def _check_equal(rule: str, W: Tensor, f: int, beta: int | None) -> None:
    A, B = with_and_without(rule, W, f, beta)
    ref = leave_one_out_loop(rule, W, f, beta)
    full = leave_one_out_loop(rule, torch.cat([W, W[:1]]), f, beta)[-1]  # = rule(W)
    if rule == "mean":  # the rule sums in float32, leave-one-out in float64
        torch.testing.assert_close(B, ref, rtol=1e-6, atol=1e-6, equal_nan=True)
        torch.testing.assert_close(A, full, rtol=1e-6, atol=1e-6, equal_nan=True)
    else:
        torch.testing.assert_close(B, ref, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(A, full, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(("rule", "k", "f", "beta"), CASES)
def test_leave_one_out_equals_loop(sort_path: None, rule: str, k: int, f: int, beta: int | None):
    g = torch.Generator().manual_seed(k * 31 + f)
    W = torch.randn(k, 37, generator=g)
    _check_equal(rule, W, f, beta)


@pytest.mark.parametrize(("rule", "k", "f", "beta"), CASES)
def test_leave_one_out_ties(sort_path: None, rule: str, k: int, f: int, beta: int | None):
    """Small integers (every sum and distance exact) and duplicate rows: many exact ties."""
    g = torch.Generator().manual_seed(k + f)
    W = torch.randint(-2, 3, (k, 23), generator=g).float()
    W[k // 2] = W[0]
    if k > 4:
        W[-1] = W[1]
    _check_equal(rule, W, f, beta)


@pytest.mark.parametrize(("rule", "k", "f", "beta"), [c for c in CASES if c[1] >= 8])
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "huge"])
def test_leave_one_out_hostile_rows(
    sort_path: None, rule: str, k: int, f: int, beta: int | None, bad: str
):
    g = torch.Generator().manual_seed(k)
    W = torch.randn(k, 29, generator=g)
    value = {"nan": torch.nan, "inf": torch.inf, "-inf": -torch.inf, "huge": 1e30}[bad]
    W[3, ::2] = value  # one hostile row, partly normal
    W[5, 7] = value  # a second one, in one coordinate only
    _check_equal(rule, W, f, beta)


@pytest.mark.parametrize("family", ["far-tight", "mirrored", "duplicates", "exact-ties"])
@pytest.mark.parametrize("rule", ["krum", "bulyan"])
def test_leave_one_out_equals_loop_on_ill_conditioned_families(rule: str, family: str) -> None:
    """Batched Krum / Bulyan without each model pick what the rule picks on the k - 1
    models, where the Gram distances are far off (far tight clusters) or scores tie exactly
    (mirrored, duplicate rows, small integers)."""
    for t in range(12):
        rng = np.random.default_rng([21, t])
        f = int(rng.integers(0, 3))
        k = min_workers(rule, f) + 1 + int(rng.integers(0, 3))
        W = torch.from_numpy(FAMILIES[family](rng, k, f, int(rng.integers(1, 12))))
        _check_equal(rule, W, f, None)


def test_leave_one_out_mean_agrees_with_the_rule_when_float32_overflows() -> None:
    W = torch.full((3, 4), 2e38)
    W[:, 1] = torch.tensor([3e38, 3e38, -3e38])
    A, B = with_and_without("mean", W, 0)
    assert torch.isfinite(A).all() and torch.isfinite(B).all()
    assert torch.equal(A, get_aggregator("mean")(W, 0))
    _check_equal("mean", W, 0, None)


@pytest.mark.parametrize("rule", ["mean", "trimmed-mean", "median"])
def test_leave_one_out_column_chunks(monkeypatch: pytest.MonkeyPatch, rule: str) -> None:
    W = torch.randn(9, 200, generator=torch.Generator().manual_seed(3))
    whole = with_and_without(rule, W, 2)
    monkeypatch.setattr(loo, "CHUNK_BYTES", 1)  # 64-column chunks: 4 of them, one partial
    chunked = with_and_without(rule, W, 2)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    _check_equal(rule, W, 2, None)


def test_leave_one_out_no_cancellation() -> None:
    """Leaving out a 1e30 row gives the mean of the others, not 0 (no subtraction)."""
    W = torch.ones(6, 4)
    W[2] = 1e30
    B = with_and_without("mean", W, 1)[1]
    torch.testing.assert_close(B[2], torch.ones(4))
    B = with_and_without("trimmed-mean", torch.cat([W, W[2:3]]), 2, beta=1)[1]
    torch.testing.assert_close(B[2], torch.ones(4))


def test_leave_one_out_preconditions() -> None:
    W = torch.randn(7, 3)
    with pytest.raises(ValueError, match=r"krum.*m=6, f=2"):
        with_and_without("krum", W, 2)  # krum accepts 7 > 2f + 2 = 6 models, not 6
    with pytest.raises(ValueError, match="unknown rule"):
        with_and_without("no-such-rule", W, 1)
    with pytest.raises(ValueError, match="k >= 2"):
        with_and_without("mean", W[:1], 0)


@pytest.mark.parametrize("rule", sorted(registry.names("rule")))
def test_every_rule_leave_one_out_equals_its_loop(rule: str) -> None:
    """Any registered rule, with its default options: the batched leave-one-out (where the
    rule has one) equals k plain calls."""
    g = torch.Generator().manual_seed(5)
    W = torch.randn(15, 21, generator=g)
    bound = bind_rule(rule)
    try:
        bound.check(14, 2)
    except ValueError:
        pytest.skip(f"{rule} does not accept 14 models with f = 2")
    def fresh() -> ServerContext:
        """The same context for both sequences of calls (state and generator start anew);
        root data for rules that train on it (LR with 6 features, 3 classes: d = 21)."""
        return ServerContext(1, W[0].clone(), {}, torch.Generator().manual_seed(1),
                             server_data(d_in=6, classes=3))

    A, B = bound.with_and_without(W, 2, fresh())
    ctx = fresh()
    A_ref, B_ref = loop_with_and_without(lambda X: bound(X, 2, ctx), W)
    torch.testing.assert_close(A, A_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(B, B_ref, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------ defense fixtures


def _task(n: int = 200) -> Task:
    """Two Gaussian blobs in 2-D at x1 = -2 and x1 = +2 (class 0, class 1), LR with bias."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g) * 0.5
    x[:, 0] += torch.where(y == 1, 2.0, -2.0)
    ds = Dataset("blobs", x, y, x.clone(), y.clone(), 2)
    part = Partition.from_owner(torch.zeros(n, dtype=torch.int64), 1)
    return Task(ds, LogisticRegression(2, 2), part, lr=0.1, batch_size=8)


TASK = _task()
#: A good model: A = [[-1, 0], [1, 0]] (row-major), b = [0, 0].
W_STAR = torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def _evaluate(models: Tensor) -> tuple[Tensor, Tensor]:
    return TASK.evaluate_many(models, TASK.x_test, TASK.y_test)


def _ctx(W: Tensor, f: int, rule: str, beta: int | None = None, evaluate=_evaluate):
    server = ServerContext(1, W[0].clone(), {}, torch.Generator().manual_seed(0),
                           ServerData(TASK.x_test, TASK.y_test, evaluate))
    return DefenseContext(W=W, f=f, rule=bind_pipeline(rule, {"beta": beta} if beta is not None
                                                       else {}), server=server)


def _benign(k: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return W_STAR + 0.1 * torch.randn(k, W_STAR.numel(), generator=g)


# -------------------------------------------------------------------- counts and union

RULES = [("mean", 20, 4, None), ("krum", 20, 4, None), ("trimmed-mean", 20, 4, None),
         ("median", 20, 4, None), ("median", 19, 4, None), ("bulyan", 27, 4, None)]


@pytest.mark.parametrize(("rule", "k", "f", "beta"), RULES)
def test_err_lfr_drop_exactly_f_and_union_is_their_union(rule: str, k: int, f: int, beta):
    g = torch.Generator().manual_seed(k + f)
    W = _benign(k, 1) + torch.randn(k, 6, generator=g) * torch.rand(k, 1, generator=g) * 2
    ctx = _ctx(W, f, rule, beta)
    e, lo, u = DEFENSES["err"](ctx), DEFENSES["lfr"](ctx), DEFENSES["union"](ctx)
    for drop in (e, lo):
        assert drop.dtype == torch.int64
        assert drop.numel() == f == torch.unique(drop).numel()
    assert set(u.tolist()) == set(e.tolist()) | set(lo.tolist())
    assert u.tolist() == sorted(set(u.tolist()))
    assert f <= u.numel() <= 2 * f


def test_one_batched_evaluation_of_k_plus_1_models() -> None:
    calls: list[int] = []

    def counting(models: Tensor) -> tuple[Tensor, Tensor]:
        calls.append(models.shape[0])
        return _evaluate(models)

    DEFENSES["union"](_ctx(_benign(12, 2), 2, "trimmed-mean", evaluate=counting))
    assert calls == [13]


def test_f_zero_drops_nothing_and_evaluates_nothing() -> None:
    def never(models: Tensor) -> tuple[Tensor, Tensor]:
        raise AssertionError("evaluated")

    for name in ("err", "lfr", "union"):
        assert DEFENSES[name](_ctx(_benign(5, 3), 0, "mean", evaluate=never)).numel() == 0


def test_ties_go_to_the_smaller_index() -> None:
    assert most_harmful(torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0]), 2).tolist() == [1, 2]
    assert most_harmful(torch.tensor([torch.inf, 0.0, torch.inf, 5.0]), 2).tolist() == [0, 2]
    W = W_STAR.expand(10, -1).clone()  # identical models: every impact is 0
    for name in ("err", "lfr", "union"):
        assert DEFENSES[name](_ctx(W, 3, "mean")).tolist() == [0, 1, 2]


# ---------------------------------------------------------------- harmful models removed

# (rule, k, f, beta, M): the f harmful models (-M w*) ruin the global model or every B_i
# that keeps them all. Mean: A ∝ (k-f) - f M < 0 < (k-f) - (f-1) M ∝ B_harmful. Trimmed
# mean with beta = f - 1 keeps one harmful value per coordinate in A (A ∝ k-2f+1 - M < 0),
# none in B_harmful.
# Median with f = ceil(k/2) - 1 harmful (odd k) or k/2 (even k): removing a benign model
# moves the median onto a harmful value.
HARMFUL = [
    ("mean", 10, 2, None, 6.0),
    ("mean", 20, 4, None, 4.7),
    ("trimmed-mean", 10, 2, 1, 20.0),
    ("trimmed-mean", 20, 4, 3, 20.0),
    ("median", 7, 3, None, 10.0),
    ("median", 6, 3, None, 10.0),
]


@pytest.mark.parametrize(("rule", "k", "f", "beta", "M"), HARMFUL)
@pytest.mark.parametrize("defense", ["err", "lfr", "union"])
def test_obviously_harmful_models_are_removed(rule, k, f, beta, M, defense):
    W = _benign(k, k)
    harmful = torch.randperm(k, generator=torch.Generator().manual_seed(f))[:f].sort()[0]
    W[harmful] = -M * W_STAR + 0.01 * torch.randn(f, 6, generator=torch.Generator())
    ctx = _ctx(W, f, rule, beta)
    if defense == "union" and k - 2 * f < 1:  # median, k = 6, f = 3: nothing would be left
        with pytest.raises(ValueError, match="union: drops up to 6 of k=6"):
            DEFENSES[defense](ctx)
        return
    assert DEFENSES[defense](ctx).tolist() == harmful.tolist()


def test_lfr_sees_what_err_cannot() -> None:
    """Mildly harmful models (-w*) shrink the margin of the mean, A ∝ 6 w*, without changing
    a single validation prediction: every error impact is 0 (ERR falls back to the
    smallest indices) while the loss impact singles them out (LFR; Section 5 finds LFR >= ERR)."""
    W = _benign(10, 9)
    W[[5, 8]] = -1.0 * W_STAR
    ctx = _ctx(W, 2, "mean")
    error, _ = impacts(ctx)
    assert error.abs().max() == 0
    assert DEFENSES["err"](ctx).tolist() == [0, 1]
    assert DEFENSES["lfr"](ctx).tolist() == [5, 8]
    assert DEFENSES["union"](ctx).tolist() == [0, 1, 5, 8]


def test_impacts_sign_on_harmful_case() -> None:
    W = _benign(10, 4)
    W[[2, 7]] = -6.0 * W_STAR
    error, loss = impacts(_ctx(W, 2, "mean"))
    assert error[[2, 7]].min() > 0.9 and error.abs().sum() == error[[2, 7]].sum()
    assert loss[[2, 7]].min() > loss[[0, 1, 3, 4, 5, 6, 8, 9]].max()


# ------------------------------------------------------------------------ hostile rows


@pytest.mark.parametrize(("rule", "k", "f", "beta"), RULES)
@pytest.mark.parametrize("bad", [torch.nan, torch.inf, -torch.inf])
@pytest.mark.parametrize("defense", ["err", "lfr", "union"])
def test_non_finite_rows_are_dropped_first(rule, k, f, beta, bad, defense):
    W = _benign(k, 5)
    W[1, 0] = bad
    W[k - 2] = bad
    drop = DEFENSES[defense](_ctx(W, f, rule, beta)).tolist()
    assert {1, k - 2} <= set(drop)
    if defense != "union":
        assert len(drop) == f


def test_more_non_finite_rows_than_f() -> None:
    W = _benign(10, 6)
    W[[1, 4, 8]] = torch.nan
    assert DEFENSES["lfr"](_ctx(W, 2, "mean")).tolist() == [1, 4]


def test_huge_finite_row_dropped_under_mean() -> None:
    W = _benign(10, 7)
    W[6] = 1e30
    for name in ("err", "lfr"):
        assert DEFENSES[name](_ctx(W, 1, "mean")).tolist() == [6]


# ------------------------------------------------------------------------ preconditions


def test_check_defense() -> None:
    check_defense("union", "krum", 100, 20)  # 60 left > 2*20 + 2
    check_defense("union", "trimmed-mean", 100, 20, 20)  # 60 left > 2 * 20
    with pytest.raises(ValueError, match=r"union: drops up to 4 of k=10 .*krum"):
        check_defense("union", "krum", 10, 2)  # 6 left, krum needs > 6
    with pytest.raises(ValueError, match=r"err: drops up to 20 of k=100 .*bulyan"):
        check_defense("err", "bulyan", 100, 20)  # 80 left, bulyan needs >= 83
    with pytest.raises(ValueError, match=r"lfr: leave-one-out .*k-1=6.*krum"):
        check_defense("lfr", "krum", 7, 2)
    with pytest.raises(ValueError, match="unknown defense"):
        check_defense("roni", "mean", 10, 2)
    with pytest.raises(ValueError, match="union"):
        DEFENSES["union"](_ctx(_benign(10, 8), 2, "krum"))
