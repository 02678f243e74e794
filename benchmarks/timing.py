"""Timing helper shared by the benchmarks (run them as scripts: this folder is on sys.path)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def timings_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> np.ndarray:
    """Wall time of ``repeats`` calls of ``fn`` in milliseconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - start) * 1e3
    return out
