"""Time the aggregation rules at the paper's scale (Section 4.1: m = 100 workers, c = 20).

    PYTHONPATH=src python benchmarks/bench_aggregators.py [--repeats N] [--quick]

Shapes: 100 x 7850 (logistic regression on MNIST) and 100 x 270k (about the paper's CNN,
Table 7a). For each rule on Gaussian rows, Krum and Bulyan also on an ill-conditioned input
(``far_tight``: the cost of their exact path), and for the building blocks (the float64
distance matrix and the sort along the worker axis, NumPy vs torch), prints the median and
the inter-quartile range of repeated timings in milliseconds. On a machine shared with
other jobs, torch's thread pool suffers most (a 100 x 7850 mean went from 0.07 ms to 8 ms
at load 2.8 on 2 cores): check the load average printed in the header, or compare with
``--threads 1``.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable

import numpy as np
import torch

from fedpoison import registry
from fedpoison.aggregators import pairwise_sq_distances
from fedpoison.server import ServerContext, bind_rule
from timing import timings_ms

M, F = 100, 20
SHAPES = {"LR-MNIST": 7850, "CNN (~270k)": 270_000}


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


def bench_shape(label: str, d: int, repeats: int) -> None:
    W = torch.from_numpy(np.random.default_rng(0).standard_normal((M, d)).astype(np.float32))
    A = W.numpy()
    # every registered rule with its defaults; rules that ask for the server context get one
    ctx = ServerContext(1, W[0].clone(), {}, torch.Generator().manual_seed(0), rows=M)
    rules = {s.name: bind_rule(s.name) for s in registry.specs("rule")}
    cases: dict[str, Callable[[], object]] = {
        name: (lambda rule=rule: rule(W, F, ctx)) for name, rule in rules.items()
    }
    H = far_tight(d)
    cases["krum, far tight cluster"] = lambda: rules["krum"](H, F)
    cases["bulyan, far tight cluster"] = lambda: rules["bulyan"](H, F)
    cases["pairwise_sq_distances"] = lambda: pairwise_sq_distances(W)
    cases["np.sort (axis 0)"] = lambda: np.sort(A, axis=0)
    cases["torch.sort (dim 0)"] = lambda: torch.sort(W, dim=0)
    medians: dict[str, float] = {}
    for case, fn in cases.items():
        med, iqr = summary(timings_ms(fn, repeats, warmup=2))
        medians[case] = med
        print(f"{label:<12} {case:<26} {med:9.2f} {iqr:8.2f}", flush=True)
    ratio = medians["torch.sort (dim 0)"] / medians["np.sort (axis 0)"]
    print(f"{label:<12} {'torch.sort / np.sort':<26} {ratio:9.1f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=0, help="timings per case (default: auto)")
    parser.add_argument("--quick", action="store_true", help="LR-MNIST shape only")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads,"
        f" {platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f};"
        f" m={M}, f={F}; times in ms"
    )
    print(f"{'shape':<12} {'case':<26} {'median':>9} {'IQR':>8}")
    for label, d in SHAPES.items():
        if args.quick and d > 10_000:
            continue
        repeats = args.repeats or (30 if d < 10_000 else 7)
        bench_shape(label, d, repeats)


if __name__ == "__main__":
    main()
