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


# --------------------------------------------------- properties every attack must have
def synthetic(seed: int, m: int, d: int, *, step: float = 0.02, noise: float = 0.1
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``w_Re`` and ``m`` benign-like local models ``w_Re − step·g + noise`` (float32)."""
    g = torch.Generator().manual_seed(seed)
    w_re = torch.randn(d, generator=g)
    grad = torch.randn(d, generator=g)
    return w_re, w_re - step * grad + noise * torch.randn(m, d, generator=g)


def hostile(benign: torch.Tensor) -> list[torch.Tensor]:
    """Benign matrices with NaN, +Inf, −Inf rows, and all three at once."""
    out = []
    for values in ([torch.nan], [torch.inf], [-torch.inf], [torch.nan, torch.inf, -torch.inf]):
        B = benign.clone()
        for i, v in enumerate(values):
            B[i] = v
        out.append(B)
    return out


def loops_outside(path: str, allowed: set[str]) -> list[str]:
    """``for``/``while`` loops and comprehensions of the module at ``path`` outside the
    functions named in ``allowed`` (e.g. a search over steps): ``["func:line", ...]``."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(path).read_text())
    found: list[str] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = func
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = child.name
            if isinstance(child, ast.For | ast.While | ast.AsyncFor | ast.ListComp
                          | ast.SetComp | ast.DictComp | ast.GeneratorExp) and name not in allowed:
                found.append(f"{name}:{child.lineno}")
            visit(child, name)

    visit(tree, "<module>")
    return found
