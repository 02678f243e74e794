"""Time the craft step of every registered model attack at the paper's scale (m = 100, c = 20).

    PYTHONPATH=src python benchmarks/bench_attacks.py [--repeats N] [--cnn] [--threads N]
                                                      [--only NAME ...]

One craft step is the attack's ``craft(ctx, **defaults)`` for one iteration, with the
context the simulation builds: the compromised and (full knowledge) benign before-attack
models, ``w_Re`` and the target rule bound with the server's ``f``. Attacks crafted against
a rule (``target``) are timed against each rule they support among krum, bulyan,
trimmed-mean and median (Fang's Krum attack: Krum only). Mimic keeps state across a run's
iterations: it is timed in its warm-up iteration (the direction estimate; a fresh run each
call) and after it (copying the chosen worker). Shapes: LR on MNIST (d = 7,850) and, with
``--cnn``, about the paper's CNN (d = 270k). The local models are SGD-like updates of a
common ``w_Re`` (a small shared step plus per-worker noise). Cases are timed interleaved
(one of each per repeat) so that machine load hits all alike; prints the median and
inter-quartile range of the wall time and the median CPU time, in milliseconds, and the
Krum attack's λ search outcome.
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
from fedpoison.attacks import AttackContext
from fedpoison.attacks.krum_attack import krum_attack_solution
from fedpoison.errors import ConfigError
from fedpoison.server import bind_pipeline

M, C = 100, 20
TARGETS = ("krum", "bulyan", "trimmed-mean", "median")


def make_context(W: torch.Tensor, w_re: torch.Tensor, knowledge: str, target: str | None,
                 generator: torch.Generator | None = None,
                 state: dict | None = None) -> AttackContext:
    return AttackContext(
        compromised=W[:C], benign=W[C:] if knowledge == "full" else None, w_re=w_re, m=M,
        knowledge=knowledge,  # type: ignore[arg-type]
        f=C, generator=generator or torch.Generator().manual_seed(0),
        target=bind_pipeline(target, {}) if target else None,
        init=lambda g: torch.zeros(W.shape[1]),  # LR's initializer (MPAF's base model)
        state=state)  # Mimic's state across iterations (None: a fresh one per call)


def cases(W: torch.Tensor, w_re: torch.Tensor, only: set[str]) -> dict[str, Callable[[], object]]:
    out: dict[str, Callable[[], object]] = {}
    for spec in registry.specs("attack"):
        if spec.data or (only and spec.name not in only):
            continue
        targets: tuple[str | None, ...] = (None,)
        if spec.target == "option":
            targets = TARGETS
        elif spec.target is not None:
            targets = (spec.target,)
        for knowledge in spec.knowledge:
            for target in targets:
                opts = spec.resolve_options({})
                opts.pop("target_rule", None)
                if spec.check is not None:
                    try:
                        spec.check(m=M, c=C, f=C, knowledge=knowledge, goal="directed",
                                   **({"target_rule": target} if spec.target == "option"
                                      else {}), **opts)
                    except (ValueError, ConfigError):
                        continue
                label = f"{spec.name} {knowledge}" + (f" vs {target}" if target and
                                                       spec.target == "option" else "")
                if spec.name == "mimic":
                    out[label + " (warm-up)"] = (
                        lambda spec=spec, k=knowledge, t=target, o=opts:
                        spec.impl(make_context(W, w_re, k, t), **o))
                    g, state = torch.Generator().manual_seed(0), {}
                    spec.impl(make_context(W, w_re, knowledge, target, g, state), **opts)
                    label += " (after)"
                    out[label] = (lambda spec=spec, k=knowledge, t=target, o=opts, g=g, s=state:
                                  spec.impl(make_context(W, w_re, k, t, g, s), **o))
                    continue
                out[label] = (lambda spec=spec, k=knowledge, t=target, o=opts:
                              spec.impl(make_context(W, w_re, k, t), **o))
    return out


def bench_shape(label: str, d: int, repeats: int, only: set[str]) -> None:
    g = torch.Generator().manual_seed(0)
    w_re = 0.1 * torch.randn(d, generator=g)
    W = w_re - 0.002 * torch.randn(d, generator=g) + 0.01 * torch.randn(M, d, generator=g)
    todo = cases(W, w_re, only)
    for fn in todo.values():  # warm-up
        fn()
    wall = {k: np.empty(repeats) for k in todo}
    cpu = {k: np.empty(repeats) for k in todo}
    for r in range(repeats):
        for k, fn in todo.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k][r] = (time.perf_counter() - t0) * 1e3
            cpu[k][r] = (time.process_time() - c0) * 1e3
    print(f"\n{label}: m={M}, c={C}, d={d}, {repeats} repeats (ms per craft step; CPU = "
          "this process's CPU time, less sensitive to other jobs than wall time)")
    print(f"  {'attack':44s} {'wall median':>12s} {'IQR':>8s} {'CPU median':>11s}")
    for k, ts in wall.items():
        q1, med, q3 = np.percentile(ts, [25, 50, 75])
        print(f"  {k:44s} {med:12.2f} {q3 - q1:8.2f} {np.median(cpu[k]):11.2f}")
    for knowledge in ("full", "partial"):
        sol = krum_attack_solution(make_context(W, w_re, knowledge, "krum")).solution
        print(f"  krum {knowledge}: found={sol.found} λ={sol.lam:.3g} bound={sol.bound:.3g} "
              f"tried={sol.tried} copies={sol.copies} f={sol.f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--cnn", action="store_true", help="also d = 270k (about the CNN)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=[], help="attack names to time")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"threads {torch.get_num_threads()}, load {load:.2f}")
    bench_shape("LR-MNIST", 7850, args.repeats, set(args.only))
    if args.cnn:
        bench_shape("CNN (~270k)", 270_000, max(3, args.repeats // 5), set(args.only))


if __name__ == "__main__":
    main()
