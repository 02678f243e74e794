"""Time the aggregation rules at the paper's scale (Section 4.1: m = 100 workers, c = 20).

    PYTHONPATH=src python benchmarks/bench_aggregators.py [--repeats N] [--quick]

Shapes: 100 x 7850 (logistic regression on MNIST) and 100 x 270k (about the paper's CNN,
Table 7a). For every registered rule and pre-aggregator with its default options (rules that
need the server context get one: previous model 0, first iteration), for bucketing (s = 2)
followed by each rule, and for the building blocks (the float64 distance matrix and the
sort along the worker axis, NumPy vs torch; Krum and Bulyan also on an ill-conditioned
input, ``far_tight``: the cost of their exact path), prints the median and the inter-quartile range
of repeated timings in milliseconds, and the diagnostics a rule notes in one call (geomed's
Weiszfeld steps, the share of rows cclip and norm-clip clip). On a machine shared with other
jobs, torch's thread pool suffers most (a 100 x 7850 mean went from 0.07 ms to 8 ms at load
2.8 on 2 cores): check the load average printed in the header, or compare with
``--threads 1``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from fedpoison import registry
from fedpoison.aggregators import pairwise_sq_distances
from fedpoison.server import BoundPreaggregator, ServerContext, bind_pipeline, bind_rule
from timing import timings_ms

M, F = 100, 20
SHAPES = {"LR-MNIST": 7850, "CNN (~270k)": 270_000}


#: Time with ``time.process_time`` (CPU seconds of this process) instead of wall time.
CPU_TIME = False


def cpu_timings_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> np.ndarray:
    """CPU time of ``repeats`` calls in milliseconds: on a machine shared with other jobs,
    with one torch thread, it is what the call costs, not how long it waited for a core."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        start = time.process_time()
        fn()
        out[i] = (time.process_time() - start) * 1e3
    return out


def summary(ts: np.ndarray) -> tuple[float, float]:
    q1, med, q3 = np.percentile(ts, [25, 50, 75])
    return float(med), float(q3 - q1)


def far_tight(d: int) -> torch.Tensor:
    """An ill-conditioned input: all rows within one float32 ulp per coordinate of a point
    ~1e3 per coordinate from the origin, the middle-norm half mirrored through the origin.
    The Gram distances are far off, so Krum and Bulyan recompute their near-ties exactly:
    the cost of the exact path (duplicates of a row are computed once, so this is about
    the worst case)."""
    rng = np.random.default_rng(1)
    base = (rng.standard_normal(d) * 1e3).astype(np.float32)
    X = base + rng.integers(-1, 2, (M, d)).astype(np.float32) * np.spacing(np.abs(base))
    order = np.argsort(np.linalg.norm(X.astype(np.float64), axis=1), kind="stable")
    X[order[M // 4 : 3 * M // 4]] *= -1
    return torch.from_numpy(X.astype(np.float32))


def context(W: torch.Tensor, notes: dict | None = None) -> ServerContext:
    """A first iteration's server context: previous model 0, fresh state, seeded generator."""
    return ServerContext(1, torch.zeros(W.shape[1]), {}, torch.Generator().manual_seed(0),
                         notes=notes, rows=W.shape[0])


def rules() -> list:
    """The registered rules this benchmark can call without a root dataset."""
    return [s for s in registry.specs("rule") if "server_data" not in s.needs]


def cases_for(W: torch.Tensor, with_bucketing: bool) -> dict[str, Callable[[], object]]:
    """Every registered rule and pre-aggregator, and bucketing (s = 2) before each rule.
    Rules that need the server's root data (FLTrust) are left to bench_defenses.py, which
    gives them one."""
    out: dict[str, Callable[[], object]] = {}
    for spec in rules():
        rule = bind_rule(spec.name)
        out[spec.name] = lambda rule=rule: rule(W, F, context(W))
    for spec in registry.specs("preaggregator"):
        pre = BoundPreaggregator(spec, spec.resolve_options({}))
        out[f"pre: {spec.name}"] = lambda pre=pre: pre(W, F, context(W))
    if with_bucketing:
        for spec in rules():
            pipe = bind_pipeline(spec.name, {}, [("bucketing", {"s": 2})])
            try:
                pipe.check(W.shape[0], F)
            except ValueError:
                continue
            out[f"bucketing+{spec.name}"] = lambda pipe=pipe: pipe(W, F, context(W))
    return out


def bench_shape(label: str, d: int, repeats: int, with_bucketing: bool) -> None:
    W = torch.from_numpy(np.random.default_rng(0).standard_normal((M, d)).astype(np.float32))
    A = W.numpy()
    cases = cases_for(W, with_bucketing)
    H = far_tight(d)
    krum, bulyan = bind_rule("krum"), bind_rule("bulyan")
    cases["krum, far tight cluster"] = lambda: krum(H, F)
    cases["bulyan, far tight cluster"] = lambda: bulyan(H, F)
    cases["pairwise_sq_distances"] = lambda: pairwise_sq_distances(W)
    cases["np.sort (axis 0)"] = lambda: np.sort(A, axis=0)
    cases["torch.sort (dim 0)"] = lambda: torch.sort(W, dim=0)
    medians: dict[str, float] = {}
    for case, fn in cases.items():
        timer = cpu_timings_ms if CPU_TIME else timings_ms
        med, iqr = summary(timer(fn, repeats, warmup=2))
        medians[case] = med
        print(f"{label:<12} {case:<26} {med:9.2f} {iqr:8.2f}", flush=True)
    ratio = medians["torch.sort (dim 0)"] / medians["np.sort (axis 0)"]
    print(f"{label:<12} {'torch.sort / np.sort':<26} {ratio:9.1f}x", flush=True)
    for spec in rules():
        if spec.diagnostics:
            notes: dict[str, list[float]] = {}
            bind_rule(spec.name)(W, F, context(W, notes))
            shown = ", ".join(f"{k} = {v[0]:g}" for k, v in notes.items())
            print(f"{label:<12} {spec.name + ' notes':<26} {shown}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=0, help="timings per case (default: auto)")
    parser.add_argument("--quick", action="store_true", help="LR-MNIST shape only")
    parser.add_argument("--no-bucketing", action="store_true",
                        help="skip the bucketing (s = 2) + rule pipelines")
    parser.add_argument("--cpu-time", action="store_true",
                        help="CPU time of this process instead of wall time (use with "
                             "--threads 1 on a shared machine)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global CPU_TIME
    CPU_TIME = args.cpu_time

    print(
        f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads,"
        f" {platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f};"
        f" m={M}, f={F}; {'CPU' if CPU_TIME else 'wall'} times in ms"
    )
    print(f"{'shape':<12} {'case':<26} {'median':>9} {'IQR':>8}")
    for label, d in SHAPES.items():
        if args.quick and d > 10_000:
            continue
        repeats = args.repeats or (30 if d < 10_000 else 7)
        bench_shape(label, d, repeats, not args.no_bucketing)


if __name__ == "__main__":
    main()
