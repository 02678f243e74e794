"""The adversary of one run: which workers are compromised, when they attack, and how.

A model-poisoning attack replaces the compromised workers' local models with crafted ones
in the poisoned iterations (Section 3): it is handed an :class:`AttackContext` holding only
what its knowledge level allows (under partial knowledge the benign models are not in it at
all). A data-poisoning attack changes the compromised workers' training data once, before
training (Section 4.1, 4.4). The rule an attack is crafted against is an option of the
attack (``target_rule``, default the server's rule), bound here with the server's ``f``.

An attack that declares a backdoor (:class:`~fedpoison.registry.Backdoor`) has a data part
done here, whatever its kind: a share of the compromised workers' training examples gets the
trigger and the target label (the simulation uses them in the poisoned iterations only), and
:meth:`Adversary.backdoor_test` gives the stamped non-target test examples on which the run
measures the attack success rate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fedpoison import registry
from fedpoison.attacks.base import AttackContext, DataAttackContext, TrainingData
from fedpoison.errors import ConfigError
from fedpoison.registry import AttackSpec, Backdoor
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
    init: Callable[[torch.Generator], Tensor] | None = None  # the model's initializer
    state: dict[str, Any] = field(default_factory=dict)  # the attack's, across iterations

    @classmethod
    def build(cls, attack: str, options: Mapping[str, Any], *, compromised: Tensor,
              workers: int, schedule: Tensor, knowledge: str | None, goal: str | None,
              f: int, generator: torch.Generator, server_rule: str,
              server_rule_options: Mapping[str, Any],
              server_preaggs: tuple[tuple[str, Mapping[str, Any]], ...] = (),
              init: Callable[[torch.Generator], Tensor] | None = None) -> Adversary:
        """The adversary of a resolved config (``attack`` ``none`` gives an idle one).
        ``init`` is the model's initializer, handed to model attacks (``ctx.init``)."""
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
                   target, init=init)

    @property
    def crafts_models(self) -> bool:
        return self.spec is not None and not self.spec.data

    @property
    def backdoor(self) -> Backdoor | None:
        """The attack's backdoor declaration, or ``None``."""
        return None if self.spec is None else self.spec.backdoor

    def poison_data(self, ctx: DataAttackContext) -> TrainingData:
        """The training data after a data-poisoning attack, or with a backdoor's trigger
        stamped on the compromised workers' examples (unchanged otherwise)."""
        if self.spec is None:
            return ctx.data
        if self.spec.data:
            return self.spec.impl(ctx, **self.options)
        if self.backdoor is not None:
            return self._stamp_training(ctx)
        return ctx.data

    def _target_class(self, num_classes: int) -> int:
        assert self.spec is not None and self.backdoor is not None
        name = self.backdoor.target
        target = int(self.options[name])
        if not 0 <= target < num_classes:
            raise ConfigError("attack_options", f"{self.spec.label}, option {name}: the "
                                                f"target class must be in [0, {num_classes - 1}]"
                                                f", got {target}")
        return target

    def stamp(self, x: Tensor) -> Tensor:
        """``x`` [n, ...] with the backdoor's trigger (the attack's options applied)."""
        assert self.spec is not None and self.backdoor is not None
        try:
            out = self.backdoor.stamp(x, **self.options)
        except ValueError as e:
            raise ConfigError("attack_options", f"{self.spec.label}: {e}") from None
        if out.shape != x.shape or out is x:
            raise ValueError(f"{self.spec.label}: stamp must return a new tensor of the "
                             f"inputs' shape {tuple(x.shape)}")
        return out.to(x.dtype)

    def _stamp_training(self, ctx: DataAttackContext) -> TrainingData:
        """The backdoor's share of every compromised worker's examples, stamped and labelled
        with the target class (a seeded coin per example when the share is below 1)."""
        assert self.backdoor is not None
        data = ctx.data
        target = self._target_class(ctx.num_classes)
        chosen = torch.isin(data.owner, ctx.compromised_workers)
        share = 1.0 if self.backdoor.share is None else float(self.options[self.backdoor.share])
        if share < 1.0:
            chosen &= torch.rand(data.owner.shape, generator=ctx.generator) < share
        x = data.x.clone()
        x[chosen] = self.stamp(data.x[chosen])
        y = torch.where(chosen, torch.full_like(data.y, target), data.y)
        return TrainingData(x=x, y=y, owner=data.owner)

    def backdoor_test(self, x: Tensor, y: Tensor, num_classes: int
                      ) -> tuple[Tensor, Tensor] | None:
        """The test examples whose class is not the target, with the trigger, and the target
        as their label: the attack succeeds on an example when the model predicts its label.
        ``None`` without a backdoor."""
        if self.backdoor is None:
            return None
        target = self._target_class(num_classes)
        keep = y != target
        xs = self.stamp(x[keep])
        return xs, torch.full_like(y[keep], target)

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
            init=self.init,
            state=self.state,
        )
        W[rows] = self.spec.impl(ctx, **self.options).to(W.dtype)
        return rows
