"""RunConfig: every knob of one simulated federated-learning run, validated up front.

Defaults follow the paper's Table 1 and Section 4.1 (m = 100, c = 20, p = 0.5, ε = 0.01,
β = c, batch 32 — 64 for Fashion-MNIST, one local SGD round, all workers every iteration).
``None`` means "the documented default for this dataset/model"; ``resolved()`` fills them
in, and the config hash is taken over the resolved values so that a result is keyed by what
actually ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from fedpoison.errors import ConfigError

KNOWLEDGE = ("full", "partial")
GOALS = ("directed", "deviation")
DIRECTIONS = ("mean", "rule")
DEVICES = ("auto", "cpu", "cuda")
PLACEMENTS = ("uniform", "single-worker")

# Learning rate of local SGD per (dataset, model): the paper does not state it (see
# docs/choices.md, "Learning rates", for how each was chosen and what it gives).
DEFAULT_LR: dict[tuple[str, str], float] = {
    ("mnist", "lr"): 0.1,
    ("fashion-mnist", "lr"): 0.1,
    ("breast-cancer", "lr"): 0.1,
    ("ch-mnist", "lr"): 0.1,
    ("mnist", "cnn"): 0.1,
    ("fashion-mnist", "cnn"): 0.1,
    ("ch-mnist", "resnet20"): 0.1,
    ("breast-cancer", "mlp"): 1.0,
}
DEFAULT_BATCH: dict[str, int] = {"fashion-mnist": 64}
DEFAULT_ITERATIONS: dict[str, int] = {"lr": 500}  # DNNs: 2000 (Section 4.1)


@dataclass(frozen=True)
class RunConfig:
    """One run. Field names are the CLI's option names with ``_`` for ``-``."""

    dataset: str = "mnist"
    model: str = "lr"
    rule: str = "mean"
    workers: int = 100
    compromised: int = 20
    noniid: float = 0.5
    iterations: int | None = None
    sample: int | None = None  # workers picked per iteration; None = all
    local_rounds: int = 1
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    attack: str = "none"
    knowledge: str = "full"
    goal: str = "directed"
    direction: str = "mean"  # full knowledge: how s is estimated ("mean" or "rule")
    epsilon: float = 0.01
    b: float = 2.0
    f: int | None = None  # server's assumed number of compromised workers
    beta: int | None = None  # trimmed mean's β; None = f
    poison_fraction: float = 1.0
    defense: str = "none"
    validation_size: int = 100
    train_subset: int | None = None  # use n uniformly sampled training examples (Table 5)
    poison_budget: float = 0.04  # data poisoning: poisoned points / training examples (4.4)
    poison_placement: str = "uniform"  # data poisoning: "uniform" or "single-worker" (4.4)
    eval_every: int = 10
    device: str = "cpu"

    # ------------------------------------------------------------------ defaults
    @property
    def per_iteration(self) -> int:
        """Number of local models the server aggregates each iteration."""
        return self.workers if self.sample is None else self.sample

    def resolved(self) -> RunConfig:
        """The same config with every ``None`` replaced by its documented default.

        f defaults to c (a strong server that knows c, Section 2.3); when only k of m workers
        are sampled per iteration it defaults to ⌈c·k/m⌉, the expected compromised share of a
        sample rounded up. β defaults to f (Section 4.1).
        """
        self.validate()
        lr = self.lr if self.lr is not None else DEFAULT_LR.get((self.dataset, self.model), 0.1)
        batch = self.batch_size if self.batch_size is not None else DEFAULT_BATCH.get(
            self.dataset, 32
        )
        iterations = (
            self.iterations
            if self.iterations is not None
            else DEFAULT_ITERATIONS.get(self.model, 2000)
        )
        f = self.f
        if f is None:
            k = self.per_iteration
            f = self.compromised if k == self.workers else math.ceil(
                self.compromised * k / self.workers
            )
        beta = self.beta if self.beta is not None else f
        out = dataclasses.replace(
            self, lr=lr, batch_size=batch, iterations=iterations, f=f, beta=beta
        )
        out._check_rule()
        return out

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field and its allowed range."""
        from fedpoison.aggregators import AGGREGATORS
        from fedpoison.attacks import attack_names
        from fedpoison.data import DATASETS
        from fedpoison.defenses import DEFENSES
        from fedpoison.models import MODELS

        _choice("dataset", self.dataset, DATASETS)
        _choice("model", self.model, tuple(MODELS))
        _choice("rule", self.rule, tuple(AGGREGATORS))
        _choice("attack", self.attack, attack_names())
        _choice("knowledge", self.knowledge, KNOWLEDGE)
        _choice("goal", self.goal, GOALS)
        _choice("direction", self.direction, DIRECTIONS)
        _choice("defense", self.defense, tuple(DEFENSES))
        _choice("device", self.device, DEVICES)
        _int_range("workers", self.workers, 1, None)
        _int_range("compromised", self.compromised, 0, self.workers - 1,
                   "must be smaller than workers")
        _float_range("noniid", self.noniid, 0.0, 1.0)
        if self.iterations is not None:
            _int_range("iterations", self.iterations, 1, None)
        if self.sample is not None:
            _int_range("sample", self.sample, 1, self.workers, "at most workers")
        _int_range("local_rounds", self.local_rounds, 1, None)
        if self.batch_size is not None:
            _int_range("batch_size", self.batch_size, 1, None)
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("lr", f"must be a finite number > 0, got {self.lr}")
        _int_range("seed", self.seed, 0, 2**63 - 1)
        _float_range("epsilon", self.epsilon, 0.0, None)
        if not (math.isfinite(self.b) and self.b > 1):
            raise ConfigError("b", f"must be a finite number > 1, got {self.b}")
        if self.f is not None:
            _int_range("f", self.f, 0, self.per_iteration - 1)
        if self.beta is not None:
            _int_range("beta", self.beta, 0, (self.per_iteration - 1) // 2,
                       "2·beta must be smaller than the number of aggregated models")
        _float_range("poison_fraction", self.poison_fraction, 0.0, 1.0)
        _int_range("validation_size", self.validation_size, 1, None)
        _int_range("eval_every", self.eval_every, 1, None)
        if self.train_subset is not None:
            _int_range("train_subset", self.train_subset, 1, None)
        _float_range("poison_budget", self.poison_budget, 0.0, None)
        _choice("poison_placement", self.poison_placement, PLACEMENTS)
        if self.attack != "none" and self.compromised == 0:
            raise ConfigError("compromised", f"attack {self.attack!r} needs compromised >= 1")
        from fedpoison.attacks import MODEL_ATTACKS, check_model_attack

        if self.attack in MODEL_ATTACKS:
            try:
                check_model_attack(self.attack, self.knowledge, self.goal)
            except ValueError as e:
                raise ConfigError("goal", str(e)) from None

    def _check_rule(self) -> None:
        from fedpoison.aggregators import check_aggregator
        from fedpoison.defenses.rejection import check_defense

        options = {"beta": self.beta} if self.rule == "trimmed-mean" else {}
        k = self.per_iteration
        try:
            check_aggregator(self.rule, k, self.f, **options)
        except ValueError as e:
            raise ConfigError("rule", str(e)) from None
        if self.defense != "none":
            # A defense aggregates every k − 1 models and the models left after dropping
            # (Section 5), so the rule must accept those counts too.
            try:
                check_defense(self.defense, self.rule, k, self.f, self.beta)
            except ValueError as e:
                raise ConfigError("defense", str(e)) from None

    # ----------------------------------------------------------------- identity
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            allowed = ", ".join(sorted(known))
            raise ConfigError(unknown[0], f"unknown config field; known: {allowed}")
        return cls(**d)

    def config_hash(self) -> str:
        """SHA-256 (hex, 16 chars) of the resolved config and the code: a run's key.

        The package's source fingerprint is included, so results of different code never
        share a key (a store recomputes after the code changes instead of reusing them).
        """
        from fedpoison.provenance import code_fingerprint

        payload = {"config": self.resolved().to_dict(), "code": code_fingerprint()}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(name, f"got {value!r}; allowed: {', '.join(allowed)}")


def _int_range(name: str, value: Any, lo: int, hi: int | None, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        extra = f" ({why})" if why else ""
        raise ConfigError(name, f"must be in {rng}{extra}, got {value}")


def _float_range(name: str, value: Any, lo: float, hi: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ConfigError(name, f"must be in {rng}, got {value}")
