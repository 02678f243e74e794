"""Shared builders for the attack tests: an AttackContext over synthetic local models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fedpoison import registry
from fedpoison.attacks import AttackContext
from fedpoison.server import bind_pipeline


@dataclass(frozen=True)
class OptionsContext(AttackContext):
    """An AttackContext that also carries the attack options a test asks for."""

    options: dict[str, Any] = field(default_factory=dict)


def make_context(w_re: torch.Tensor, W: torch.Tensor, *, rule: str, c: int,
                 knowledge: str = "full", f: int | None = None, beta: int | None = None,
                 seed: int = 1, benign: torch.Tensor | None = None, goal: str = "directed",
                 **options: Any) -> OptionsContext:
    """The first ``c`` rows of ``W`` are compromised; benign rows are ``W[c:]`` (or
    ``benign``) under full knowledge and absent under partial unless ``benign`` is given.
    ``rule`` is the target rule (trimmed mean with ``beta`` when given; none when ``rule``
    names no rule)."""
    full = knowledge == "full"
    target = None
    if (("rule", rule)) in registry.REGISTRY:
        target = bind_pipeline(rule, {"beta": beta} if beta is not None else {})
    return OptionsContext(
        compromised=W[:c],
        benign=(W[c:] if benign is None else benign) if full or benign is not None else None,
        w_re=w_re,
        m=W.shape[0],
        knowledge=knowledge,  # type: ignore[arg-type]
        goal=goal,  # type: ignore[arg-type]
        f=c if f is None else f,
        generator=torch.Generator().manual_seed(seed),
        target=target,
        options=dict(options),
    )


def craft(name: str, ctx: AttackContext) -> torch.Tensor:
    """The registered attack ``name`` (aliases allowed) on ``ctx`` with its test options."""
    spec = registry.get("attack", name)
    return spec.impl(ctx, **getattr(ctx, "options", {}))
