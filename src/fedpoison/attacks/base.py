"""What an attack may see, and the two kinds of attack (DESIGN.md, "Contracts")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

Knowledge = Literal["full", "partial"]
Goal = Literal["directed", "deviation"]


@dataclass(frozen=True)
class AttackOptions:
    """Attack parameters from the run config (paper Table 1 and Section 4.1)."""

    goal: Goal = "directed"
    epsilon: float = 0.01  # Krum attack: crafted copies lie within ε of w'₁
    b: float = 2.0  # trimmed-mean/median full-knowledge attack: interval factor, b > 1
    threshold: float = 1e-5  # Krum attack: smallest λ tried before giving up (Section 3.2)
    # Full knowledge: estimate the before-attack change from the mean of all before-attack
    # models ("mean", default; reproduces Table 2a) or from the assumed rule ("rule", the
    # paper's literal definition of s). See docs/choices.md, "Direction s".
    direction: Literal["mean", "rule"] = "mean"


@dataclass(frozen=True)
class AttackContext:
    """Everything a model-poisoning attack may read in one iteration.

    ``compromised`` holds the before-attack local models of the compromised workers [c, d].
    ``benign`` holds those of the benign workers [m − c, d] under full knowledge and is
    ``None`` under partial knowledge, so a partial-knowledge attack cannot read them even by
    mistake. ``w_re`` is the global model the workers received this iteration.
    ``m`` is the number of models the server aggregates this iteration (a count, not a model,
    so partial knowledge may use it). ``assumed_rule`` is the aggregation rule the attacker
    crafts against (it may differ from the server's: transferability, Section 4.3), ``f`` the
    server's assumed number of
    compromised workers (known to the attacker, Section 2.3), ``beta`` trimmed mean's β.
    ``notes``, when given, collects per-iteration diagnostics an attack reports with
    ``note`` (e.g. the Krum attack's λ); the simulation summarises them in its result.
    """

    compromised: Tensor
    benign: Tensor | None
    w_re: Tensor
    m: int
    knowledge: Knowledge
    assumed_rule: str
    f: int
    generator: torch.Generator
    beta: int | None = None
    options: AttackOptions = field(default_factory=AttackOptions)
    notes: dict[str, list[float]] | None = None

    def note(self, name: str, value: float) -> None:
        """Record one value of the diagnostic ``name`` (a no-op unless ``notes`` was given)."""
        if self.notes is not None:
            self.notes.setdefault(name, []).append(float(value))

    @property
    def c(self) -> int:
        return int(self.compromised.shape[0])

    @property
    def d(self) -> int:
        return int(self.compromised.shape[1])


ModelAttack = Callable[[AttackContext], Tensor]
"""craft(ctx) -> Tensor[c, d]: the local models the compromised workers send."""


@dataclass(frozen=True)
class TrainingData:
    """The training set as the workers hold it: examples, labels and each example's worker."""

    x: Tensor
    y: Tensor
    owner: Tensor


@dataclass(frozen=True)
class DataAttackContext:
    """What a data-poisoning attack starts from (it only changes compromised workers' data)."""

    data: TrainingData
    compromised_workers: Tensor
    num_classes: int
    generator: torch.Generator
    config: Any = None  # the resolved RunConfig (budget, placement, seed for caching)


DataAttack = Callable[[DataAttackContext], TrainingData]
"""poison(ctx) -> the training data after poisoning (labels changed, examples added, ...)."""
