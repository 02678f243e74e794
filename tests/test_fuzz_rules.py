"""Every aggregation rule against a plain float64 reference on ill-conditioned families.

The references are written from the paper's definitions (Section 2.2; Bulyan: Appendix A),
in float64, with no shortcut: Krum by direct differences ``||w_i - w_j||^2`` and sorting,
Bulyan by repeated Krum and the closest-to-median mean, trimmed mean and median by
sorting each coordinate, mean as a float64 average. A rule registered in the package must
add its reference here (``test_every_rule_has_a_reference`` fails until it does).

Families (seeded, ``N_PER_FAMILY`` matrices each, per rule): far tight clusters (rows a
few float32 ulps apart, ~1e3 from the origin, with the other rows as far away), mirrored
clusters (exact mirror images: exactly equal scores), duplicate rows, exact ties (small
integers), mixed scales, huge finite values (up to the float32 maximum), and hostile rows
(up to ``f`` rows of NaN / +-Inf / +-1e38 / +-3.4e38, whole or mixed into ordinary rows)
on top of any of those.

Selections are compared through the reference's own scores: the row a rule picks at each
step must have the smallest reference score, and be the first such row (ties -> smallest
index). Values are compared to within float32 rounding of the float64 reference.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable

import numpy as np
import pytest
import torch

from fedpoison import registry
from fedpoison.aggregators import check_aggregator, coordinate, krum_select
from fedpoison.aggregators import leave_one_out as loo
from fedpoison.aggregators.bulyan import _exact_selection, check_bulyan
from fedpoison.aggregators.krum import _ExactDistances
from fedpoison.attacks import AttackContext
from fedpoison.defenses import DefenseContext
from fedpoison.server import ServerContext, ServerData, bind_pipeline, bind_rule

#: Every rule the package registers (a user's rule registered in a test is not the
#: package's and is removed after it).
AGGREGATORS = {s.name: s.impl for s in registry.specs("rule")
               if s.module.startswith("fedpoison.")}

#: Random matrices per family and rule.
N_PER_FAMILY = 40

#: Random matrices (each through every rule, leave-one-out, defense, or attack) in the
#: no-warning tests.
N_NEVER_WARN = 15

F32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: on a shared machine each multi-threaded torch op can cost milliseconds
    of thread hand-off; one thread keeps the module fast. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ float64 references


def ref_distances(X: np.ndarray) -> np.ndarray:
    """``||x_i - x_j||^2`` in float64 by direct differences; a row with a non-finite entry
    is infinitely far from every other row (the rules' convention for hostile rows)."""
    X64 = X.astype(np.float64)
    bad = ~np.isfinite(X64).all(axis=1)
    X64[bad] = 0.0
    D = ((X64[:, None, :] - X64[None, :, :]) ** 2).sum(axis=-1)
    D[bad, :] = np.inf
    D[:, bad] = np.inf
    np.fill_diagonal(D, 0.0)
    return D


def ref_krum_scores(D: np.ndarray, alive: list[int], k: int) -> dict[int, float]:
    """Krum score of each alive row: its ``k`` smallest distances to the other alive rows."""
    scores = {}
    for i in alive:
        others = np.sort(np.array([D[i, j] for j in alive if j != i]))
        scores[i] = float(others[:k].sum())
    return scores


def check_pick(pick: int, scores: dict[int, float], what: str) -> None:
    """``pick`` has the smallest reference score and is the first row that has it."""
    best = min(scores.values())
    first = min(i for i, s in scores.items() if s == best)
    assert scores[pick] == best, (
        f"{what}: picked row {pick} with reference score {scores[pick]!r}, "
        f"{(scores[pick] - best) / best if best else np.inf:.3g} above the minimum {best!r}"
    )
    assert pick == first, f"{what}: exact tie, picked {pick}, smallest index is {first}"


def ref_closest_to_median_mean(values: np.ndarray, gamma: int) -> tuple[float, float]:
    """Mean of the ``gamma`` values closest to the median (distance ties -> lower value),
    and the largest magnitude among them (the scale of its rounding)."""
    vals = sorted(values.tolist())
    med = statistics.median(vals)
    order = sorted(range(len(vals)), key=lambda t: (abs(vals[t] - med), t))
    kept = [vals[t] for t in order[:gamma]]
    return sum(kept) / gamma, max(abs(v) for v in kept)


def ref_coordinatewise(X: np.ndarray, rule: Callable[[list[float]], tuple[float, float]]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``rule`` to each column in float64, NaN sorted as +inf; (values, scales)."""
    X64 = np.where(np.isnan(X), np.inf, X.astype(np.float64))
    out = [rule(sorted(X64[:, c].tolist())) for c in range(X.shape[1])]
    return np.array([o[0] for o in out]), np.array([o[1] for o in out])


def _trimmed(beta: int) -> Callable[[list[float]], tuple[float, float]]:
    def rule(vals: list[float]) -> tuple[float, float]:
        kept = vals[beta : len(vals) - beta]
        return sum(kept) / len(kept), max(abs(v) for v in kept)

    return rule


def _median(vals: list[float]) -> tuple[float, float]:
    n = len(vals)
    mid = vals[(n - 1) // 2 : n // 2 + 1]
    return sum(mid) / len(mid), max(abs(v) for v in mid)


def assert_values_close(got: np.ndarray, ref: np.ndarray, scale: np.ndarray, what: str) -> None:
    """``got`` (float32) equals the float64 ``ref`` to within float32 rounding of the result
    plus float64 rounding of the terms (``scale`` = their largest magnitude)."""
    assert np.isfinite(got).all() == np.isfinite(ref).all() or np.isfinite(got).all(), what
    finite = np.isfinite(ref)
    assert np.array_equal(got[~finite], ref[~finite].astype(np.float32)), what
    tol = np.spacing(np.abs(ref[finite]).astype(np.float32)).astype(np.float64)
    tol += 1e-12 * scale[finite]
    err = np.abs(got[finite].astype(np.float64) - ref[finite])
    assert (err <= tol).all(), f"{what}: off by {err.max()!r} (tolerance {tol[err.argmax()]!r})"


# -------------------------------------------------------------- per-rule checks


def verify_mean(W: np.ndarray, f: int, hostile: bool) -> None:
    got = AGGREGATORS["mean"](torch.from_numpy(W), f).numpy()
    if hostile:
        return  # mean is not robust: no promise beyond "no crash"
    ref = W.astype(np.float64).mean(axis=0)
    assert np.isfinite(got).all() or not (np.abs(ref) <= F32_MAX).all(), "mean overflowed"
    # float32 accumulation: within m ulps of the largest term
    tol = len(W) * 2.0**-23 * np.abs(W).max(axis=0).astype(np.float64)
    tol += np.spacing(np.abs(ref).astype(np.float32))
    assert (np.abs(got.astype(np.float64) - ref) <= tol).all(), "mean"


def verify_krum(W: np.ndarray, f: int, hostile: bool) -> None:
    m = len(W)
    got = AGGREGATORS["krum"](torch.from_numpy(W), f).numpy()
    pick = krum_select(torch.from_numpy(W), f)
    assert np.array_equal(got, W[pick], equal_nan=True)
    check_pick(pick, ref_krum_scores(ref_distances(W), list(range(m)), m - f - 2), "krum")


def verify_bulyan(W: np.ndarray, f: int, hostile: bool) -> None:
    m = len(W)
    theta, gamma = check_bulyan(m, f)
    got = AGGREGATORS["bulyan"](torch.from_numpy(W), f).numpy()
    walk = _exact_selection(_ExactDistances(torch.from_numpy(W)), np.arange(m), f, theta)
    D = ref_distances(W)
    alive = list(range(m))
    for t, pick in enumerate(walk.tolist()):
        n = len(alive)
        check_pick(pick, ref_krum_scores(D, alive, min(max(1, n - f - 2), n - 1)),
                   f"bulyan step {t}")
        alive.remove(pick)
    S = W[walk]
    ref, scale = ref_coordinatewise(S, lambda v: ref_closest_to_median_mean(np.array(v), gamma))
    assert_values_close(got, ref, scale, "bulyan")


def verify_trimmed_mean(W: np.ndarray, f: int, hostile: bool) -> None:
    got = AGGREGATORS["trimmed-mean"](torch.from_numpy(W), f).numpy()
    ref, scale = ref_coordinatewise(W, _trimmed(f))
    assert_values_close(got, ref, scale, "trimmed-mean")


def verify_median(W: np.ndarray, f: int, hostile: bool) -> None:
    got = AGGREGATORS["median"](torch.from_numpy(W), f).numpy()
    ref, scale = ref_coordinatewise(W, _median)
    assert_values_close(got, ref, scale, "median")


#: rule -> (reference check, robust: finite output with up to f hostile rows)
REFERENCES: dict[str, tuple[Callable[[np.ndarray, int, bool], None], bool]] = {
    "mean": (verify_mean, False),
    "krum": (verify_krum, True),
    "bulyan": (verify_bulyan, True),
    "trimmed-mean": (verify_trimmed_mean, True),
    "median": (verify_median, True),
}


# ---------------------------------------------------------------------------- families


def ulp_cluster(rng: np.random.Generator, base: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows within a few float32 ulps of ``base``, per coordinate."""
    ulps = int(rng.integers(1, 5))
    steps = rng.integers(-ulps, ulps + 1, (n, base.size)).astype(np.float32)
    return (base + steps * np.spacing(np.abs(base))).astype(np.float32)


def far_tight(rng: np.random.Generator, m: int, f: int, d: int) -> np.ndarray:
    """A tight cluster (a few ulps) of at least ``m - f - 1`` rows about 1e3 per coordinate
    from the origin, so that Krum's neighbours are all inside it; the other rows are as far
    from the origin on the other side: the exact mirror images of the cluster rows of median
    norm (a median-norm centring row then lies ~2e3 per coordinate away), a second tight
    cluster, or random directions. ``d`` is raised to 8 .. 255: the Gram error grows with it.
    """
    d = int(rng.integers(8, 256))
    base = (rng.standard_normal(d) * 1e3).astype(np.float32)
    a = max(1, min(m, m - f - 1 + int(rng.integers(0, f + 2))))
    b = m - a
    mode = rng.random()
    if mode < 0.5:
        X = ulp_cluster(rng, base, m)
        if b:
            order = np.argsort(np.linalg.norm(X.astype(np.float64), axis=1), kind="stable")
            lo = max(0, (m - 1) // 2 - (b - 1) // 2)
            X[order[lo : lo + b]] *= -1
    elif mode < 0.75:
        X = np.vstack([ulp_cluster(rng, base, a), ulp_cluster(rng, -base, b)])
    else:
        g = rng.standard_normal((b, d))
        g *= np.linalg.norm(base) / np.linalg.norm(g, axis=1, keepdims=True)
        X = np.vstack([ulp_cluster(rng, base, a), g.astype(np.float32)])
    return X[rng.permutation(m)]


def mirrored(rng: np.random.Generator, m: int, f: int, d: int) -> np.ndarray:
    """Rows and their exact mirror images (about the origin; far or near): mirrored rows
    have equal reference scores. Odd ``m`` adds the centre of symmetry."""
    scale = 10.0 ** rng.uniform(-2, 3)
    if rng.random() < 0.5:
        half = ulp_cluster(rng, (rng.standard_normal(d) * scale).astype(np.float32), m // 2)
    else:
        half = (rng.standard_normal((m // 2, d)) * scale).astype(np.float32)
    rows = [half, -half] + ([np.zeros((1, d), np.float32)] if m % 2 else [])
    return np.vstack(rows)[rng.permutation(m)]


def duplicates(rng: np.random.Generator, m: int, f: int, d: int) -> np.ndarray:
    """Random rows (ordinary or a far tight cluster) with exact duplicates."""
    if rng.random() < 0.5:
        X = rng.standard_normal((m, d)).astype(np.float32)
    else:
        X = far_tight(rng, m, f, d)
    distinct = int(rng.integers(1, m + 1))
    return X[rng.integers(0, distinct, m)]


def exact_ties(rng: np.random.Generator, m: int, f: int, d: int) -> np.ndarray:
    """Small integers, optionally shifted far away: every distance and sum exact."""
    X = rng.integers(-2, 3, (m, d)).astype(np.float32)
    return X + np.float32(rng.choice([0.0, 1e3, -4096.0]))


def mixed_scales(rng: np.random.Generator, m: int, f: int, d: int) -> np.ndarray:
    """Rows and coordinates of scales 1e-4 .. 1e4 around a common offset."""
    rows = 10.0 ** rng.uniform(-4, 4, (m, 1))
    cols = 10.0 ** rng.uniform(-3, 3, (1, d))
    offset = rng.standard_normal(d) * 10.0 ** rng.uniform(-2, 4)
    return (offset + rng.standard_normal((m, d)) * rows * cols).astype(np.float32)


def huge(rng: np.random.Generator, m: int, f: int, d: int) -> np.ndarray:
    """Finite values up to the float32 maximum (squares and sums overflow float32), some
    rows equal: e.g. two rows of 2e38, whose exact mean is finite."""
    X = (rng.uniform(-1.0, 1.0, (m, d)) * F32_MAX).astype(np.float32)
    if rng.random() < 0.5:
        X[: int(rng.integers(1, m + 1))] = np.float32(rng.choice([2e38, -2e38, 3.4e38]))
    return X[rng.permutation(m)]


FAMILIES: dict[str, Callable[[np.random.Generator, int, int, int], np.ndarray]] = {
    "far-tight": far_tight,
    "mirrored": mirrored,
    "duplicates": duplicates,
    "exact-ties": exact_ties,
    "mixed-scales": mixed_scales,
    "huge": huge,
}

HOSTILE = np.array([np.nan, np.inf, -np.inf, 1e38, -1e38, 3.4e38, -3.4e38], dtype=np.float32)


def with_hostile_rows(rng: np.random.Generator, X: np.ndarray, f: int) -> np.ndarray:
    """Replace up to ``f`` rows by hostile ones: one value throughout, a mixture of hostile
    values, or hostile values mixed into the ordinary row (at least one per row)."""
    X = X.copy()
    m, d = X.shape
    for i in rng.choice(m, size=int(rng.integers(0, min(f, (m - 1) // 2) + 1)), replace=False):
        kind = int(rng.integers(0, 3))
        if kind == 0:
            X[i] = rng.choice(HOSTILE)
        elif kind == 1:
            X[i] = rng.choice(HOSTILE, d)
        else:
            mask = rng.random(d) < 0.5
            mask[rng.integers(0, d)] = True
            X[i] = np.where(mask, rng.choice(HOSTILE, d), X[i])
    return X


def min_workers(name: str, f: int) -> int:
    """The smallest m the rule accepts with this f (for any registered rule)."""
    m = 1
    while True:
        try:
            check_aggregator(name, m, f)
            return m
        except ValueError:
            m += 1


def cases(name: str, family: str, seed0: int) -> list[tuple[np.ndarray, int]]:
    out = []
    for t in range(N_PER_FAMILY):
        rng = np.random.default_rng([seed0, t])
        f = int(rng.integers(0, 4))
        m = min_workers(name, f) + int(rng.integers(0, 4))
        d = int(rng.integers(1, 12))
        out.append((FAMILIES[family](rng, m, f, d), f))
    return out


# ------------------------------------------------------------------------------- tests


def test_every_rule_has_a_reference() -> None:
    missing = set(AGGREGATORS) - set(REFERENCES)
    assert not missing, f"add a float64 reference for {sorted(missing)} to this file"


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_rule_matches_float64_reference(name: str, family: str) -> None:
    check, _ = REFERENCES[name]
    for t, (W, f) in enumerate(cases(name, family, list(FAMILIES).index(family))):
        try:
            check(W, f, False)
        except AssertionError as e:
            raise AssertionError(f"{name} on {family} #{t} (m={len(W)}, f={f}): {e}") from e


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("name", list(AGGREGATORS))
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_hostile_rows_never_crash(name: str, family: str) -> None:
    """Up to f hostile rows: no exception, no warning; robust rules give a finite output
    that matches the reference."""
    check, robust = REFERENCES[name]
    for t, (W, f) in enumerate(cases(name, family, 100 + list(FAMILIES).index(family))):
        X = with_hostile_rows(np.random.default_rng([7, t]), W, f)
        out = AGGREGATORS[name](torch.from_numpy(X), f).numpy()
        what = f"{name} on hostile {family} #{t} (m={len(X)}, f={f})"
        if robust:
            assert np.isfinite(out).all(), what
        try:
            check(X, f, True)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}") from e


# ------------------------------------------- any number of hostile rows: no RuntimeWarning


def hostile_matrix(rng: np.random.Generator, m: int, d: int) -> np.ndarray:
    """Ordinary rows of which any number (0 .. m) are hostile."""
    X = rng.standard_normal((m, d)).astype(np.float32)
    return with_hostile_rows(rng, X, m) if rng.random() < 0.5 else _all_hostile(rng, X)


def _all_hostile(rng: np.random.Generator, X: np.ndarray) -> np.ndarray:
    X = X.copy()
    for i in rng.choice(len(X), size=int(rng.integers(0, len(X) + 1)), replace=False):
        X[i] = rng.choice(HOSTILE, X.shape[1])
    return X


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("numpy_on_cpu", [True, False])
def test_rules_and_leave_one_out_never_warn(numpy_on_cpu: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Rules, leave-one-out and the defenses on matrices with any number of NaN / +-Inf /
    +-1e38 rows: an output (possibly non-finite when more than f rows are hostile) and no
    NumPy RuntimeWarning."""
    monkeypatch.setattr(coordinate, "NUMPY_ON_CPU", numpy_on_cpu)
    monkeypatch.setattr(loo, "NUMPY_ON_CPU", numpy_on_cpu)

    def evaluate(models: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score = models.double().abs().sum(dim=1)
        return score, score

    for t in range(N_NEVER_WARN):
        rng = np.random.default_rng([9, t])
        f = int(rng.integers(0, 3))
        d = int(rng.integers(1, 6))
        for name in AGGREGATORS:
            m = min_workers(name, f) + 1 + int(rng.integers(0, 3))
            W = torch.from_numpy(hostile_matrix(rng, m, d))
            bound = bind_rule(name)
            ctx = ServerContext(1, W[0].clone(), {}, torch.Generator().manual_seed(t),
                                ServerData(W, torch.zeros(m, dtype=torch.int64), evaluate),
                                rows=m)
            bound(W, f, ctx)
            try:
                bound.check(m - 1, f)
            except ValueError:
                continue
            bound.with_and_without(W, f, ctx)
            pipeline = bind_pipeline(name, {})
            for spec in registry.specs("defense"):
                try:
                    spec.check(pipeline, m, f)
                except ValueError:
                    continue
                spec.impl(DefenseContext(W=W, f=f, rule=pipeline, server=ctx))


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_model_attacks_never_warn() -> None:
    """Every model attack, knowledge, goal and direction estimator on before-attack models
    with any number of hostile rows: crafted models or a ValueError (the Krum attack refuses
    non-finite models), never a NumPy RuntimeWarning."""
    for t in range(N_NEVER_WARN):
        rng = np.random.default_rng([10, t])
        m = int(rng.integers(6, 12))
        c = int(rng.integers(1, m // 2))
        d = int(rng.integers(1, 6))
        W = torch.from_numpy(hostile_matrix(rng, m, d))
        w_re = torch.from_numpy(rng.standard_normal(d).astype(np.float32))
        for spec in registry.specs("attack"):
            if spec.data:
                continue
            target = spec.target if spec.target != "option" else "median"
            directions = ("mean", "rule") if spec.option("direction") else (None,)
            for knowledge in spec.knowledge:
                for goal in spec.goals or ("directed",):
                    for direction in directions:
                        ctx = AttackContext(
                            compromised=W[:c], benign=W[c:] if knowledge == "full" else None,
                            w_re=w_re, m=m, knowledge=knowledge,  # type: ignore[arg-type]
                            goal=goal,  # type: ignore[arg-type]
                            f=c, generator=torch.Generator().manual_seed(t),
                            target=bind_pipeline(target, {}) if target else None,
                        )
                        options = spec.resolve_options(
                            {} if direction is None else {"direction": direction})
                        with contextlib.suppress(ValueError):
                            spec.impl(ctx, **options)
