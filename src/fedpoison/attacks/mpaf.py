"""MPAF: model poisoning with fake clients (Cao and Gong, CVPR Workshops 2022).

The attacker picks a *base model* w̃ of low accuracy once, and in every round each fake
client sends the update ``λ·(w̃ − w_Re)`` that points from the current global model to the
base model, scaled up by ``λ`` to outweigh the genuine clients (the paper's Section 4). The
attack needs no data and sees nothing of the genuine clients: it works under full and partial
knowledge alike, and the fake clients' own local training is ignored. In fedpoison the fake
clients are the compromised workers (their data goes unused).

Base model (choice, docs/choices.md): ``base: init`` draws w̃ with the model's own
initializer from the fixed seed ``base_seed``, i.e. a randomly initialized model of the
architecture as in the paper; for fedpoison's logistic regression, whose initializer is
zeros, that is the zero model (it predicts class 0 for every input). ``base: normal`` draws
every coordinate from ``N(0, base_std²)`` instead. The same seed gives the same w̃ in every
iteration and every run, so w̃ is drawn once in effect (recomputing it costs less than
keeping it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedpoison.attacks.base import AttackContext
from fedpoison.registry import KNOWLEDGE, Option, register_attack

__all__ = ["base_model", "mpaf_attack"]


def base_model(ctx: AttackContext, *, base: str, base_seed: int, base_std: float) -> Tensor:
    """The attacker's base model w̃ [d] (float32 on ``w_re``'s device)."""
    g = torch.Generator().manual_seed(base_seed)
    if base == "init":
        if ctx.init is None:
            raise ValueError("mpaf: base 'init' needs the model's initializer (ctx.init)")
        w = ctx.init(g)
        if w.shape != (ctx.d,):
            raise ValueError(f"mpaf: the model's initializer gave shape {tuple(w.shape)}, "
                             f"expected ({ctx.d},)")
    else:
        w = base_std * torch.randn(ctx.d, generator=g)
    return w.to(ctx.w_re.device, torch.float32)


def mpaf_attack(ctx: AttackContext, *, scale: float, base: str, base_seed: int,
                base_std: float) -> Tensor:
    """``craft(ctx)``: every fake client sends ``w_Re + λ·(w̃ − w_Re)``: ``[c, d]``."""
    w_base = base_model(ctx, base=base, base_seed=base_seed, base_std=base_std)
    delta = scale * (w_base - ctx.w_re.detach().float())
    return ctx.models_from(delta).expand(ctx.c, -1).clone()


register_attack(
    "mpaf", mpaf_attack,
    reference="Cao, Gong, 'MPAF: Model Poisoning Attacks to Federated Learning based on "
              "Fake Clients', CVPR Workshops 2022: Section 4 (fake update λ(w' − w^t) toward "
              "a randomly initialized base model w')",
    summary="fake clients drag the global model toward a random base model w̃: each sends "
            "the update λ·(w̃ − w_Re)",
    options=[
        Option("scale", 1e6, "λ, the factor of the fake update λ·(w̃ − w_Re)",
               low=0.0, low_open=True),
        Option("base", "init", "how the base model w̃ is drawn: init = the model's own "
               "initializer (zeros for lr), normal = N(0, base_std²) per coordinate",
               choices=("init", "normal")),
        Option("base_seed", 0, "seed the base model is drawn from (fixed: the same w̃ in "
               "every iteration and run)", low=0),
        Option("base_std", 1.0, "standard deviation of each coordinate of w̃ with base normal",
               low=0.0, low_open=True),
    ],
    knowledge=KNOWLEDGE, goals=(),
)
