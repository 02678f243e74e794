"""Centralized check of the back-gradient poison (Fang et al. 2020, Section 4.4; issue 8 item 4).

For each seed: the 6,000-example MNIST subset the ``table5`` runs use (same seed stream), the
240-point BGA poison (Muñoz-González et al. 2017) generated for it and timed, then LR trained
centrally on the subset with and without the poison; prints the test errors per seed, their
means (paper: 0.10 → 0.16) and the generation time. The poison goes through the same
on-disk cache as the ``bga`` attack, so a later ``table5`` run with the same seed reuses it;
``--fresh`` recomputes (and re-times) it.

    PYTHONPATH=src FEDPOISON_DATA=../shared/datasets python benchmarks/centralized_bga.py \\
        --seeds 0 1 2 --out bga.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Any

import torch
from torch import Tensor

from fedpoison.attacks.bga import BGASettings, cached_poison, poison_for
from fedpoison.data import load
from fedpoison.rng import generator
from fedpoison.simulation import training_subset


def train_lr(x: Tensor, y: Tensor, num_classes: int, *, epochs: int, lr: float,
             batch_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Centralized softmax regression by minibatch SGD from zero (the workers' learner)."""
    g = torch.Generator().manual_seed(seed)
    x = x.reshape(x.shape[0], -1)
    A = torch.zeros(x.shape[1], num_classes)
    b = torch.zeros(num_classes)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i : i + batch_size]
            delta = torch.softmax(x[idx] @ A + b, dim=1)
            delta[torch.arange(idx.numel()), y[idx]] -= 1.0
            A -= lr * x[idx].T @ delta / idx.numel()
            b -= lr * delta.mean(0)
    return A, b


def test_error(A: Tensor, b: Tensor, x: Tensor, y: Tensor) -> float:
    pred = (x.reshape(x.shape[0], -1) @ A + b).argmax(1)
    return float((pred != y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--subset", type=int, default=6000)
    d = BGASettings()
    ap.add_argument("--budget", type=float, default=d.budget)
    ap.add_argument("--inner-steps", type=int, default=d.inner_steps)
    ap.add_argument("--outer-steps", type=int, default=d.outer_steps)
    ap.add_argument("--step-size", type=float, default=d.step_size)
    ap.add_argument("--inner-lr", type=float, default=d.inner_lr)
    ap.add_argument("--momentum", type=float, default=d.momentum)
    ap.add_argument("--warm-steps", type=int, default=d.warm_steps)
    ap.add_argument("--init", choices=["flip", "random"], default=d.init)
    ap.add_argument("--val-fraction", type=float, default=d.val_fraction)
    ap.add_argument("--epochs", type=int, default=10, help="victim: SGD epochs")
    ap.add_argument("--lr", type=float, default=0.1, help="victim: SGD learning rate")
    ap.add_argument("--batch-size", type=int, default=32, help="victim: SGD batch size")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--fresh", action="store_true", help="bypass the cache and time generation")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = BGASettings(
        budget=args.budget, inner_steps=args.inner_steps, outer_steps=args.outer_steps,
        step_size=args.step_size, inner_lr=args.inner_lr, momentum=args.momentum,
        warm_steps=args.warm_steps, init=args.init, val_fraction=args.val_fraction,
    )
    settings.validate()

    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        full = load("mnist", seed=seed)
        ds = training_subset(full, args.subset, generator(seed, "subset"))
        info: dict[str, Any] = {"hit": False}
        tic = time.perf_counter()
        if args.fresh:
            x_p, y_p = poison_for(ds.x_train, ds.y_train, ds.num_classes, settings, seed,
                                  progress=args.progress)
        else:
            x_p, y_p = cached_poison(ds.x_train, ds.y_train, ds.num_classes, settings, seed,
                                     dataset="mnist", train_subset=args.subset,
                                     progress=args.progress, info=info)
        gen_s = time.perf_counter() - tic
        victim = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=seed)
        clean = test_error(*train_lr(ds.x_train, ds.y_train, ds.num_classes, **victim),
                           ds.x_test, ds.y_test)
        poisoned = test_error(
            *train_lr(torch.cat([ds.x_train, x_p.reshape(-1, *ds.x_train.shape[1:])]),
                      torch.cat([ds.y_train, y_p]), ds.num_classes, **victim),
            ds.x_test, ds.y_test,
        )
        row = {"seed": seed, "clean_error": clean, "poisoned_error": poisoned,
               "poison_points": int(x_p.shape[0]), "generation_s": gen_s,
               "generated": not info["hit"]}
        rows.append(row)
        print(f"seed {seed}: error {clean:.4f} -> {poisoned:.4f} with {x_p.shape[0]} poisoned "
              f"points (generation {gen_s:.0f} s{'' if row['generated'] else ', cached'})",
              flush=True)

    mean_clean = statistics.mean(r["clean_error"] for r in rows)
    mean_poisoned = statistics.mean(r["poisoned_error"] for r in rows)
    print(f"mean over {len(rows)} seeds: {mean_clean:.4f} -> {mean_poisoned:.4f} "
          f"(paper: 0.10 -> 0.16)")
    result = {
        "rows": rows, "mean_clean_error": mean_clean, "mean_poisoned_error": mean_poisoned,
        "settings": dataclasses.asdict(settings), "subset": args.subset,
        "victim": {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size},
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
