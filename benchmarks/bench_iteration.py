"""Time of one LR-MNIST iteration (m = 100, batch 32) per aggregation rule, beside the floor.

Prints medians (and IQR) over repeated timings of: local training of all workers, each
rule's aggregation, and one whole simulated run of 500 iterations; and the FLOP floor of an
iteration (its FLOPs over this machine's measured fp32 matmul rate).

    python benchmarks/bench_iteration.py [--repeats 30] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from fedpoison.aggregators import get_aggregator
from fedpoison.config import RunConfig
from fedpoison.data import load, noniid_partition
from fedpoison.models.lr import LogisticRegression
from fedpoison.simulation import run
from fedpoison.tasks import Task


def timeit(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and IQR in seconds."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    q = statistics.quantiles(ts, n=4)
    return statistics.median(ts), q[2] - q[0]


def matmul_gflops(repeats: int) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    med, _ = timeit(lambda: a @ b, repeats)
    return 2 * 1024**3 / med / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    ds = load("mnist")
    m, B, F, L = 100, 32, 784, 10
    part = noniid_partition(ds.y_train, m, 0.5, L, torch.Generator().manual_seed(0))
    model = LogisticRegression(F, L)
    task = Task(ds, model, part, lr=0.1, batch_size=B)
    g = torch.Generator().manual_seed(0)
    w = torch.zeros(model.dim)
    workers = torch.arange(m)

    rate = matmul_gflops(args.repeats)
    # forward x·Aᵀ and the weight gradient δᵀ·x: 2 matmuls of 2·m·B·F·L FLOPs each
    flops_train = 2 * (2 * m * B * F * L)
    floor_train = flops_train / (rate * 1e9)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"fp32 matmul {rate:.1f} GFLOP/s")
    med, iqr = timeit(lambda: task.local_train(w, workers, ds.y_train, 1, g), args.repeats)
    print(f"local training, all {m} workers: median {med * 1e3:.2f} ms (IQR {iqr * 1e3:.2f}); "
          f"FLOP floor {floor_train * 1e3:.3f} ms ({med / floor_train:.1f}x)")
    W = task.local_train(w, workers, ds.y_train, 1, g)
    for rule in ("mean", "krum", "bulyan", "trimmed-mean", "median"):
        agg = get_aggregator(rule)
        med_a, iqr_a = timeit(lambda agg=agg: agg(W, 20), args.repeats)
        print(f"  aggregate {rule:>12}: median {med_a * 1e3:.2f} ms (IQR {iqr_a * 1e3:.2f})")

    print(f"whole runs, 500 iterations (median of {args.runs}):")
    for rule in ("mean", "krum", "trimmed-mean", "median"):
        cfg = RunConfig(dataset="mnist", model="lr", rule=rule, iterations=500)
        secs = [run(cfg, dataset=ds).seconds for _ in range(args.runs)]
        iters = 500
        floor_run = iters * floor_train
        print(f"  {rule:>12}: {statistics.median(secs):.2f} s "
              f"(floor {floor_run:.2f} s, {statistics.median(secs) / floor_run:.1f}x)")


if __name__ == "__main__":
    main()
