"""Shared builders for the attack tests: an AttackContext over synthetic local models."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedpoison.attacks import AttackContext, AttackOptions


@dataclass(frozen=True)
class Options(AttackOptions):
    """AttackOptions plus the direction estimator ("mean" default, "rule")."""

    direction: str = "mean"


def make_context(w_re: torch.Tensor, W: torch.Tensor, *, rule: str, c: int,
                 knowledge: str = "full", f: int | None = None, beta: int | None = None,
                 seed: int = 1, benign: torch.Tensor | None = None,
                 **options: object) -> AttackContext:
    """The first ``c`` rows of ``W`` are compromised; benign rows are ``W[c:]`` (or
    ``benign``) under full knowledge and absent under partial unless ``benign`` is given."""
    full = knowledge == "full"
    return AttackContext(
        compromised=W[:c],
        benign=(W[c:] if benign is None else benign) if full or benign is not None else None,
        w_re=w_re,
        m=W.shape[0],
        knowledge=knowledge,  # type: ignore[arg-type]
        assumed_rule=rule,
        f=c if f is None else f,
        beta=beta,
        generator=torch.Generator().manual_seed(seed),
        options=Options(**options),  # type: ignore[arg-type]
    )
