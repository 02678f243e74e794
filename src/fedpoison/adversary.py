"""The adversary of one run: which workers are compromised, when they attack, and how.

A model-poisoning attack replaces the compromised workers' local models with crafted ones
in the poisoned iterations (Section 3): it is handed an :class:`AttackContext` holding only
what its knowledge level allows (under partial knowledge the benign models are not in it at
all). A data-poisoning attack changes the compromised workers' training data once, before
training (Section 4.1, 4.4). The rule an attack is crafted against is an option of the
attack (``target_rule``, default the server's rule), bound here with the server's ``f``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fedpoison import registry
from fedpoison.attacks.base import AttackContext, DataAttackContext, TrainingData
from fedpoison.registry import AttackSpec
from fedpoison.server import Notes, Pipeline, bind_pipeline


def choose_compromised(workers: int, c: int, how: str | None, g: torch.Generator) -> Tensor:
    """The ``c`` compromised worker ids, sorted: ``random`` (default, also for ``None``) a
    seeded uniform choice from ``g``; ``first`` workers ``0..c−1`` (the paper's "without loss
    of generality, the first c")."""
    if how == "first":
        return torch.arange(c)
    if how not in (None, "random"):
        raise ValueError(f"compromised_choice must be random or first, got {how!r}")
    return torch.randperm(workers, generator=g)[:c].sort()[0]


def poisoned_iterations(iterations: int, fraction: float, g: torch.Generator) -> Tensor:
    """Bool [iterations]: exactly round(fraction·T) iterations, chosen uniformly at random."""
    n = round(fraction * iterations)
    mask = torch.zeros(iterations, dtype=torch.bool)
    mask[torch.randperm(iterations, generator=g)[:n]] = True
    return mask


@dataclass
class Adversary:
    """The attack, its options, the compromised workers and the poisoned iterations."""

    spec: AttackSpec | None
    options: dict[str, Any]
    compromised: Tensor  # sorted worker ids, int64 [c]
    is_compromised: Tensor  # bool [m]
    schedule: Tensor  # bool [T]: which iterations are poisoned
    knowledge: str | None
    goal: str | None
    f: int
    generator: torch.Generator
    target: Pipeline | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, attack: str, options: Mapping[str, Any], *, compromised: Tensor,
              workers: int, schedule: Tensor, knowledge: str | None, goal: str | None,
              f: int, generator: torch.Generator, server_rule: str,
              server_rule_options: Mapping[str, Any],
              server_preaggs: tuple[tuple[str, Mapping[str, Any]], ...] = ()) -> Adversary:
        """The adversary of a resolved config (``attack`` ``none`` gives an idle one)."""
        is_c = torch.zeros(workers, dtype=torch.bool)
        is_c[compromised] = True
        spec = None if attack == "none" else registry.get("attack", attack)
        opts = dict(options)
        target = None
        if spec is not None:
            target_name = spec.target if spec.target != "option" else opts.pop("target_rule")
            if target_name is not None:
                # The server's own rule keeps the server's options; another rule its defaults.
                if target_name == server_rule:
                    target = bind_pipeline(server_rule, server_rule_options, server_preaggs)
                else:
                    target = bind_pipeline(target_name, {})
        return cls(spec, opts, compromised, is_c, schedule, knowledge, goal, f, generator,
                   target)

    @property
    def crafts_models(self) -> bool:
        return self.spec is not None and not self.spec.data

    def poison_data(self, ctx: DataAttackContext) -> TrainingData:
        """The training data after a data-poisoning attack (unchanged otherwise)."""
        if self.spec is None or not self.spec.data:
            return ctx.data
        return self.spec.impl(ctx, **self.options)

    def craft(self, W: Tensor, workers: Tensor, w_re: Tensor, t: int,
              notes: Notes | None) -> Tensor | None:
        """Replace the compromised rows of ``W`` (in place) in a poisoned iteration.

        ``workers`` are the ids of the rows of ``W``. Returns the bool mask of crafted rows,
        or ``None`` when nothing was crafted (no model attack, a clean iteration, or no
        compromised worker sampled).
        """
        if not self.crafts_models or not bool(self.schedule[t - 1]):
            return None
        rows = self.is_compromised[workers].to(W.device)
        if not bool(rows.any()):
            return None
        assert self.spec is not None and self.knowledge is not None
        ctx = AttackContext(
            compromised=W[rows],
            benign=W[~rows] if self.knowledge == "full" else None,
            w_re=w_re,
            m=W.shape[0],
            knowledge=self.knowledge,  # type: ignore[arg-type]
            goal=self.goal or "directed",  # type: ignore[arg-type]
            f=self.f,
            generator=self.generator,
            target=self.target,
            notes=notes,
        )
        W[rows] = self.spec.impl(ctx, **self.options).to(W.dtype)
        return rows
