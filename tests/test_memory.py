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


def test_a_run_releases_at_evaluations_when_due(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(600, 8, generator=g), torch.randint(3, (600,), generator=g)
    toy = Dataset("toy", x[:500], y[:500], x[500:], y[500:], 3)
    cfg = fedpoison.RunConfig(dataset="mnist", model="lr", workers=10, compromised=2,
                              iterations=30, eval_every=10)
    monkeypatch.setattr(memory, "RELEASE_EVERY", 0.0)
    monkeypatch.setattr(memory.Releaser.__init__, "__defaults__", (0.0,))
    simulation.run(cfg, progress=False, dataset=toy)
    assert len(calls) == 3  # every evaluation once due
    calls.clear()
    monkeypatch.setattr(memory.Releaser.__init__, "__defaults__", (3600.0,))
    simulation.run(cfg, progress=False, dataset=toy)
    assert calls == []  # not due within the hour
