"""Time the craft step of every model attack at the paper's scale (m = 100, c = 20).

    PYTHONPATH=src python benchmarks/bench_attacks.py [--repeats N] [--cnn] [--threads N]

One craft step is one registered model attack's ``craft(ctx)`` for one iteration: for the
Krum attack that includes the before-attack Krum (one float64 Gram matrix of all m models),
Theorem 1's bound and the whole halving search; for trimmed mean / median the before-attack
aggregate (one sort) and the draws. Shapes: LR on MNIST (d = 7850) and, with ``--cnn``,
about the paper's CNN (d = 270k). The local models are SGD-like updates of a common w_Re (a
small shared step plus per-worker noise), the regime in which the Krum attack finds a λ.
Cases are timed interleaved (one of each per repeat) so that machine load hits all alike;
prints the median and inter-quartile range in milliseconds, and the λ search's outcome.
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
from fedpoison.server import bind_pipeline

M, C = 100, 20


def make_context(W: torch.Tensor, w_re: torch.Tensor, target: str | None, knowledge: str,
                 goal: str) -> AttackContext:
    return AttackContext(
        compromised=W[:C],
        benign=W[C:] if knowledge == "full" else None,
        w_re=w_re,
        m=M,
        knowledge=knowledge,  # type: ignore[arg-type]
        goal=goal,  # type: ignore[arg-type]
        f=C,
        generator=torch.Generator().manual_seed(0),
        target=bind_pipeline(target, {}) if target else None,
    )


def model_attacks() -> list[tuple[str, object, str | None]]:
    """(label, spec, target rule) of every registered model attack; an attack that targets
    a rule of the server's choice runs against each paper rule it is usually used with."""
    out = []
    for spec in registry.specs("attack"):
        if spec.data:
            continue
        if spec.target == "option":
            out += [(f"{spec.name}[{t}]", spec, t) for t in ("trimmed-mean", "median")]
        else:
            out.append((spec.name, spec, spec.target))
    return out


def bench_shape(label: str, d: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    w_re = 0.1 * torch.randn(d, generator=g)
    W = w_re - 0.002 * torch.randn(d, generator=g) + 0.01 * torch.randn(M, d, generator=g)
    cases: dict[str, Callable[[], object]] = {}
    for attack, spec, target in model_attacks():
        for knowledge in spec.knowledge:
            for goal in spec.goals or ("directed",):
                try:
                    if spec.check is not None:
                        spec.check(m=M, c=C, f=C, knowledge=knowledge, goal=goal)
                except ValueError:
                    continue
                ctx = make_context(W, w_re, target, knowledge, goal)
                name = f"{attack} {knowledge}" + (f" {goal}" if spec.goals else "")
                options = spec.resolve_options({})  # the attack's defaults
                cases[name] = lambda ctx=ctx, spec=spec, o=options: spec.impl(ctx, **o)
    for fn in cases.values():  # warm-up
        fn()
    times = {k: np.empty(repeats) for k in cases}
    for r in range(repeats):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[k][r] = (time.perf_counter() - t0) * 1e3
    print(f"\n{label}: m={M}, c={C}, d={d}, {repeats} repeats (ms per craft step)")
    print(f"  {'attack':44s} {'median':>9s} {'IQR':>8s}")
    for k, ts in times.items():
        q1, med, q3 = np.percentile(ts, [25, 50, 75])
        print(f"  {k:44s} {med:9.2f} {q3 - q1:8.2f}")
    for knowledge in ("full", "partial"):
        sol = krum_attack_solution(make_context(W, w_re, "krum", knowledge, "directed")).solution
        print(f"  krum {knowledge}: found={sol.found} λ={sol.lam:.3g} bound={sol.bound:.3g} "
              f"tried={sol.tried} copies={sol.copies} f={sol.f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--cnn", action="store_true", help="also d = 270k (about the CNN)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"threads {torch.get_num_threads()}, load {load:.2f}")
    bench_shape("LR-MNIST", 7850, args.repeats)
    if args.cnn:
        bench_shape("CNN (~270k)", 270_000, max(3, args.repeats // 5))


if __name__ == "__main__":
    main()
