"""Free heap memory goes back to the OS during a run (fedpoison.memory, issue 18)."""

from __future__ import annotations

import sys

import pytest
import torch

import fedpoison
from fedpoison import memory, simulation
from fedpoison.data.base import Dataset


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_gives_free_heap_pages_back() -> None:
    # many mid-sized blocks below glibc's mmap threshold, then one small survivor on top of
    # the heap: freeing the rest leaves free pages that only a trim returns
    blocks = [torch.ones(16_000) for _ in range(5_000)]  # 64 KB each, 320 MB
    survivor = torch.ones(10)
    del blocks
    before = rss_kib()
    assert memory.release_free_memory()
    assert before - rss_kib() > 100_000, "less than 100 MB given back"
    assert survivor.sum() == 10


def _toy_run(iterations: int, eval_every: int) -> None:
    """An LR run of 10 workers on a small random 3-class dataset."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(600, 8, generator=g), torch.randint(3, (600,), generator=g)
    toy = Dataset("toy", x[:500], y[:500], x[500:], y[500:], 3)
    cfg = fedpoison.RunConfig(dataset="mnist", model="lr", workers=10, compromised=2,
                              iterations=iterations, eval_every=eval_every)
    simulation.run(cfg, progress=False, dataset=toy)


def test_a_run_releases_at_evaluations_when_due(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(memory, "RELEASE_EVERY", 0.0)
    monkeypatch.setattr(memory.Releaser.__init__, "__defaults__", (0.0,))
    _toy_run(iterations=30, eval_every=10)
    assert len(calls) == 3  # every evaluation once due
    calls.clear()
    monkeypatch.setattr(memory.Releaser.__init__, "__defaults__", (3600.0,))
    _toy_run(iterations=30, eval_every=10)
    assert calls == []  # not due within the hour


def test_every_run_tunes_the_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    """LR too: its defenses (FLAME, DnC, SignGuard) allocate tens of MB per iteration."""
    calls: list[int] = []
    monkeypatch.setattr(simulation, "tune_cpu_allocator", lambda: calls.append(1) or True)
    _toy_run(iterations=2, eval_every=2)
    assert calls == [1]


_FAULT_PROBE = """
import resource, sys, torch
from fedpoison.memory import tune_cpu_allocator
if sys.argv[1] == "tuned" and not tune_cpu_allocator():
    print("unsupported"); raise SystemExit
n = 40 * 2**20 // 4  # 40 MiB: above glibc's default mmap threshold
for _ in range(8):  # warm up: the heap settles after a few allocations
    torch.ones(n)
rounds = []
for _ in range(5):  # the fewest of 5 rounds: background kernel work (huge pages) adds faults
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        torch.ones(n)
    rounds.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (n * 4 // 4096))
print(min(rounds))
"""


def _faults_per_page(mode: str) -> str:
    """Page faults per 4 KiB page over four 40 MiB allocations (the fewest of five rounds),
    in a fresh process (the heap's state depends on everything the test process allocated
    before)."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _FAULT_PROBE, mode], capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_tuned_allocator_reuses_freed_memory() -> None:
    tuned = _faults_per_page("tuned")
    if tuned == "unsupported":
        pytest.skip("allocator tuning needs Linux/glibc")
    assert float(_faults_per_page("untuned")) > 3.5  # each allocation is a fresh mmap
    assert float(tuned) < 0.5  # tuned: the freed memory is reused, no page is faulted again


def test_tune_cpu_allocator_passes_c_ints(monkeypatch: pytest.MonkeyPatch) -> None:
    """mallopt takes a C int: a value past 2^31 − 1 wraps (2^34 became 0 and maximized
    trimming, the bug this guards)."""
    import ctypes

    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def mallopt(self, param: int, value: ctypes.c_int) -> int:
            assert isinstance(value, ctypes.c_int)
            calls.append((param, value.value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.delenv("FEDPOISON_NO_MALLOPT", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert memory.tune_cpu_allocator()
    assert dict(calls) == {-3: 1 << 30, -1: 2**31 - 1}  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
