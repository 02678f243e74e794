"""Model replacement (Bagdasaryan, Veit, Hua, Estrin, Shmatikov, AISTATS 2020).

The attacker trains a backdoored model X from the global model G on its own data with a
trigger stamped and the label set to the target class, mixed with its correctly labelled
data, then submits ``L̃ = γ·(X − G) + G`` (the paper's Section 4, "model replacement") so
that averaging replaces the global model with X: with the server update
``G ← G + η/n · Σᵢ (Lᵢ − G)``, γ = n/η cancels the averaging. fedpoison's server sets the
new global model to the rule's output, which for the mean rule is ``G + 1/m′ · Σᵢ (Lᵢ − G)``
over the m′ models it aggregates (server learning rate 1), so n/η = m′. The authors' code
divides the factor among the attackers selected in the same round
(``scale_weights / current_number_of_adversaries``), so that together they replace the
model once: the default γ is ``m′ / c′``, c′ the compromised workers among the m′
(docs/choices.md).

The data part is declared, not written here: :class:`~fedpoison.registry.Backdoor` tells the
adversary to stamp ``poison_share`` of each compromised worker's examples with
:func:`stamp` and relabel them ``target`` (in poisoned iterations; the rest stay clean, the
mix the paper trains on), and the run to report the attack success rate on the stamped
non-target test examples. In a poisoned iteration the compromised workers' local models are
therefore X (one local training from G on that data), and :func:`scaling_attack` scales them.

Trigger (choice): a ``trigger_size`` × ``trigger_size`` square of ``trigger_value`` (1.0 =
white for images stored as uint8/255) in the bottom-right corner of every channel, the
BadNets pattern; on tabular inputs the last ``trigger_size`` features are set to
``trigger_value``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fedpoison.attacks.base import AttackContext
from fedpoison.registry import KNOWLEDGE, Backdoor, Diagnostic, Option, register_attack

__all__ = ["scaling_attack", "stamp"]


def stamp(x: Tensor, *, trigger_size: int, trigger_value: float, **_: Any) -> Tensor:
    """``x`` with the trigger: images [n, C, H, W] get a bottom-right square of side
    ``trigger_size`` set to ``trigger_value`` in every channel; tabular rows [n, F] their last
    ``trigger_size`` features. Returns a new tensor."""
    s = trigger_size
    if x.dim() == 4:
        if s > min(x.shape[2], x.shape[3]):
            raise ValueError(f"option trigger_size: {s} does not fit images of "
                             f"{x.shape[2]}×{x.shape[3]}")
        out = x.clone()
        out[:, :, -s:, -s:] = trigger_value
        return out
    if x.dim() == 2:
        if s > x.shape[1]:
            raise ValueError(f"option trigger_size: {s} is more than the {x.shape[1]} "
                             "features")
        out = x.clone()
        out[:, -s:] = trigger_value
        return out
    raise ValueError(f"cannot stamp inputs of shape {tuple(x.shape)}: images [n, C, H, W] or "
                     "tabular [n, F] only")


def scaling_attack(ctx: AttackContext, *, scale: float | None, **_: Any) -> Tensor:
    """``craft(ctx)``: ``G + γ·(X − G)`` for each compromised worker's backdoored local model
    X, γ = ``scale`` or ``m′/c′`` by default: ``[c, d]``."""
    gamma = ctx.m / ctx.c if scale is None else scale
    ctx.note("scale", gamma)
    return ctx.models_from(gamma * ctx.updates(ctx.compromised))


register_attack(
    "scaling", scaling_attack,
    reference="Bagdasaryan, Veit, Hua, Estrin, Shmatikov, 'How To Backdoor Federated "
              "Learning', AISTATS 2020: Section 4 (model replacement, L = γ(X − G) + G, "
              "γ = n/η)",
    summary="backdoor: compromised workers train on trigger-stamped data labelled with the "
            "target class and scale their update by γ to replace the global model",
    options=[
        Option("scale", None, "γ, the factor of the backdoored update (the paper's n/η)",
               type=float, low=0.0, low_open=True,
               default_text="m′/c′: models aggregated over compromised among them"),
        Option("target", 0, "the backdoor's target class", low=0),
        Option("trigger_size", 3, "side of the square trigger in the bottom-right corner "
               "(images) or number of last features set (tabular)", low=1),
        Option("trigger_value", 1.0, "value of the trigger's pixels or features (1 = white)"),
        Option("poison_share", 0.5, "share of each compromised worker's examples stamped "
               "and relabelled (the rest stay clean)", low=0.0, high=1.0, low_open=True),
    ],
    knowledge=KNOWLEDGE, goals=(),
    diagnostics=[Diagnostic("scale", "the scaling attack's factor γ")],
    backdoor=Backdoor(stamp=stamp, target="target", share="poison_share"),
)
