"""Time whole iterations (local training, attack, rule) on a device: LR-MNIST and CNN-MNIST.

    PYTHONPATH=src python benchmarks/bench_device.py [--device cuda] [--repeats N]
        [--cases lr:mean,lr:krum,cnn:mean,...]

One iteration is ``Setup.step`` of the paper's setting (m = 100 workers, batch 32, c = 20,
non-IID 0.5): the batched local SGD of all workers and the server's rule (with the Krum
attack when the case names one, e.g. ``lr:krum+krum``). On CUDA the clock waits for the
device (``torch.cuda.synchronize``) before each reading. Prints medians and inter-quartile
ranges in milliseconds, rounds per second and clients (local trainings) per second.
Evaluation is left out: a run evaluates every ``eval_every`` iterations.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedpoison.config import RunConfig
from fedpoison.simulation import prepare


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_case(case: str, device: str, repeats: int) -> tuple[float, float]:
    model, _, spec = case.partition(":")
    rule, _, attack = spec.partition("+")
    cfg = RunConfig(dataset="mnist", model=model, rule=rule or "mean",
                    attack=attack or "none", knowledge="full", device=device,
                    iterations=repeats + 2, seed=0)
    setup = prepare(cfg)
    w = setup.w0
    notes: dict = {}
    for t in (1, 2):  # warm-up: allocations, kernels, first-call costs
        w = setup.step(w, t, notes)
    sync(device)
    times = np.empty(repeats)
    for r in range(repeats):
        tic = time.perf_counter()
        w = setup.step(w, r + 3, notes)
        sync(device)
        times[r] = (time.perf_counter() - tic) * 1e3
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return float(med), float(q3 - q1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cases", default="lr:mean,lr:krum,lr:median,lr:krum+krum,"
                                           "cnn:mean,cnn:krum,cnn:median")
    args = parser.parse_args()
    name = (torch.cuda.get_device_name() if args.device.startswith("cuda")
            else f"CPU, {torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, {name}; m = 100, batch 32, one iteration without "
          f"evaluation, {args.repeats} repeats")
    print("| case | median ms | IQR ms | rounds/s | clients/s |")
    print("|---|---:|---:|---:|---:|")
    for case in args.cases.split(","):
        med, iqr = bench_case(case, args.device, args.repeats)
        print(f"| {case} | {med:.2f} | {iqr:.2f} | {1e3 / med:.1f} | {1e5 / med:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
