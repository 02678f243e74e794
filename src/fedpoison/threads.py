"""NumPy work split by columns over the CPU threads torch may use.

NumPy's sorts and reductions run on one core, and the coordinate-wise rules spend most of
their time in them (``np.sort`` of a 100 × 7,850 matrix along the worker axis: 1.05 ms on one
thread). Their columns are independent, so :func:`over_columns` hands disjoint column ranges
to a small pool of Python threads: NumPy releases the GIL while it sorts or reduces, and each
column is computed exactly as on one thread, so the results do not depend on the thread
count (tested). The pool has ``torch.get_num_threads() − 1`` threads (the caller runs one
range itself): ``--threads 1`` uses none, and a run never uses more cores than torch does.

torch's OpenMP threads (GNU libgomp in the PyPI wheels) busy-wait after each parallel
region for ``GOMP_SPINCOUNT`` iterations (300,000 by default, milliseconds here) before they
sleep, and on two cores a spinning thread takes the core the pool's thread needs: the
split sort then gained nothing. :func:`limit_openmp_spinning`, called by the command line
before torch loads, lowers that count to :data:`OPENMP_SPIN` (docs/design.md, "NumPy's
sorts on both cores").
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["MIN_COLUMNS", "OPENMP_SPIN", "column_ranges", "limit_openmp_spinning",
           "over_columns"]

#: Fewest columns per range: below this a thread's dispatch (~20–50 µs) costs more than the
#: work it takes over.
MIN_COLUMNS = 1024

#: libgomp's busy-wait iterations after a parallel region (``GOMP_SPINCOUNT``) set by the
#: command line: about 0.1 ms here, enough for the gaps between the training's products.
#: 0 (``OMP_WAIT_POLICY=passive``) made 500 LR iterations of mean 23 % slower.
OPENMP_SPIN = 3000

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] = (0, 0)  # (process id, threads) the pool was made for


def _executor(threads: int) -> ThreadPoolExecutor:
    """The pool of ``threads − 1`` workers for this process (a forked child, whose copy of
    the parent's pool has no threads, makes its own)."""
    global _pool, _pool_key
    key = (os.getpid(), threads)
    with _lock:
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="fedpoison-columns")
            _pool_key = key
        return _pool


def limit_openmp_spinning() -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`OPENMP_SPIN` unless the user set it or
    ``OMP_WAIT_POLICY``, or torch is already loaded (libgomp reads it once, when it loads).
    Returns whether it was set."""
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ \
            or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = str(OPENMP_SPIN)
    return True


def column_ranges(d: int, threads: int | None = None) -> list[tuple[int, int]]:
    """Disjoint ``(start, stop)`` ranges covering ``range(d)``, one per thread (at most
    ``torch.get_num_threads()``), none narrower than :data:`MIN_COLUMNS` unless there is
    only one."""
    import torch

    t = torch.get_num_threads() if threads is None else threads
    n = max(1, min(t, d // MIN_COLUMNS))
    cuts = [d * i // n for i in range(n + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(n)]


def over_columns(fn: Callable[[int, int], None], d: int) -> None:
    """Call ``fn(start, stop)`` on the ranges of :func:`column_ranges` concurrently; return
    when all have finished, raising the first range's exception if any raised.

    ``fn`` must write only its own columns and should spend its time in NumPy calls that
    release the GIL (sorts, ufuncs, reductions); otherwise the threads take turns.
    """
    import torch

    threads = torch.get_num_threads()
    ranges = column_ranges(d, threads)
    if len(ranges) == 1:
        fn(0, d)
        return
    pool = _executor(threads)
    futures: list[Future[None]] = [pool.submit(fn, a, b) for a, b in ranges[1:]]
    try:
        fn(*ranges[0])
    finally:
        errors = [f.exception() for f in futures]  # waits for every range
    for e in errors:
        if e is not None:
            raise e
