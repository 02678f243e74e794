"""Aggregation rules (paper Section 2.2, Appendix A): hand-computed cases, plain-loop
references, invariances, preconditions and hostile rows."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpoison import registry
from fedpoison.aggregators import (
    bulyan,
    bulyan_select,
    check_aggregator,
    closest_to_median_mean_sorted,
    coordinate,
    get_aggregator,
    krum,
    krum_scores,
    krum_select,
    mean,
    median,
    pairwise_sq_distances,
    sort_workers,
    trimmed_mean,
)
from fedpoison.aggregators.bulyan import _exact_selection
from fedpoison.aggregators.krum import _ExactDistances

#: The paper's rules (registered in their own modules), by name.
PAPER_RULES = ("mean", "krum", "bulyan", "trimmed-mean", "median")
AGGREGATORS = {name: registry.get("rule", name).impl for name in PAPER_RULES}

FAST = settings(max_examples=30, deadline=None, derandomize=True)


def t32(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def rand_w(seed: int, m: int, d: int, scale: float = 1.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.standard_normal((m, d)) * scale).astype(np.float32))


@pytest.fixture(params=["numpy", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test on the NumPy CPU path and on the torch path that CUDA tensors take."""
    monkeypatch.setattr(coordinate, "NUMPY_ON_CPU", request.param == "numpy")
    yield request.param


# ---------------------------------------------------------------- plain-loop references


def ref_sq_dist(a: np.ndarray, b: np.ndarray) -> float:
    diff = a.astype(np.float64) - b.astype(np.float64)
    return float((diff * diff).sum())


def ref_krum_index(X: np.ndarray, f: int, candidates: list[int] | None = None) -> int:
    """Krum over ``candidates`` (all rows by default), neighbours max(1, n-f-2) capped."""
    cand = list(range(len(X))) if candidates is None else candidates
    n = len(cand)
    k = min(max(1, n - f - 2), n - 1)
    scores = []
    for i in cand:
        dists = sorted(ref_sq_dist(X[i], X[j]) for j in cand if j != i)
        scores.append(sum(dists[:k]))
    best = min(range(n), key=lambda t: (scores[t], t))
    return cand[best]


def ref_bulyan(X: np.ndarray, f: int, theta: int, gamma: int) -> np.ndarray:
    remaining = list(range(len(X)))
    chosen = []
    for _ in range(theta):
        pick = ref_krum_index(X, f, remaining)  # distances recomputed at every step
        chosen.append(pick)
        remaining.remove(pick)
    return np.array(
        [
            ref_closest_to_median_mean([float(X[i, c]) for i in chosen], gamma)
            for c in range(X.shape[1])
        ]
    )


def ref_closest_to_median_mean(vals: list[float], gamma: int) -> float:
    """Mean of the gamma values closest to the median; ties in distance -> lower value."""
    vals = sorted(vals)
    med = statistics.median(vals)
    order = sorted(range(len(vals)), key=lambda t: (abs(vals[t] - med), t))
    return sum(vals[t] for t in order[:gamma]) / gamma


def ref_trimmed_mean(X: np.ndarray, beta: int) -> np.ndarray:
    out = []
    for c in range(X.shape[1]):
        vals = sorted(float(v) for v in X[:, c])
        kept = vals[beta : len(vals) - beta]
        out.append(sum(kept) / len(kept))
    return np.array(out)


def ref_median(X: np.ndarray) -> np.ndarray:
    return np.array([statistics.median(float(v) for v in X[:, c]) for c in range(X.shape[1])])


# ---------------------------------------------------------------- hand-computed cases


def test_mean_hand() -> None:
    W = t32([[1, 2], [3, 4], [5, 9]])
    assert torch.equal(mean(W, 0), t32([[3, 5]])[0])


def test_median_odd_hand(backend: str) -> None:
    # columns sorted: (1, 2, 3) -> 2 and (-2, 4, 10) -> 4
    W = t32([[1, 10], [3, -2], [2, 4]])
    assert torch.equal(median(W, 0), t32([[2, 4]])[0])


def test_median_even_is_mean_of_two_middles(backend: str) -> None:
    # column 0 sorted (1, 2, 4, 100): lower middle 2, upper 4, median (2+4)/2 = 3
    # column 1 sorted (0, 10, 20, 30): median 15 (lower middle would be 10)
    W = t32([[100, 0], [2, 30], [4, 10], [1, 20]])
    assert torch.equal(median(W, 1), t32([[3, 15]])[0])


def test_trimmed_mean_hand(backend: str) -> None:
    # column 0 sorted (1, 2, 3, 4, 100); column 1 sorted (-50, 0, 0, 6, 6)
    W = t32([[4, 6], [100, 0], [1, -50], [3, 6], [2, 0]])
    # beta = 1: mean(2, 3, 4) = 3 and mean(0, 0, 6) = 2
    assert torch.equal(trimmed_mean(W, 1), t32([[3, 2]])[0])
    # beta = 2: the middle values 3 and 0
    assert torch.equal(trimmed_mean(W, 1, beta=2), t32([[3, 0]])[0])
    # beta defaults to f
    assert torch.equal(trimmed_mean(W, 2), t32([[3, 0]])[0])
    # beta = 0: the plain mean (110/5 = 22, -38/5 = -7.6)
    assert torch.allclose(trimmed_mean(W, 1, beta=0), t32([[22, -7.6]])[0])


def test_pairwise_sq_distances_hand() -> None:
    W = t32([[0, 0], [3, 4], [1, 1]])
    # |(0,0)-(3,4)|^2 = 25, |(0,0)-(1,1)|^2 = 2, |(3,4)-(1,1)|^2 = 4 + 9 = 13
    expected = torch.tensor([[0, 25, 2], [25, 0, 13], [2, 13, 0]], dtype=torch.float64)
    D2 = pairwise_sq_distances(W)
    assert D2.dtype == torch.float64
    assert torch.equal(D2, expected)


def test_krum_distances_are_squared() -> None:
    # m = 5, f = 1: m - f - 2 = 2 neighbours. Points on a line: 0, 1, 6, 10, 13.
    #   point  distances to the others   2 nearest   sum of squares   sum of distances
    #   0      1, 6, 10, 13              1, 6        1 + 36  = 37     7
    #   1      1, 5, 9, 12               1, 5        1 + 25  = 26     6   <- unsquared pick
    #   6      6, 5, 4, 7                4, 5        16 + 25 = 41     9
    #   10     10, 9, 4, 3               3, 4        9 + 16  = 25     7   <- Krum (squared)
    #   13     13, 12, 7, 3              3, 7        9 + 49  = 58     10
    W = t32([[0, 0], [1, 0], [6, 0], [10, 0], [13, 0]])
    assert krum_select(W, 1) == 3
    assert torch.equal(krum(W, 1), t32([[10, 0]])[0])
    scores = krum_scores(pairwise_sq_distances(W), 1)
    assert torch.equal(scores, torch.tensor([37, 26, 41, 25, 58], dtype=torch.float64))


def test_krum_uses_m_minus_f_minus_2_neighbours() -> None:
    # m = 6, f = 1. Points 0, 2, 3, 4, 7, 8; sums of the k smallest squared distances:
    #   point  sq. distances sorted       k=2 (m-f-3)  k=3 (m-f-2)  k=4 (m-f-1)  k=5 (m-f)
    #   0      4, 9, 16, 49, 64           13           29           78           142
    #   2      1, 4, 4, 25, 36            5            9  <-        34           70
    #   3      1, 1, 9, 16, 25            2  <-        11           27 <-        52
    #   4      1, 4, 9, 16, 16            5            14           30           46 <-
    #   7      1, 9, 16, 25, 49           10           26           51           100
    #   8      1, 16, 25, 36, 64          17           42           78           142
    W = t32([[0], [2], [3], [4], [7], [8]])
    assert krum_select(W, 1) == 1
    D2 = pairwise_sq_distances(W)
    assert torch.equal(
        krum_scores(D2, 1), torch.tensor([29, 9, 11, 14, 26, 42], dtype=torch.float64)
    )
    picks = {k: int(torch.argmin(krum_scores(D2, 1, neighbours=k))) for k in (2, 3, 4, 5)}
    assert picks == {2: 2, 3: 1, 4: 2, 5: 3}


def test_krum_ties_go_to_smallest_index() -> None:
    W = t32([[5, 5], [0, 0], [0, 0], [0, 0], [5, 5], [0, 0]])  # rows 1, 2, 3, 5 tie at 0
    assert krum_select(W, 1) == 1


def test_krum_prefers_tight_cluster_over_far_outliers() -> None:
    m, f = 12, 4
    rng = np.random.default_rng(3)
    benign = rng.normal(0.0, 0.01, size=(m - f, 6))
    outliers = np.full((f, 6), 50.0)  # identical outliers: zero distances among themselves
    W = torch.from_numpy(np.vstack([outliers, benign]).astype(np.float32))
    assert krum_select(W, f) >= f


# Bulyan, m = 7, f = 1: theta = m - 2f = 5, gamma = theta - 2f = 3. Rows (x, y):
BULYAN_W = [[0, 5], [1, -3], [3, 0], [4, 2], [6, 30], [20, 1], [100, -100]]
# Squared distances:
#        0      1      2      3      4      5      6
#   0    0     65     34     25    661    416  21025
#   1   65      0     13     34   1114    377  19210
#   2   34     13      0      5    909    290  19409
#   3   25     34      5      0    788    257  19620
#   4  661   1114    909    788      0   1037  25736
#   5  416    377    290    257   1037      0  16601
#   6 21025 19210  19409  19620  25736  16601      0
BULYAN_D2 = [
    [0, 65, 34, 25, 661, 416, 21025],
    [65, 0, 13, 34, 1114, 377, 19210],
    [34, 13, 0, 5, 909, 290, 19409],
    [25, 34, 5, 0, 788, 257, 19620],
    [661, 1114, 909, 788, 0, 1037, 25736],
    [416, 377, 290, 257, 1037, 0, 16601],
    [21025, 19210, 19409, 19620, 25736, 16601, 0],
]
# Repeated Krum, neighbours max(1, n - f - 2):
#   n=7, k=4: row 3: 5+25+34+257 = 321 (row 2: 342, row 1: 489, row 0: 540) -> pick 3
#   n=6, k=3: row 2: 13+34+290 = 337 (row 1: 455, row 0: 515)                -> pick 2
#   n=5, k=2: rows {0,1,4,5,6}: row 1: 65+377 = 442 (row 0: 65+416 = 481)    -> pick 1
#   n=4, k=1: rows {0,4,5,6}: row 0: 416, row 5: 416 (tie), row 4: 661        -> pick 0
#   n=3, k=1: rows {4,5,6}: row 4: 1037, row 5: 1037 (tie), row 6: 16601      -> pick 4
# Selected rows 3, 2, 1, 0, 4. Coordinate stage:
#   x sorted (0, 1, 3, 4, 6), median 3, distances 3, 2, 0, 1, 3 -> {3, 4, 1}: 8/3
#   y sorted (-3, 0, 2, 5, 30), median 2, distances 5, 2, 0, 3, 28 -> {2, 0, 5}: 7/3


def test_bulyan_hand(backend: str) -> None:
    W = t32(BULYAN_W)
    D2 = pairwise_sq_distances(W)
    assert torch.equal(D2, torch.tensor(BULYAN_D2, dtype=torch.float64))
    assert bulyan_select(D2, 1, 5) == [3, 2, 1, 0, 4]
    assert torch.allclose(bulyan(W, 1), t32([[8 / 3, 7 / 3]])[0], rtol=0, atol=1e-6)
    # theta = 3 (rows 3, 2, 1), gamma = 1: the medians x = 3, y = 0
    assert torch.equal(bulyan(W, 1, theta=3, gamma=1), t32([[3, 0]])[0])


def test_closest_to_median_mean_ties_hand(backend: str) -> None:
    # column (1, 1, 2, 3, 3.5), gamma 2: median 2; distances 1, 1, 0, 1, 1.5: keep 2, then
    #   the tie at distance 1 goes to the lower value 1 -> (2 + 1) / 2 = 1.5 (not (1 + 1) / 2)
    # column (0, 1, 2, 3, 4), gamma 2: median 2, keep 2 and 1 (tie 1 vs 3) -> 1.5
    S = t32([[1, 0], [1, 1], [2, 2], [3, 3], [3.5, 4]])
    assert torch.equal(closest_to_median_mean_sorted(S, 2), t32([[1.5, 1.5]])[0])
    # gamma 4: column 0 keeps 2, 1, 1, 3 -> 7/4; column 1 keeps 2, 1, 3, 0 (0 vs 4) -> 3/2
    assert torch.equal(closest_to_median_mean_sorted(S, 4), t32([[1.75, 1.5]])[0])
    # even count (0, 1, 3, 10): median 2, distances 2, 1, 1, 8; gamma 2 -> 2, gamma 3 -> 4/3
    E = t32([[0], [1], [3], [10]])
    assert torch.equal(closest_to_median_mean_sorted(E, 2), t32([[2]])[0])
    assert torch.allclose(closest_to_median_mean_sorted(E, 3), t32([[4 / 3]])[0])
    assert torch.equal(closest_to_median_mean_sorted(E, 4), t32([[3.5]])[0])


@FAST
@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=1, max_value=12),
    st.data(),
)
def test_closest_to_median_mean_matches_reference_with_ties(
    seed: int, n: int, data: st.DataObject
) -> None:
    gamma = data.draw(st.integers(min_value=1, max_value=n))
    X = torch.from_numpy(np.random.default_rng(seed).integers(-3, 4, (n, 8)).astype(np.float32))
    expected = [ref_closest_to_median_mean(X[:, c].tolist(), gamma) for c in range(8)]
    for numpy_on_cpu in (True, False):
        coordinate.NUMPY_ON_CPU = numpy_on_cpu
        try:
            got = closest_to_median_mean_sorted(sort_workers(X), gamma)
        finally:
            coordinate.NUMPY_ON_CPU = True
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


# ---------------------------------------------------------------- references on random data

shapes = st.tuples(
    st.integers(min_value=0, max_value=10**6),  # seed
    st.integers(min_value=0, max_value=3),  # f
    st.integers(min_value=0, max_value=5),  # extra workers beyond the rule's minimum
    st.integers(min_value=1, max_value=6),  # d
)


@FAST
@given(shapes)
def test_krum_matches_reference(case: tuple[int, int, int, int]) -> None:
    seed, f, extra, d = case
    m = 2 * f + 3 + extra
    W = rand_w(seed, m, d)
    assert krum_select(W, f) == ref_krum_index(W.numpy(), f)


@FAST
@given(shapes, st.integers(min_value=0, max_value=2), st.integers(min_value=0, max_value=2))
def test_bulyan_matches_reference(
    case: tuple[int, int, int, int], theta_cut: int, gamma_cut: int
) -> None:
    seed, f, extra, d = case
    m = 4 * f + 3 + extra
    theta = max(2 * f + 1, m - 2 * f - theta_cut)
    gamma = max(1, theta - 2 * f - gamma_cut)
    X = rand_w(seed, m, d)
    if seed % 2:  # small integers: exact ties in Krum scores and in the median windows
        X = torch.round(X * 2)
    expected = ref_bulyan(X.numpy(), f, theta, gamma)
    for numpy_on_cpu in (True, False):
        coordinate.NUMPY_ON_CPU = numpy_on_cpu
        try:
            got = bulyan(X, f, theta=theta, gamma=gamma)
        finally:
            coordinate.NUMPY_ON_CPU = True
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_bulyan_medians_even_theta_tie_free_window() -> None:
    # theta even (m = 8, f = 1 -> theta = 6, gamma = 4): the median is the mean of the two
    # middles; the reference picks the same window.
    for seed in range(20):
        X = rand_w(seed, 8, 5)
        np.testing.assert_allclose(
            bulyan(X, 1).numpy(), ref_bulyan(X.numpy(), 1, 6, 4), rtol=1e-6, atol=1e-6
        )


@FAST
@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=1, max_value=6),
    st.data(),
)
def test_coordinate_rules_match_reference(seed: int, m: int, d: int, data: st.DataObject) -> None:
    beta = data.draw(st.integers(min_value=0, max_value=(m - 1) // 2))
    X = rand_w(seed, m, d)
    if seed % 3 == 0:  # duplicated values and ties
        X = torch.round(X * 2) / 2
    for numpy_on_cpu in (True, False):
        coordinate.NUMPY_ON_CPU = numpy_on_cpu
        try:
            tm = trimmed_mean(X, 0, beta=beta)
            md = median(X, 0)
        finally:
            coordinate.NUMPY_ON_CPU = True
        assert tm.dtype == md.dtype == torch.float32
        np.testing.assert_allclose(tm.numpy(), ref_trimmed_mean(X.numpy(), beta), rtol=1e-6)
        np.testing.assert_allclose(md.numpy(), ref_median(X.numpy()), rtol=1e-6)


def test_trimmed_mean_beta_zero_is_mean(backend: str) -> None:
    for seed in range(5):
        X = rand_w(seed, 9, 50)
        torch.testing.assert_close(trimmed_mean(X, 3, beta=0), mean(X, 3))


def test_median_even_not_lower_middle_random(backend: str) -> None:
    X = rand_w(7, 10, 40)
    S = torch.sort(X, dim=0).values
    np.testing.assert_allclose(median(X, 0).numpy(), ((S[4] + S[5]) / 2).numpy(), rtol=1e-6)


# ---------------------------------------------------------------- invariances

RULES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    name: get_aggregator(name) for name in AGGREGATORS
}


def min_workers(name: str, f: int) -> int:
    """Fewest workers for which ``f`` hostile rows are within the rule's promise."""
    return {"krum": 2 * f + 3, "bulyan": 4 * f + 3}.get(name, 2 * f + 1)


@pytest.mark.parametrize("name", list(AGGREGATORS))
@FAST
@given(shapes, st.integers(min_value=0, max_value=2**32 - 1))
def test_permutation_invariance(name: str, case: tuple[int, int, int, int], pseed: int) -> None:
    """Invariant up to exact ties, which go to the smallest index. With one neighbour the
    closest pair always ties, so Krum gets m - f - 2 >= 2 here and Bulyan f >= 3 (its last
    selection steps use max(1, n - f - 2) = 1 neighbour when f <= 2: see
    test_bulyan_small_f_depends_on_row_order)."""
    seed, f, extra, d = case
    if name == "bulyan":
        f += 3
    m = min_workers(name, f) + extra + (1 if name == "krum" else 0)
    W = rand_w(seed, m, d)
    perm = torch.from_numpy(np.random.default_rng(pseed).permutation(m))
    rule = RULES[name]
    torch.testing.assert_close(rule(W[perm], f), rule(W, f), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(AGGREGATORS))
@FAST
@given(shapes, st.integers(min_value=0, max_value=2**32 - 1))
def test_translation_equivariance(name: str, case: tuple[int, int, int, int], vseed: int) -> None:
    seed, f, extra, d = case
    m = min_workers(name, f) + extra
    W = rand_w(seed, m, d)
    v = rand_w(vseed, 1, d, scale=10.0)[0]
    rule = RULES[name]
    torch.testing.assert_close(rule(W + v, f), rule(W, f) + v, rtol=0, atol=2e-5)


def test_bulyan_last_steps_use_at_least_one_neighbour() -> None:
    # m = 7, f = 1, theta = 5. Rows r0 (50,0), r1 (0,0), r2 (0,1), r3 (1,0), r4 (1,1),
    # r5 (10,0), r6 (11,0). Squared distances: r0 to r1..r6: 2500 2501 2401 2402 1600 1521;
    # r1-r2 1, r1-r3 1, r1-r4 2, r1-r5 100, r1-r6 121, r2-r3 2, r2-r4 1, r2-r5 101,
    # r2-r6 122, r3-r4 1, r3-r5 81, r3-r6 100, r4-r5 82, r4-r6 101, r5-r6 1.
    #   n=7, k=4: r3 1+1+2+81 = 85 (r4 86, r1 104)                        -> r3
    #   n=6, k=3: r4 1+2+82 = 85 (r1 103, r2 103)                          -> r4
    #   n=5, k=2: r1 1+100 = 101, r5 1+100 = 101 (tie), r2 102             -> r1
    #   n=4, k=1: r5 1, r6 1 (tie), r2 101                                 -> r5
    #   n=3, k=max(1, 3-1-2)=1: r2 122, r6 122 (tie), r0 1521               -> r2
    # With n - f - 2 = 0 neighbours every score would be 0 and r0 (50, 0) would be taken.
    W = t32([[50, 0], [0, 0], [0, 1], [1, 0], [1, 1], [10, 0], [11, 0]])
    assert bulyan_select(pairwise_sq_distances(W), 1, 5) == [3, 4, 1, 5, 2]
    # x: (0, 0, 1, 1, 10), median 1 -> {1, 1, 0}: 2/3; y: (0, 0, 0, 1, 1) -> 0
    assert torch.allclose(bulyan(W, 1), t32([[2 / 3, 0]])[0], atol=1e-7)


def test_bulyan_small_f_depends_on_row_order() -> None:
    # The hand case above: the last two selections are ties (416 and 1037) broken by index.
    # Swapping rows 4 and 5 makes row 5 (20, 1) the pick of the last step instead of row 4.
    W = t32(BULYAN_W)
    swapped = W[[0, 1, 2, 3, 5, 4, 6]]
    assert bulyan_select(pairwise_sq_distances(swapped), 1, 5) == [3, 2, 1, 0, 4]
    # x: (0, 1, 3, 4, 20) -> {3, 4, 1}: 8/3; y: (-3, 0, 1, 2, 5) -> median 1, {1, 0, 2}: 1
    assert torch.allclose(bulyan(swapped, 1), t32([[8 / 3, 1]])[0], atol=1e-6)


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_contract_dtype_shape_purity(name: str) -> None:
    W = rand_w(0, 11, 7)
    before = W.clone()
    out = RULES[name](W, 2)
    assert out.shape == (7,) and out.dtype == torch.float32 and out.device == W.device
    assert torch.equal(W, before)
    first = out.clone()
    out.add_(1.0)  # the output never aliases the input
    assert torch.equal(W, before)
    assert torch.equal(RULES[name](W, 2), first)  # deterministic


def test_sort_workers_maps_nan_to_inf(backend: str) -> None:
    nan, inf = float("nan"), float("inf")
    W = t32([[3, nan], [inf, 1], [1, -inf], [nan, inf]])
    assert torch.equal(sort_workers(W), t32([[1, -inf], [3, 1], [inf, inf], [inf, inf]]))


def test_pairwise_non_finite_rows_are_infinitely_far() -> None:
    W = t32([[0, 0], [float("nan"), 1], [float("inf"), float("-inf")], [1e38, -1e38], [1, 1]])
    D2 = pairwise_sq_distances(W)
    assert not torch.isnan(D2).any()
    assert torch.equal(D2.diagonal(), torch.zeros(5, dtype=torch.float64))
    off = ~torch.eye(5, dtype=torch.bool)
    assert torch.isinf(D2[1][off[1]]).all() and torch.isinf(D2[:, 2][off[:, 2]]).all()
    assert torch.isfinite(D2[3, [0, 3, 4]]).all()  # 1e38 squares overflow float32, not float64
    assert D2[0, 3].item() == 2 * float(np.float32(1e38)) ** 2
    assert D2[0, 4].item() == 2.0


# ---------------------------------------------------------------- preconditions

BAD_CASES = [
    # (name, m, f, options, words that must appear in the message besides name, m and f)
    ("mean", 0, 0, {}, []),
    ("mean", 3, -1, {}, []),
    ("median", 0, 1, {}, []),
    ("median", 4, -2, {}, []),
    ("krum", 4, 1, {}, []),
    ("krum", 2, 0, {}, []),
    ("krum", 8, 3, {}, []),
    ("krum", 5, -1, {}, []),
    ("bulyan", 6, 1, {}, []),
    ("bulyan", 10, 2, {}, []),
    ("bulyan", 7, 1, {"theta": 6}, ["theta=6"]),
    ("bulyan", 7, 1, {"theta": 2}, ["theta=2"]),
    ("bulyan", 7, 1, {"gamma": 4}, ["gamma=4"]),
    ("bulyan", 7, 1, {"theta": 4, "gamma": 3}, ["gamma=3"]),
    ("bulyan", 7, 1, {"gamma": 0}, ["gamma=0"]),
    ("bulyan", 2, -1, {}, []),
    ("trimmed-mean", 4, 2, {}, ["beta=2"]),
    ("trimmed-mean", 5, 1, {"beta": 3}, ["beta=3"]),
    ("trimmed-mean", 5, 1, {"beta": -1}, ["beta=-1"]),
    ("trimmed-mean", 0, 0, {}, []),
    ("trimmed-mean", 2, 1, {"beta": 1}, []),
]


@pytest.mark.parametrize(("name", "m", "f", "options", "words"), BAD_CASES)
def test_preconditions_raise(
    name: str, m: int, f: int, options: dict[str, int], words: list[str]
) -> None:
    W = torch.zeros((m, 3), dtype=torch.float32)
    direct = AGGREGATORS[name]
    with pytest.raises(ValueError) as err:
        direct(W, f, **options)
    for word in [name, f"m={m}", f"f={f}", *words]:
        assert word in str(err.value), (word, str(err.value))
    spec = registry.get("rule", name)
    in_range = True
    for key, value in options.items():
        try:
            spec.option(key).check(value, spec.label)
        except ValueError:
            in_range = False
    with pytest.raises(ValueError) as err:
        check_aggregator(name, m, f, **options)
    msg = str(err.value)
    # An option outside its declared range is refused when the rule is bound, naming the
    # rule and the option; everything else by the rule's precondition on m and f.
    expected = [name, *words, f"m={m}", f"f={f}"] if in_range else [name, *options]
    for word in expected:
        assert word in msg, (word, msg)
    if not any(v < 0 for v in options.values()):
        with pytest.raises(ValueError, match=name):
            get_aggregator(name, **options)(W, f)


@pytest.mark.parametrize(
    ("name", "m", "f", "options"),
    [
        ("mean", 1, 0, {}),
        ("median", 1, 5, {}),
        ("krum", 5, 1, {}),
        ("krum", 3, 0, {}),
        ("bulyan", 7, 1, {}),
        ("bulyan", 3, 0, {}),
        ("bulyan", 100, 20, {"theta": 60, "gamma": 20}),
        ("trimmed-mean", 3, 1, {}),
        ("trimmed-mean", 100, 20, {"beta": 49}),
        ("trimmed-mean", 1, 0, {}),
    ],
)
def test_valid_edges_accepted(name: str, m: int, f: int, options: dict[str, int]) -> None:
    check_aggregator(name, m, f, **options)
    out = get_aggregator(name, **options)(rand_w(m, m, 4), f)
    assert out.shape == (4,) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_bad_input_matrix(name: str) -> None:
    rule = AGGREGATORS[name]
    with pytest.raises(ValueError, match=name):
        rule(torch.zeros(12), 1)  # 1-D
    with pytest.raises(ValueError, match=name):
        rule(torch.zeros((12, 3), dtype=torch.float64), 1)  # not float32
    with pytest.raises(ValueError, match=name):
        rule(torch.zeros((12, 3)), 1.5)  # type: ignore[arg-type]


def test_registry() -> None:
    assert set(PAPER_RULES) <= set(registry.names("rule"))
    with pytest.raises(ValueError) as err:
        get_aggregator("trimmed_mean")
    assert "did you mean 'trimmed-mean'" in str(err.value)
    for name in AGGREGATORS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="unknown rule 'no-such-rule'"):
        check_aggregator("no-such-rule", 10, 1)
    with pytest.raises(ValueError, match="has no option 'beta'"):
        get_aggregator("median", beta=1)
    with pytest.raises(ValueError, match="has no option 'gama'"):
        check_aggregator("bulyan", 11, 2, gama=1)
    with pytest.raises(ValueError, match="integer"):
        get_aggregator("trimmed-mean", beta=1.5)
    with pytest.raises(ValueError, match="beta"):
        get_aggregator("trimmed-mean", beta=-1)
    X = rand_w(1, 11, 30)
    tm3 = get_aggregator("trimmed-mean", beta=3)
    torch.testing.assert_close(tm3(X, 1), trimmed_mean(X, 1, beta=3))
    assert not torch.allclose(tm3(X, 1), trimmed_mean(X, 1))
    torch.testing.assert_close(get_aggregator("trimmed-mean", beta=None)(X, 2), trimmed_mean(X, 2))
    b = get_aggregator("bulyan", theta=5, gamma=1)
    torch.testing.assert_close(b(X, 2), bulyan(X, 2, theta=5, gamma=1))
    assert repr(b) == "bulyan(theta=5, gamma=1)"
    check_aggregator("trimmed-mean", 10, 1, beta=np.int64(4))


# ---------------------------------------------------------------- hostile rows

NAN, INF = float("nan"), float("inf")
HOSTILE_VALUES = [NAN, INF, -INF, 1e38, -1e38, 3.4e38, -3.4e38]


def hostile_rows(kind: int, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Kinds 0..6: a whole row of one hostile value; 7: a per-entry mixture of them;
    8: a per-entry mixture of hostile and ordinary values (at least one hostile entry);
    9, 10: all +1e38 / all -1e38 (identical hostile rows)."""
    if kind < len(HOSTILE_VALUES):
        return np.full((n, d), HOSTILE_VALUES[kind], dtype=np.float32)
    if kind == 7:
        return rng.choice(np.array(HOSTILE_VALUES, dtype=np.float32), size=(n, d))
    if kind == 8:
        mix = rng.choice(np.array(HOSTILE_VALUES, dtype=np.float32), size=(n, d))
        ordinary = rng.standard_normal((n, d)).astype(np.float32)
        keep_ordinary = rng.random((n, d)) < 0.5
        keep_ordinary[:, 0] = False
        return np.where(keep_ordinary, ordinary, mix).astype(np.float32)
    return np.full((n, d), 1e38 if kind == 9 else -1e38, dtype=np.float32)


@pytest.mark.parametrize("name", ["trimmed-mean", "median", "krum", "bulyan"])
@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=1, max_value=8),
    st.lists(st.integers(min_value=0, max_value=10), min_size=4, max_size=4),
    st.booleans(),
)
def test_hostile_rows_give_finite_output(
    name: str, seed: int, f: int, extra: int, d: int, kinds: list[int], torch_path: bool
) -> None:
    rng = np.random.default_rng(seed)
    m = min_workers(name, f) + extra
    n_bad = int(rng.integers(0, f + 1))
    benign = rng.standard_normal((m - n_bad, d)).astype(np.float32)
    bad = np.vstack(
        [hostile_rows(kinds[i % 4], 1, d, rng) for i in range(n_bad)] or [np.zeros((0, d))]
    ).astype(np.float32)
    X = np.vstack([benign, bad])
    perm = rng.permutation(m)
    W = torch.from_numpy(X[perm])
    coordinate.NUMPY_ON_CPU = not torch_path
    try:
        out = RULES[name](W, f).numpy()
    finally:
        coordinate.NUMPY_ON_CPU = True
    assert np.isfinite(out).all(), (name, m, f, W)
    if name == "krum":  # Krum returns one of the benign rows
        assert any(np.array_equal(out, row) for row in benign)
    elif name != "bulyan" or 8 not in kinds[:n_bad]:
        # Every hostile value is dropped or lies between benign ones, so the output is inside
        # the benign range per coordinate. (Bulyan can keep an ordinary value of a selected
        # hostile row that is slightly outside the benign range: kind 8 is excluded there.)
        lo, hi = benign.min(axis=0), benign.max(axis=0)
        assert (out >= lo - 1e-6).all() and (out <= hi + 1e-6).all()


@pytest.mark.parametrize("name", ["trimmed-mean", "median", "bulyan"])
def test_far_finite_hostile_rows_stay_in_benign_range(name: str) -> None:
    # Hostile rows that are large but ordinary floats (1e6 scale), f of them, m minimal.
    for seed in range(10):
        rng = np.random.default_rng(seed)
        f = 3
        m = min_workers(name, f)
        benign = rng.standard_normal((m - f, 20)).astype(np.float32)
        bad = (rng.standard_normal((f, 20)) * 1e6).astype(np.float32)
        W = torch.from_numpy(np.vstack([bad, benign]))
        out = RULES[name](W, f).numpy()
        assert (out >= benign.min(axis=0) - 1e-6).all()
        assert (out <= benign.max(axis=0) + 1e-6).all()


@pytest.mark.parametrize("f", [2, 3, 4])
def test_bulyan_selection_with_hostile_rows(f: int, backend: str) -> None:
    m = 4 * f + 3
    rng = np.random.default_rng(1)
    benign = rng.standard_normal((m - f, 10)).astype(np.float32)
    # f identical rows of 1e38: zero distances among themselves, so in the last steps (few
    # neighbours) one of them is selected; stage 2 must then drop its values.
    W = torch.from_numpy(np.vstack([np.full((f, 10), 1e38, dtype=np.float32), benign]))
    chosen = bulyan_select(pairwise_sq_distances(W), f, m - 2 * f)
    assert any(i < f for i in chosen)
    out = bulyan(W, f).numpy()
    assert (out >= benign.min(axis=0)).all() and (out <= benign.max(axis=0)).all()
    # rows with NaN or +-Inf are infinitely far: never selected
    W[:f, 0] = torch.tensor([NAN, INF, -INF, NAN])[:f]
    chosen = bulyan_select(pairwise_sq_distances(W), f, m - 2 * f)
    assert all(i >= f for i in chosen)
    assert torch.isfinite(bulyan(W, f)).all()


def test_trimmed_mean_keeps_huge_benign_values_without_overflow(backend: str) -> None:
    # Every kept value is ~3e38: a float32 sum would overflow, the float64 sum does not.
    W = torch.full((9, 4), 3.0e38)
    W[0] = -INF
    W[1] = NAN
    out = trimmed_mean(W, 2)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full((4,), 3.0e38))
    assert torch.isfinite(median(W[:8], 2)).all()


def test_pairwise_distances_nonnegative_symmetric_for_close_large_rows() -> None:
    # Rows far from the origin and close to each other: the Gram trick cancels ~1e8 against
    # ~1e8 to get ~1e-6; rounding must not produce negative distances or asymmetry.
    rng = np.random.default_rng(0)
    base = rng.standard_normal(2000) * 100.0
    X = base + rng.standard_normal((40, 2000)) * 1e-5
    W = torch.from_numpy(np.vstack([X, X[:5]]).astype(np.float32))  # with exact duplicates
    D2 = pairwise_sq_distances(W)
    assert (D2 >= 0).all()
    assert torch.equal(D2, D2.T)
    exact = ((W.double()[:, None] - W.double()[None]) ** 2).sum(-1)
    torch.testing.assert_close(D2, exact, rtol=0, atol=1e-6 * exact.max().item())
    # Rows far from the centre that differ by one ulp in one coordinate: the Gram trick's
    # rounding (~1e-6 here) exceeds the true distance (~1e-8); clamped, never negative.
    small = rng.standard_normal((7, 3000)).astype(np.float32) * 0.01
    far = np.tile((rng.standard_normal(3000) * 1e3).astype(np.float32), (6, 1))
    for i in range(6):
        far[i, i] = np.nextafter(far[i, i], np.float32(np.inf))
    D2 = pairwise_sq_distances(torch.from_numpy(np.vstack([small, far])))
    assert (D2 >= 0).all()
    assert torch.equal(D2, D2.T)


# ---------------------------------------------------------------- ill-conditioned inputs


def far_tight_example(seed: int, m: int, d: int, flips: int) -> np.ndarray:
    """``m`` rows within one float32 ulp per coordinate of a point ~1e3 per coordinate from
    the origin; the ``flips`` rows of median norm are mirrored through the origin, so the
    Gram matrix is centred ~2e3 per coordinate away from the tight cluster."""
    rng = np.random.default_rng([11, seed])
    base = (rng.standard_normal(d) * 1e3).astype(np.float32)
    steps = rng.integers(-1, 2, (m, d)).astype(np.float32)
    X = (base + steps * np.spacing(np.abs(base))).astype(np.float32)
    order = np.argsort(np.linalg.norm(X.astype(np.float64), axis=1), kind="stable")
    lo = (m - 1) // 2 - (flips - 1) // 2
    X[order[lo : lo + flips]] *= -1
    return X


def ref_scores_on(X: np.ndarray, alive: list[int], k: int) -> dict[int, float]:
    """Float64 reference Krum scores (direct differences) of the rows in ``alive``."""
    D = ((X.astype(np.float64)[:, None] - X.astype(np.float64)[None]) ** 2).sum(-1)
    return {
        i: float(np.sort(np.array([D[i, j] for j in alive if j != i]))[:k].sum()) for i in alive
    }


def test_krum_selects_the_reference_row_on_a_far_tight_cluster() -> None:
    # m = 5, f = 0, d = 10: the Gram distances are off by up to ~30% here; Krum used to pick
    # a row whose exact score is 24% above the minimum.
    X = far_tight_example(2164, 5, 10, 1)
    W = torch.from_numpy(X)
    exact = ((X.astype(np.float64)[:, None] - X.astype(np.float64)[None]) ** 2).sum(-1)
    gram = pairwise_sq_distances(W).numpy()
    off = exact > 0
    assert np.max(np.abs(gram[off] - exact[off]) / exact[off]) > 0.1  # the shortcut's error
    scores = ref_scores_on(X, list(range(5)), 3)
    assert krum_select(W, 0) == min(scores, key=lambda i: (scores[i], i))


def test_bulyan_walk_is_the_reference_walk_on_a_far_tight_cluster() -> None:
    # m = 7, f = 1, d = 10: Bulyan's first step used to take a row 20% above the minimum.
    m, f = 7, 1
    X = far_tight_example(1046, m, 10, 2)
    W = torch.from_numpy(X)
    walk = _exact_selection(_ExactDistances(W), np.arange(m), f, m - 2 * f).tolist()
    alive = list(range(m))
    for pick in walk:
        n = len(alive)
        scores = ref_scores_on(X, alive, min(max(1, n - f - 2), n - 1))
        assert pick == min(scores, key=lambda i: (scores[i], i))
        alive.remove(pick)
    chosen = torch.tensor(walk)
    expected = closest_to_median_mean_sorted(sort_workers(W[chosen]), m - 4 * f)
    assert torch.equal(bulyan(W, f), expected)


def test_mean_does_not_overflow_when_the_exact_mean_is_finite() -> None:
    W = torch.full((2, 3), 2e38)
    W[:, 1] = torch.tensor([3.4e38, -3.4e38])
    W[:, 2] = torch.tensor([1.0, 2.0])
    out = mean(W, 0)
    assert torch.isfinite(out).all()
    assert out.tolist() == [torch.tensor(2e38).item(), 0.0, 1.5]
    # ordinary columns keep the float32 average bit for bit
    R = rand_w(0, 9, 50)
    R[:, 7] = 3e38
    got = mean(R, 0)
    keep = torch.arange(50) != 7
    assert torch.equal(got[keep], R.mean(dim=0)[keep])
    assert got[7].item() == torch.tensor(3e38).item()
    # a genuinely infinite mean stays infinite, NaN stays NaN
    assert mean(t32([[INF, 1.0], [1.0, NAN]]), 0).isinf()[0]
    assert mean(t32([[INF, 1.0], [1.0, NAN]]), 0).isnan()[1]
