"""Time the defenses at the paper's scale: LR-MNIST, k = 100 local models, d = 7,850, f = 20.

    PYTHONPATH=src python benchmarks/bench_defenses.py [--repeats N] [--threads T]
        [--rules mean,krum,...] [--cnn] [--no-rejection] [--no-trust]

Part 1, rejection (paper Section 5). One ERR/LFR/Union step = A = rule(all k models) and
B_i = rule(all but i) for every i, then the error rates and cross-entropies of the k + 1
models on 100 validation examples, then the f largest impacts. Per rule it times

* ``batched``: ``rejection.impacts`` + ``most_harmful`` (what ``lfr``/``union`` run: the
  rule's ``with_and_without`` and ONE ``Task.evaluate_many`` of k + 1 models);
* ``plain loop``: k + 1 independent rule calls and k + 1 one-model evaluations;
* the leave-one-out aggregation alone, batched vs the loop.

Part 2, trust and detection defenses: the median time of one aggregation (a rule: FLTrust,
FoolsGold, SignGuard, FLAME) or one rejection step (a defense: DnC, FLDetector) on the same
k x d models. FLTrust includes the server's one SGD step on its 100 root examples; FoolsGold
and FLDetector are timed in steady state (history and window already full; FLDetector's
L-BFGS product, distances, gap statistics and 2-means every call, no detection yet).

Inputs are synthetic with MNIST's shapes (784 features, 10 classes): timings do not depend on
the values (SignGuard's Mean-Shift and FLAME's HDBSCAN a little). ``--cnn`` adds the
leave-one-out aggregation alone at d = 270k (the CNN's size). On a machine shared with other
jobs torch's thread pool suffers (see bench_aggregators.py): check the load average in the
header, or compare with ``--threads 1``.
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
from fedpoison.data.base import Dataset
from fedpoison.data.partition import Partition
from fedpoison.defenses import DefenseContext, impacts
from fedpoison.defenses.rejection import most_harmful
from fedpoison.models.lr import LogisticRegression
from fedpoison.server import (
    Pipeline,
    ServerContext,
    ServerData,
    bind_pipeline,
    bind_rule,
    loop_with_and_without,
)
from fedpoison.tasks import Task
from timing import timings_ms

K, F, N_VAL = 100, 20, 100
RULES = ("mean", "krum", "trimmed-mean", "median", "bulyan")
TRUST = ("fltrust", "foolsgold", "signguard", "flame", "dnc", "fldetector")


def lr_mnist() -> tuple[Task, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Task with MNIST's shapes, 100 validation examples and k local models."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N_VAL, 1, 28, 28, generator=g)
    y = torch.randint(10, (N_VAL,), generator=g)
    model = LogisticRegression(784, 10)
    part = Partition.from_owner(torch.zeros(N_VAL, dtype=torch.int64), 1)
    task = Task(Dataset("mnist-shaped", x, y, x, y, 10), model, part, lr=0.01, batch_size=32)
    W = 0.01 * torch.randn(K, model.dim, generator=g)
    return task, x, y, W


def bound(rule: str) -> object:
    """The rule with β = F where it has a β (trimmed mean), as the paper's server uses it."""
    return bind_rule(rule, {"beta": F} if registry.get("rule", rule).option("beta") else {})


def with_and_without(rule: str, W: torch.Tensor, f: int) -> object:
    """The rule's batched leave-one-out (registered in its own module)."""
    return bound(rule).with_and_without(W, f)  # type: ignore[attr-defined]


def leave_one_out_loop(rule: str, W: torch.Tensor, f: int) -> object:
    """The plain reference: k rule calls."""
    b = bound(rule)
    return loop_with_and_without(lambda X: b(X, f), W)[1]  # type: ignore[operator]


def plain_step(rule: str, W: torch.Tensor, evaluate: Callable, f: int) -> object:
    """The naive defense step: k + 1 rule calls, k + 1 one-model evaluations."""
    aggregate = bound(rule)
    A = aggregate(W, f)
    keep = torch.ones(W.shape[0], dtype=torch.bool)
    e_a, l_a = evaluate(A[None])
    error_impact = torch.empty(W.shape[0], dtype=torch.float64)
    loss_impact = torch.empty(W.shape[0], dtype=torch.float64)
    for i in range(W.shape[0]):
        keep[i] = False
        e_b, l_b = evaluate(aggregate(W[keep], f)[None])
        keep[i] = True
        error_impact[i] = float(e_a[0] - e_b[0])
        loss_impact[i] = float(l_a[0] - l_b[0])
    return most_harmful(error_impact, f), most_harmful(loss_impact, f)


def rejection(args: argparse.Namespace, task: Task, x: torch.Tensor, y: torch.Tensor,
              W: torch.Tensor) -> None:
    def evaluate(models: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return task.evaluate_many(models, x, y)

    data = ServerData(x, y, evaluate)
    print("| rule | step batched | step plain loop | ratio | LOO batched | LOO loop | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for rule in args.rules.split(","):
        server = ServerContext(1, W[0].clone(), {}, torch.Generator().manual_seed(0), data)
        ctx = DefenseContext(W=W, f=F, rule=Pipeline(bound(rule)), server=server)

        def batched(ctx: DefenseContext = ctx) -> object:
            error, loss = impacts(ctx)
            return most_harmful(error, F), most_harmful(loss, F)

        step_b = np.median(timings_ms(batched, args.repeats))
        step_l = np.median(timings_ms(lambda r=rule: plain_step(r, W, evaluate, F),
                                      args.loop_repeats, warmup=0))
        loo_b = np.median(timings_ms(lambda r=rule: with_and_without(r, W, F), args.repeats))
        loo_l = np.median(timings_ms(lambda r=rule: leave_one_out_loop(r, W, F),
                                     args.loop_repeats, warmup=0))
        print(f"| {rule} | {step_b:.1f} | {step_l:.1f} | {step_l / step_b:.1f}x | {loo_b:.1f} |"
              f" {loo_l:.1f} | {loo_l / loo_b:.1f}x |", flush=True)
    print(f"\nleave-one-out behind bucketing (s = 2), k={K}; medians in ms: one shuffle "
          "(`same`; median batched over the changed rows, trimmed mean k calls on the bucket "
          "means) against a new shuffle per left-out model (`fresh`, k + 1 pipeline calls)")
    print("| rule | same | fresh | ratio |")
    print("|---|---:|---:|---:|")
    for rule in ("median", "trimmed-mean"):
        times = []
        for option in ("same", "fresh"):
            options = {"beta": F} if rule == "trimmed-mean" else {}
            pipe = bind_pipeline(rule, options, [("bucketing", {"s": 2, "leave_one_out": option})])
            server = ServerContext(1, W[0].clone(), {}, torch.Generator().manual_seed(0), data)
            times.append(np.median(timings_ms(lambda p=pipe, c=server: p.with_and_without(W, F, c),
                                              args.loop_repeats if option == "fresh"
                                              else args.repeats)))
        print(f"| {rule} | {times[0]:.1f} | {times[1]:.1f} | {times[1] / times[0]:.1f}x |",
              flush=True)
    if args.cnn:
        Wc = 0.01 * torch.randn(K, 270_000, generator=torch.Generator().manual_seed(1))
        print(f"\nleave-one-out alone, k={K}, d=270000 (CNN size), f={F}; medians in ms")
        print("| rule | LOO batched | LOO loop | ratio |")
        print("|---|---:|---:|---:|")
        for rule in args.rules.split(","):
            if rule == "bulyan":
                continue
            loo_b = np.median(timings_ms(lambda r=rule: with_and_without(r, Wc, F), 3))
            loo_l = np.median(timings_ms(lambda r=rule: leave_one_out_loop(r, Wc, F), 1,
                                         warmup=0))
            print(f"| {rule} | {loo_b:.0f} | {loo_l:.0f} | {loo_l / loo_b:.1f}x |", flush=True)


def trust(args: argparse.Namespace, task: Task, x: torch.Tensor, y: torch.Tensor,
          W: torch.Tensor) -> None:
    """One aggregation (rule) or rejection step (defense) of each trust/detection defense."""

    def evaluate(models: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return task.evaluate_many(models, x, y)

    def train(w: torch.Tensor, rounds: int, gen: torch.Generator) -> torch.Tensor:
        return task.train_on(w, x, y, rounds, gen)

    data = ServerData(x, y, evaluate, train)
    previous = W.mean(0)
    workers = torch.arange(K)
    g = torch.Generator().manual_seed(3)
    print("| defense | kind | median ms per aggregation | min | max |")
    print("|---|---|---:|---:|---:|")
    for name in TRUST:
        kind = "rule" if ("rule", name) in registry.REGISTRY else "defense"
        spec = registry.get(kind, name)
        options = spec.resolve_options({"warmup": 0} if name == "fldetector" else {})
        state: dict = {}

        def call(t: int = 1, W: torch.Tensor = W, spec=spec, options=options, state=state,
                 kind: str = kind) -> object:
            prev = previous + 1e-3 * t * torch.ones_like(previous)
            ctx = ServerContext(t, prev, state, g, data, None, workers, K)
            if kind == "rule":
                return spec.impl(W, F, ctx=ctx, **options)
            return spec.impl(DefenseContext(W=W, f=F, rule=bind_rule("mean"), server=ctx),
                             **options)

        if name in ("foolsgold", "fldetector"):  # steady state: history and window full
            for t in range(1, 13):
                noisy = W + 1e-3 * torch.randn(W.shape, generator=g)
                call(t, noisy)
            assert not state.get("detected", False)
        snapshot = {k: v.clone() if isinstance(v, torch.Tensor) else v
                    for k, v in state.items()}
        times = np.empty(args.repeats)
        for r in range(-1, args.repeats):  # one warm-up call; state restored, not timed
            state.clear()
            state.update({k: v.clone() if isinstance(v, torch.Tensor) else v
                          for k, v in snapshot.items()})
            start = time.perf_counter()
            call(13)
            if r >= 0:
                times[r] = (time.perf_counter() - start) * 1e3
        print(f"| {name} | {kind} | {np.median(times):.1f} | {times.min():.1f} |"
              f" {times.max():.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timings of each batched case")
    parser.add_argument("--loop-repeats", type=int, default=3, help="timings of each loop")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--rules", default=",".join(RULES), help="comma-separated rules")
    parser.add_argument("--cnn", action="store_true", help="also leave-one-out at d = 270k")
    parser.add_argument("--no-rejection", action="store_true", help="skip ERR/LFR/Union")
    parser.add_argument("--no-trust", action="store_true", help="skip the trust defenses")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task, x, y, W = lr_mnist()
    print(
        f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads,"
        f" {platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f};"
        f" LR-MNIST k={K}, d={W.shape[1]}, f={F}, {N_VAL} validation examples; medians in ms"
    )
    if not args.no_rejection:
        rejection(args, task, x, y, W)
    if not args.no_trust:
        print()
        trust(args, task, x, y, W)


if __name__ == "__main__":
    main()
