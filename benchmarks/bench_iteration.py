"""One LR-MNIST iteration (m = 100, batch 32, c = 20), part by part, beside its FLOP floor.

Times, interleaved (one of each per repeat, so that a change in machine load hits all alike)
and reported as medians with IQR:

* ``train``: ``Task.local_train`` of all 100 workers (one local SGD round), and its parts
  when the code has them: batch sampling, gathering the inputs, the SGD step;
* each rule's aggregation of the 100 local models (f = 20);
* the Krum attack (partial knowledge) crafting 20 models;
* the per-iteration bookkeeping of ``simulation.run``: the ``against_mean_direction``
  diagnostic (mean of the local models, two signs, a masked compare);
* ``evaluate``: test error and loss of the global model on 10,000 images (done every 10
  iterations, so a tenth of it per iteration);
* the FLOP floor: forward x·Aᵀ and weight gradient δᵀ·x, 2 · (2·m·B·F·L) = 100.5 MFLOP, over
  this machine's fp32 rate on a 2048² matrix product measured in the same loop.

Single-threaded (``--threads 1``, the default) the clock is process CPU time, which other
processes' load disturbs far less than wall time; with more threads it is wall time (idle
threads spin). Then whole 500-iteration runs in process (``--runs``), per rule.

    PYTHONPATH=src python benchmarks/bench_iteration.py [--threads 1] [--repeats 200]
        [--runs 3] [--rules mean,krum,bulyan,trimmed-mean,median]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from fedpoison.aggregators import get_aggregator
from fedpoison.attacks import AttackContext, krum_attack
from fedpoison.config import RunConfig
from fedpoison.data import load, noniid_partition
from fedpoison.models.lr import LogisticRegression
from fedpoison.rng import generator
from fedpoison.server import bind_pipeline
from fedpoison.simulation import run
from fedpoison.tasks import Task, sample_batches

RULES = ("mean", "krum", "bulyan", "trimmed-mean", "median")


def med_iqr(xs: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(xs, n=4)
    return statistics.median(xs), q[2] - q[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3, help="whole runs per rule (0: none)")
    ap.add_argument("--rules", default=",".join(RULES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    rules = [r for r in args.rules.split(",") if r]

    ds = load("mnist")
    m, c, B, F, L = 100, 20, 32, 784, 10
    part = noniid_partition(ds.y_train, m, 0.5, L, generator(0, "split"))
    model = LogisticRegression(F, L)
    task = Task(ds, model, part, lr=0.1, batch_size=B)
    g = torch.Generator().manual_seed(0)
    w = torch.zeros(model.dim)
    workers = torch.arange(m)
    for _ in range(20):  # a realistic global model (and warm caches)
        w = task.local_train(w, workers, ds.y_train, 1, g).mean(0)
    W = task.local_train(w, workers, ds.y_train, 1, g)
    a2048, b2048 = torch.randn(2048, 2048), torch.randn(2048, 2048)

    def diagnostic() -> float:
        mean_direction = torch.sign(W.mean(0) - w)
        w_new = W[0]
        moved = mean_direction != 0
        return float((torch.sign(w_new - w)[moved] != mean_direction[moved]).float().mean())

    fns: dict[str, Callable[[], object]] = {
        "matmul 2048²": lambda: a2048 @ b2048,
        "train (local_train, 100 workers)": lambda: task.local_train(w, workers, ds.y_train, 1, g),
        "  sample_batches": lambda: sample_batches(part, workers, B, g),
    }
    if hasattr(task, "_gather"):  # the parts of the fused path, where the code has them
        idx, mask = sample_batches(part, workers, B, g)
        y = ds.y_train[idx]
        fns["  gather inputs"] = lambda: task._gather(idx, task._x_rows)
        if hasattr(model, "sgd_step_"):
            x = task._gather(idx, task._x_rows).clone()
            fns["  SGD step (2 products, softmax)"] = lambda: model.sgd_step_(
                W.clone(), x, y, mask, 0.1)
    for rule in rules:
        agg = get_aggregator(rule)
        fns[f"aggregate {rule}"] = lambda agg=agg: agg(W, c)
    target = bind_pipeline("krum", {})
    ga = torch.Generator().manual_seed(1)

    def krum_attack_step() -> object:
        return krum_attack(AttackContext(compromised=W[:c], benign=None, w_re=w, m=m,
                                         knowledge="partial", f=c, generator=ga,
                                         target=target))

    fns["Krum attack (partial knowledge)"] = krum_attack_step
    fns["against_mean_direction diagnostic"] = diagnostic
    fns["evaluate (every 10 iterations)"] = lambda: task.evaluate(w)

    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, f in fns.items():
            t = clock()
            f()
            times[name].append(clock() - t)
    rate = 2 * 2048**3 / statistics.median(times.pop("matmul 2048²")) / 1e9
    flops = 2 * (2 * m * B * F * L)
    floor = flops / (rate * 1e9)
    kind = "CPU time" if args.threads == 1 else "wall time"
    print(f"torch {torch.__version__}, {args.threads} thread(s), clock: {kind}; load average "
          f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}; fp32 2048² matmul {rate:.0f} GFLOP/s")
    print(f"FLOP floor of local training: {flops / 1e6:.1f} MFLOP -> {floor * 1e3:.3f} ms")
    print(f"{'part (median of ' + str(args.repeats) + ')':40} {'ms':>8} {'IQR':>7} {'×floor':>7}")
    for name, ts in times.items():
        med, iqr = med_iqr(ts)
        print(f"{name:40} {med * 1e3:8.3f} {iqr * 1e3:7.3f} {med / floor:7.2f}")

    if args.runs:
        print(f"whole runs in process, 500 iterations, no attack (median of {args.runs}; "
              "wall seconds and the run's own phase timings):")
        for rule in rules:
            cfg = RunConfig(dataset="mnist", model="lr", rule=rule, iterations=500)
            results = [run(cfg, dataset=ds, progress=False) for _ in range(args.runs)]
            secs = statistics.median(r.seconds for r in results)
            phases = {k: statistics.median(r.timings[k] for r in results)
                      for k in ("train", "aggregate", "evaluate")}
            print(f"  {rule:>12}: {secs:.2f} s (floor {500 * floor:.2f} s) "
                  + " ".join(f"{k} {v:.2f}" for k, v in phases.items())
                  + f"; final error {results[0].final_error:.4f}")


if __name__ == "__main__":
    main()
