"""Shared builders for the trust and detection defense tests: server contexts, a toy task with
a root dataset, hostile rows, small simulated runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedpoison import registry
from fedpoison.config import RunConfig
from fedpoison.data.base import Dataset
from fedpoison.data.partition import Partition
from fedpoison.defenses.base import DefenseContext
from fedpoison.models.lr import LogisticRegression
from fedpoison.server import ServerContext, ServerData, bind_pipeline
from fedpoison.simulation import RunResult, run
from fedpoison.tasks import Task

HOSTILE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "big": 1e38,
           "-big": -1e38}


def toy_dataset() -> Dataset:
    """A 4-class problem with learnable structure (20 features)."""
    g = torch.Generator().manual_seed(0)
    n, d, L = 2000, 20, 4
    centers = torch.randn(L, d, generator=g) * 0.6
    y = torch.randint(L, (n,), generator=g)
    x = (centers[y] + torch.randn(n, d, generator=g)).sigmoid()
    return Dataset("toy", x[:1600], y[:1600], x[1600:], y[1600:], L)


TOY = toy_dataset()


def toy_run(**kw: Any) -> RunResult:
    """A short LR run on the toy dataset (the config names MNIST, the data are the toy's)."""
    base: dict[str, Any] = dict(dataset="mnist", model="lr", workers=20, compromised=4,
                                iterations=12, eval_every=4, lr=0.5)
    base.update(kw)
    return run(RunConfig(**base), dataset=TOY)


def server_data(d_in: int = 5, classes: int = 3, n: int = 60, seed: int = 0) -> ServerData:
    """Held-out examples of a small LR task (model size (d_in + 1) * classes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    y = torch.randint(classes, (n,), generator=g)
    task = Task(Dataset("root", x, y, x, y, classes), LogisticRegression(d_in, classes),
                Partition.from_owner(torch.zeros(n, dtype=torch.int64), 1), lr=0.1,
                batch_size=16)

    def evaluate(models: Tensor) -> tuple[Tensor, Tensor]:
        return task.evaluate_many(models, x, y)

    def train(w: Tensor, rounds: int, gen: torch.Generator) -> Tensor:
        return task.train_on(w, x, y, rounds, gen)

    return ServerData(x, y, evaluate, train)


def context(previous: Tensor, *, rows: int, state: dict[str, Any] | None = None,
            seed: int = 0, iteration: int = 1, data: ServerData | None = None,
            workers: Tensor | None = None) -> ServerContext:
    """The server's context for ``rows`` received rows (worker ids 0..rows-1 by default)."""
    return ServerContext(iteration, previous, {} if state is None else state,
                         torch.Generator().manual_seed(seed), data, None,
                         torch.arange(rows) if workers is None else workers, rows)


def rule(name: str, W: Tensor, f: int, ctx: ServerContext, **options: Any) -> Tensor:
    """The registered rule ``name`` with its defaults and ``options``, called as the server
    calls it."""
    spec = registry.get("rule", name)
    return spec.impl(W, f, ctx=ctx, **spec.resolve_options(options))


def defense(name: str, W: Tensor, f: int, server: ServerContext, rule_name: str = "mean",
            **options: Any) -> Tensor:
    """The registered defense ``name``'s dropped rows, called as the server calls it."""
    spec = registry.get("defense", name)
    ctx = DefenseContext(W=W, f=f, rule=bind_pipeline(rule_name, {}), server=server)
    return spec.impl(ctx, **spec.resolve_options(options))


def with_hostile_rows(W: Tensor, kinds: list[str], rng: np.random.Generator) -> Tensor:
    """``W`` with its first ``len(kinds)`` rows replaced: a whole row of one hostile value, or
    (``"mix"``) a per-entry mixture of them and ordinary values."""
    W = W.clone()
    for i, kind in enumerate(kinds):
        if kind == "mix":
            values = np.array(list(HOSTILE.values()), dtype=np.float32)
            row = rng.choice(values, size=W.shape[1])
            keep = rng.random(W.shape[1]) < 0.5
            keep[0] = False
            W[i] = torch.from_numpy(np.where(keep, W[i].numpy(), row).astype(np.float32))
        else:
            W[i] = HOSTILE[kind]
    return W


HOSTILE_CASES = [["nan"], ["inf", "-inf"], ["big", "-big", "nan"], ["mix", "mix"],
                 ["big", "big", "big"], ["-big", "inf", "mix"]]
