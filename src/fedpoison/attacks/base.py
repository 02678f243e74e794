"""What an attack may see, and the two kinds of attack (DESIGN.md, "Contracts")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from fedpoison.notes import note_value
from fedpoison.progress import Bar, Progress, bar_factory

Knowledge = Literal["full", "partial"]
Goal = Literal["directed", "deviation"]


@dataclass(frozen=True)
class AttackContext:
    """Everything a model-poisoning attack may read in one iteration.

    ``compromised`` holds the before-attack local models of the compromised workers [c, d].
    ``benign`` holds those of the benign workers [m − c, d] under full knowledge and is
    ``None`` under partial knowledge, so a partial-knowledge attack cannot read them even by
    mistake. ``w_re`` is the global model the workers received this iteration.
    ``m`` is the number of models the server aggregates this iteration (a count, not a model,
    so partial knowledge may use it). ``f`` is the server's assumed number of compromised
    workers (known to the attacker, Section 2.3). ``target`` is the aggregation rule the
    attacker crafts against, bound with its options (it may differ from the server's:
    transferability, Section 4.3), or ``None`` for an attack that assumes no rule.
    ``notes``, when given, collects per-iteration diagnostics an attack reports with
    ``note`` (e.g. the Krum attack's λ); the simulation summarises them in its result.
    ``init(generator) -> Tensor[d]`` is the model's own initializer, for an attack that
    draws a fresh model of the architecture (e.g. MPAF's base model); it is ``None`` when
    the context was built without a model. ``state`` is the attack's own state across the
    iterations of one run (one dict per run, kept by the adversary; e.g. Mimic's direction
    estimate); ``None`` for a one-off craft, which carries nothing over.

    Updates and models (the convention every attack uses): the update of worker i is
    ``Δᵢ = wᵢ − w_Re``; an attack defined on updates crafts ``Δ′`` and sends ``w_Re + Δ′``
    (:meth:`updates`, :meth:`models_from`).
    """

    compromised: Tensor
    benign: Tensor | None
    w_re: Tensor
    m: int
    knowledge: Knowledge
    f: int
    generator: torch.Generator
    goal: Goal = "directed"
    target: Any = None
    notes: dict[str, list[float]] | None = None
    init: Callable[[torch.Generator], Tensor] | None = None
    state: dict[str, Any] | None = None

    def note(self, name: str, value: float | Tensor) -> None:
        """Record one value of the diagnostic ``name`` (a no-op unless ``notes`` was given)."""
        if self.notes is not None:
            self.notes.setdefault(name, []).append(note_value(value))

    def aggregate(self, W: Tensor) -> Tensor:
        """The target rule (with the server's ``f``) applied to ``W``.

        A target that needs the server's context (e.g. bucketing before the rule, which
        shuffles with the server's generator) is simulated as the attacker can: with the
        attacker's own generator, ``w_Re`` as the previous model, no server state and no
        server data (docs/choices.md, "Standard attacks")."""
        if self.target is None:
            raise ValueError("this attack was given no target rule")
        if getattr(self.target, "needs", None):
            from fedpoison.server import ServerContext  # the server imports the attacks

            ctx = ServerContext(0, self.w_re, {}, self.generator, rows=int(W.shape[0]))
            return self.target(W, self.f, ctx)
        return self.target(W, self.f)

    def updates(self, models: Tensor) -> Tensor:
        """``Δ = models − w_Re`` (float32, on ``w_re``'s device): models as updates."""
        return models.detach().to(self.w_re.device, torch.float32) - self.w_re.detach().float()

    def models_from(self, updates: Tensor) -> Tensor:
        """``w_Re + Δ′``: crafted updates as the models the compromised workers send."""
        return self.w_re.detach().float() + updates.to(self.w_re.device, torch.float32)

    @property
    def c(self) -> int:
        return int(self.compromised.shape[0])

    @property
    def d(self) -> int:
        return int(self.compromised.shape[1])


ModelAttack = Callable[..., Tensor]
"""craft(ctx, **options) -> Tensor[c, d]: the local models the compromised workers send."""


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
    seed: int = 0  # the run's seed (an attack may cache what it derives from it)
    dataset: str = ""  # the dataset's name and training subset, for such caches
    train_subset: int | None = None
    progress: Progress = False  # show progress of long preparation (see progress_bar)

    def progress_bar(self, desc: str, total: int, unit: str = "step") -> Bar:
        """A progress bar for long preparation (``fedpoison.progress``): shown on the command
        line and in sweeps, timed by ``--dry-run``'s estimate; nothing when disabled."""
        return bar_factory(self.progress)(desc=desc, total=total, unit=unit)


DataAttack = Callable[..., TrainingData]
"""poison(ctx, **options) -> the training data after poisoning (labels changed, examples
added, ...)."""
