"""What the documentation promises about torch's thread count (issue 15, class 6).

LR runs give bit-identical models, error and loss curves whatever the number of threads:
every rule, the model-poisoning attacks (full and partial knowledge) and a defense, checked
here with 1 and 2 threads in separate processes. One diagnostic is exempt: the Krum
attack's λ, a float64 sum over d that torch splits across threads, may differ in its last
bits (the crafted model, rounded to float32, did not). CNN and MLP weights may differ in the
last bits (docs/choices.md, "Threads"), so they are not part of this promise.

The coordinate-wise rules split their NumPy work by columns over the same number of Python
threads (``fedpoison.threads``); each column is computed as on one thread, checked here for
1 to 4 threads, on hostile inputs, and in a forked child.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpoison.aggregators import bulyan, median, trimmed_mean
from fedpoison.aggregators.coordinate import closest_to_median_mean_sorted, sort_workers
from fedpoison.threads import MIN_COLUMNS, column_ranges, over_columns

CONFIGS = {  # LR on MNIST, small: 20 workers, 4 compromised, 3 iterations
    "mean": {},
    "krum+attack": {"rule": "krum", "attack": "krum"},
    "bulyan": {"rule": "bulyan"},
    "trimmed-mean+partial": {"rule": "trimmed-mean", "attack": "trimmed-mean",
                             "knowledge": "partial"},
    "median+attack": {"rule": "median", "attack": "median"},
    "krum+attack+err": {"rule": "krum", "attack": "krum", "defense": "err"},
}

CHILD = """
import json, sys
import torch
torch.set_num_threads(int(sys.argv[1]))
from fedpoison import RunConfig, run
from fedpoison.data import load
ds = load("mnist", download=False, progress=False)
out = {}
for name, extra in json.loads(sys.argv[2]).items():
    cfg = RunConfig(dataset="mnist", model="lr", workers=20, compromised=4, iterations=3,
                    eval_every=1, **extra)
    result = run(cfg, dataset=ds).to_json()
    for volatile in ("seconds", "timings"):
        result.pop(volatile)
    out[name] = result
print(json.dumps({"threads": torch.get_num_threads(), "runs": out}))
"""


def test_lr_results_do_not_depend_on_the_thread_count() -> None:
    home = os.environ.get("FEDPOISON_DATA")
    if not home or not (Path(home) / "mnist").is_dir():
        pytest.skip("needs FEDPOISON_DATA with MNIST (CI: ../shared/datasets)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(n), json.dumps(CONFIGS)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
                for n in (1, 2)]
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err.decode()
        outputs.append(json.loads(out))
    one, two = outputs
    assert (one["threads"], two["threads"]) == (1, 2)
    for name in CONFIGS:
        a, b = one["runs"][name], two["runs"][name]
        lam_a = a["diagnostics"].pop("krum_lambda", None)
        lam_b = b["diagnostics"].pop("krum_lambda", None)
        assert a == b, name  # models' curves, losses, errors, other diagnostics: bit for bit
        if lam_a is not None:
            assert lam_b is not None and lam_a.keys() == lam_b.keys()
            for key in lam_a:
                assert lam_a[key] == pytest.approx(lam_b[key], rel=1e-12, abs=0), key


# ------------------------------------------------------------------ column threads


def _hostile_matrix(m: int, d: int, seed: int) -> torch.Tensor:
    """Rows with ties, duplicates, NaN, ±Inf and huge values spread over every column
    range, so that each range sorts and reduces some of them."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, d, generator=g) * 0.1 + torch.randn(d, generator=g)
    W[1] = W[0]  # a duplicate row
    W[2, ::7] = W[3, ::7]  # ties within columns
    W[4, ::5] = float("nan")
    W[5, 1::3] = float("inf")
    W[6, 2::3] = -float("inf")
    W[7, ::11] = 3e38
    return W


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_column_ranges_cover_the_columns_once() -> None:
    for d in (0, 1, 1023, 1024, 2048, 7850, 10_001):
        for t in (1, 2, 3, 8):
            ranges = column_ranges(d, t)
            assert ranges[0][0] == 0 and ranges[-1][1] == d
            assert all(a == b for (_, a), (b, _) in itertools.pairwise(ranges))
            assert len(ranges) == max(1, min(t, d // MIN_COLUMNS))
            if len(ranges) > 1:
                assert min(b - a for a, b in ranges) >= MIN_COLUMNS


def test_coordinate_rules_do_not_depend_on_the_thread_count(restore_threads: None) -> None:
    """Sorted matrix, trimmed mean, median, Bulyan's second stage and Bulyan itself,
    bit for bit, with 1 to 4 threads (2 to 4 column ranges run in the pool)."""
    m, d = 41, 4 * MIN_COLUMNS + 37
    W = _hostile_matrix(m, d, 0)
    benign = W.clone()
    benign[4:8] = benign[8:12]  # Bulyan's selection needs finite rows
    results = []
    for t in (1, 2, 3, 4):
        torch.set_num_threads(t)
        assert len(column_ranges(d)) == t
        S = sort_workers(W)
        results.append([S, trimmed_mean(W, 8), median(W, 8),
                        closest_to_median_mean_sorted(S, 9), bulyan(benign, 5)])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    # the sort itself: every column as NumPy sorts it alone, NaN as +inf
    ref = np.sort(W.numpy(), axis=0)
    ref[np.isnan(ref)] = np.inf
    assert np.array_equal(results[-1][0].numpy(), ref)


def test_over_columns_raises_what_a_range_raised(restore_threads: None) -> None:
    torch.set_num_threads(3)
    seen: list[tuple[int, int]] = []

    def work(a: int, b: int) -> None:
        seen.append((a, b))
        if a > 0:
            raise RuntimeError(f"range {a}")

    with pytest.raises(RuntimeError, match="range"):
        over_columns(work, 3 * MIN_COLUMNS)
    assert sorted(seen) == column_ranges(3 * MIN_COLUMNS, 3)  # every range ran to the end


def test_a_forked_child_makes_its_own_pool(restore_threads: None) -> None:
    """A child forked after the pool started has a copy of it without threads: it must
    not wait on it forever (the sweep's process pool forks workers)."""
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    torch.set_num_threads(2)
    W = _hostile_matrix(9, 2 * MIN_COLUMNS, 1)
    expected = sort_workers(W)  # starts the parent's pool
    child = multiprocessing.get_context("fork").Process(target=_child_sort,
                                                        args=(W, expected))
    child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung on the parent's thread pool")
    assert child.exitcode == 0  # 1: it sorted differently (AssertionError)


def _child_sort(W: torch.Tensor, expected: torch.Tensor) -> None:
    assert len(column_ranges(W.shape[1])) == 2
    assert torch.equal(sort_workers(W), expected)


SPIN_CHILD = """
import os, sys
from fedpoison.threads import OPENMP_SPIN, limit_openmp_spinning
set_now = limit_openmp_spinning()
import torch
print(set_now, os.environ.get("GOMP_SPINCOUNT"), limit_openmp_spinning(), OPENMP_SPIN)
"""


@pytest.mark.parametrize("user, expected", [
    ({}, "True {spin} False {spin}"),
    ({"GOMP_SPINCOUNT": "77"}, "False 77 False {spin}"),
    ({"OMP_WAIT_POLICY": "active"}, "False None False {spin}"),
])
def test_openmp_spinning_is_limited_before_torch_loads_unless_the_user_chose(
        user: dict[str, str], expected: str) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(user, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", SPIN_CHILD], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    spin = out[-1]
    assert " ".join(out) == expected.format(spin=spin)


def test_the_command_line_limits_openmp_spinning() -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    code = ("import os, io, contextlib\nfrom fedpoison.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['list', 'rules'])\n"
            "import torch\nprint(os.environ['GOMP_SPINCOUNT'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    from fedpoison.threads import OPENMP_SPIN
    assert out == [str(OPENMP_SPIN)]
