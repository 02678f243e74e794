"""One federated-learning run under attack: the loop of the paper's Section 2.1.

Each iteration: the server sends the global model w_Re to the sampled workers (Step I); all
of them run local SGD in one batched computation (Step II); the compromised workers replace
their local models with crafted ones when this iteration is poisoned (Section 3); an optional
defense drops suspected models (Section 5); the server's rule aggregates the rest (Step III).
A run is a pure function of its config: the same config gives the same numbers, bit for bit
on CPU.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fedpoison import __version__
from fedpoison.aggregators import get_aggregator
from fedpoison.attacks import (
    DATA_ATTACKS,
    MODEL_ATTACKS,
    AttackContext,
    AttackOptions,
    DataAttackContext,
    TrainingData,
)
from fedpoison.config import RunConfig
from fedpoison.data import Dataset, Partition, load, noniid_partition
from fedpoison.defenses import DEFENSES, DefenseContext
from fedpoison.models import build_model
from fedpoison.rng import generator
from fedpoison.tasks import Task

PHASES = ("setup", "train", "attack", "defense", "aggregate", "evaluate")


@dataclass
class RunResult:
    """What one run produced. ``curve`` holds [iteration, test error] at every evaluation."""

    config: dict[str, Any]
    config_hash: str
    final_error: float
    final_loss: float
    best_error: float
    best_iteration: int
    curve: list[tuple[int, float]]
    loss_curve: list[tuple[int, float]]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, dict[str, float]] = field(default_factory=dict)
    version: str = __version__

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite losses become ``None``)."""

        def clean(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "final_error": self.final_error,
            "final_loss": clean(self.final_loss),
            "best_error": self.best_error,
            "best_iteration": self.best_iteration,
            "curve": [[t, e] for t, e in self.curve],
            "loss_curve": [[t, clean(v)] for t, v in self.loss_curve],
            "seconds": self.seconds,
            "timings": self.timings,
            "diagnostics": self.diagnostics,
            "config": self.config,
            "config_hash": self.config_hash,
            "version": self.version,
        }


def summarize_notes(notes: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per diagnostic: how many iterations reported it and the mean, median, min and max of
    its values (for a 0/1 flag the mean is the fraction of those iterations where it held).
    Non-finite values are left out of the statistics."""
    out: dict[str, dict[str, float]] = {}
    for name, values in sorted(notes.items()):
        v = sorted(x for x in values if math.isfinite(x))
        if not v:
            out[name] = {"n": len(values)}
            continue
        out[name] = {"n": len(values), "mean": statistics.fmean(v),
                     "median": statistics.median(v), "min": v[0], "max": v[-1]}
    return out


def poisoned_iterations(iterations: int, fraction: float, g: torch.Generator) -> Tensor:
    """Bool [iterations]: exactly round(fraction·T) iterations, chosen uniformly at random."""
    n = round(fraction * iterations)
    mask = torch.zeros(iterations, dtype=torch.bool)
    mask[torch.randperm(iterations, generator=g)[:n]] = True
    return mask


def training_subset(ds: Dataset, n: int, g: torch.Generator) -> Dataset:
    """``n`` training examples sampled uniformly without replacement (Section 4.4)."""
    if n > ds.x_train.shape[0]:
        from fedpoison.errors import ConfigError

        raise ConfigError("train_subset", f"at most {ds.x_train.shape[0]} for {ds.name}, got {n}")
    keep = torch.randperm(ds.x_train.shape[0], generator=g)[:n].sort()[0]
    return dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep])


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from fedpoison.errors import ConfigError

        raise ConfigError("device", "cuda requested but torch.cuda.is_available() is False")
    return torch.device(name)


def run(
    config: RunConfig,
    *,
    progress: bool = False,
    dataset: Dataset | None = None,
    on_evaluate: Callable[[int, float], None] | None = None,
) -> RunResult:
    """Simulate one run of federated learning under the configured attack.

    ``dataset`` lets callers (tests, sweeps) pass an already loaded dataset; by default it is
    loaded from the data home. ``on_evaluate(iteration, error)`` is called at each evaluation.
    """
    t_start = time.perf_counter()
    timings = dict.fromkeys(PHASES, 0.0)
    cfg = config.resolved()
    assert cfg.iterations is not None and cfg.f is not None and cfg.batch_size is not None
    assert cfg.lr is not None
    device = _resolve_device(cfg.device)
    if device.type == "cpu" and cfg.model != "lr":
        # Large per-iteration activations: keep freed memory for reuse (models/batched.py).
        from fedpoison.models.batched import tune_cpu_allocator

        tune_cpu_allocator()

    ds = dataset if dataset is not None else load(cfg.dataset, seed=cfg.seed)
    if cfg.train_subset is not None:
        ds = training_subset(ds, cfg.train_subset, generator(cfg.seed, "subset"))
    model = build_model(cfg.model, ds)
    m, c, k = cfg.workers, cfg.compromised, cfg.per_iteration
    partition = noniid_partition(
        ds.y_train, m, cfg.noniid, ds.num_classes, generator(cfg.seed, "split")
    )
    # Which workers are compromised: a seeded uniform choice (see docs/choices.md).
    compromised = torch.randperm(m, generator=generator(cfg.seed, "compromised"))[:c].sort()[0]
    is_compromised = torch.zeros(m, dtype=torch.bool)
    is_compromised[compromised] = True

    clean = TrainingData(x=ds.x_train, y=ds.y_train, owner=partition.owner)
    poisoned_data = clean
    if cfg.attack in DATA_ATTACKS:
        poisoned_data = DATA_ATTACKS[cfg.attack](
            DataAttackContext(clean, compromised, ds.num_classes, generator(cfg.seed, "attack"),
                              config=cfg)
        )
        if poisoned_data.owner is not partition.owner:
            partition = Partition.from_owner(poisoned_data.owner, m)
    task = Task(
        ds, model, partition, lr=cfg.lr, batch_size=cfg.batch_size, device=device,
        x_train=poisoned_data.x,
    )
    labels_poisoned = poisoned_data.y.to(device)
    # Label-changing attacks honour the poisoned-iteration schedule; an attack that adds
    # examples (e.g. back-gradient poisoning) is in the data for the whole run.
    same_examples = poisoned_data.x is clean.x
    labels_clean = clean.y.to(device) if same_examples else labels_poisoned

    aggregate = get_aggregator(cfg.rule, **({"beta": cfg.beta} if cfg.rule == "trimmed-mean"
                                           else {}))
    craft = MODEL_ATTACKS.get(cfg.attack)
    options = AttackOptions(goal=cfg.goal, epsilon=cfg.epsilon, b=cfg.b,  # type: ignore[arg-type]
                            direction=cfg.direction)  # type: ignore[arg-type]
    schedule = poisoned_iterations(cfg.iterations, cfg.poison_fraction,
                                   generator(cfg.seed, "schedule"))
    g_train = generator(cfg.seed, "train")
    g_sample = generator(cfg.seed, "sample")
    g_attack = generator(cfg.seed, "attack")

    defend = DEFENSES[cfg.defense]
    evaluate_validation = None
    if defend is not None:
        # The server's validation set: examples sampled from the test set (Section 5).
        n_test = ds.x_test.shape[0]
        val = torch.randperm(n_test, generator=generator(cfg.seed, "validation"))
        val = val[: min(cfg.validation_size, n_test)].to(device)
        x_val, y_val = task.x_test[val], task.y_test[val]

        def evaluate_validation(models: Tensor) -> tuple[Tensor, Tensor]:
            return task.evaluate_many(models, x_val, y_val)

    w = model.init(generator(cfg.seed, "init")).to(device)
    all_workers = torch.arange(m)
    curve: list[tuple[int, float]] = []
    loss_curve: list[tuple[int, float]] = []
    notes: dict[str, list[float]] = {}
    timings["setup"] = time.perf_counter() - t_start

    bar = _progress_bar(cfg, progress)
    for t in range(1, cfg.iterations + 1):
        tic = time.perf_counter()
        workers = all_workers if k == m else torch.randperm(m, generator=g_sample)[:k].sort()[0]
        attacked = bool(schedule[t - 1])
        labels = labels_poisoned if attacked else labels_clean
        W = task.local_train(w, workers, labels, cfg.local_rounds, g_train)
        toc = time.perf_counter()
        timings["train"] += toc - tic

        # The direction the local models moved before any attack (their mean), for the
        # against_mean_direction diagnostic.
        mean_direction = torch.sign(W.mean(0) - w)
        crafted: Tensor | None = None
        if craft is not None and attacked:
            rows = is_compromised[workers].to(device)
            if bool(rows.any()):
                crafted = rows
                ctx = AttackContext(
                    compromised=W[rows],
                    benign=W[~rows] if cfg.knowledge == "full" else None,
                    w_re=w,
                    m=k,
                    knowledge=cfg.knowledge,  # type: ignore[arg-type]
                    assumed_rule=cfg.attack,
                    f=cfg.f,
                    beta=cfg.beta,
                    generator=g_attack,
                    options=options,
                    notes=notes,
                )
                W[rows] = craft(ctx).to(W.dtype)
            tic = time.perf_counter()
            timings["attack"] += tic - toc
            toc = tic

        if defend is not None and evaluate_validation is not None:
            drop = defend(DefenseContext(W=W, f=cfg.f, rule=cfg.rule, beta=cfg.beta,
                                         evaluate=evaluate_validation))
            keep = torch.ones(W.shape[0], dtype=torch.bool, device=W.device)
            keep[drop] = False
            W = W[keep]
            crafted = None if crafted is None else crafted[keep]
            tic = time.perf_counter()
            timings["defense"] += tic - toc
            toc = tic

        w_prev, w = w, aggregate(W, cfg.f)
        moved = mean_direction != 0
        notes.setdefault("against_mean_direction", []).append(
            float((torch.sign(w - w_prev)[moved] != mean_direction[moved]).float().mean())
            if bool(moved.any()) else math.nan)
        if crafted is not None and cfg.rule == "krum":  # did Krum pick a crafted model?
            notes.setdefault("krum_selected_crafted", []).append(
                float(bool((W[crafted] == w).all(1).any())))
        tic = time.perf_counter()
        timings["aggregate"] += tic - toc

        if t % cfg.eval_every == 0 or t == cfg.iterations:
            ev = task.evaluate(w)
            curve.append((t, ev.error))
            loss_curve.append((t, ev.loss))
            if on_evaluate is not None:
                on_evaluate(t, ev.error)
            bar.set_postfix(error=f"{ev.error:.4f}", refresh=False)
            timings["evaluate"] += time.perf_counter() - tic
        bar.update(1)
    bar.close()

    best_t, best_err = min(curve, key=lambda te: (te[1], te[0]))
    return RunResult(
        config=cfg.to_dict(),
        config_hash=cfg.config_hash(),
        final_error=curve[-1][1],
        final_loss=loss_curve[-1][1],
        best_error=best_err,
        best_iteration=best_t,
        curve=curve,
        loss_curve=loss_curve,
        seconds=time.perf_counter() - t_start,
        timings=timings,
        diagnostics=summarize_notes(notes),
    )


def _progress_bar(cfg: RunConfig, enabled: bool) -> Any:
    from tqdm import tqdm

    desc = f"{cfg.dataset}/{cfg.model} {cfg.rule}"
    if cfg.attack != "none":
        desc += f" ← {cfg.attack}({cfg.knowledge})"
    return tqdm(total=cfg.iterations, desc=desc, disable=not enabled, unit="it", leave=False)
