"""Attacks by name: model poisoning (craft the compromised local models) and data poisoning.

A model attack is ``craft(ctx: AttackContext) -> Tensor[c, d]``; its name is also the
aggregation rule it is crafted against (the paper's "Krum attack" and "trimmed mean attack";
Section 3.4 uses the trimmed-mean attack for median). A data attack changes the compromised
workers' training data before training.
"""

from __future__ import annotations

from fedpoison.attacks.base import (
    AttackContext,
    AttackOptions,
    DataAttack,
    DataAttackContext,
    ModelAttack,
    TrainingData,
)
from fedpoison.attacks.bga import bga_attack
from fedpoison.attacks.data_poisoning import label_flip
from fedpoison.attacks.gaussian import gaussian_attack
from fedpoison.attacks.krum_attack import (
    KrumLambda,
    krum_attack,
    krum_attack_solution,
    solve_krum_lambda,
    solve_partial_krum_lambda,
)
from fedpoison.attacks.trimmed_mean_attack import median_attack, trimmed_mean_attack

MODEL_ATTACKS: dict[str, ModelAttack] = {
    "gaussian": gaussian_attack,
    "krum": krum_attack,
    "trimmed-mean": trimmed_mean_attack,
    "median": median_attack,
}
DATA_ATTACKS: dict[str, DataAttack] = {"label-flip": label_flip, "bga": bga_attack}


def attack_names() -> tuple[str, ...]:
    """Every attack the config accepts, ``none`` first."""
    return ("none", *MODEL_ATTACKS, *DATA_ATTACKS)


def check_model_attack(name: str, knowledge: str, goal: str) -> None:
    """Reject a model attack / knowledge / goal combination that ``craft`` would refuse.

    For config validation: the deviation goal (Appendix B) is defined for full knowledge;
    the Krum attack extends it to partial knowledge (it needs no direction), the
    trimmed-mean/median attack cannot (it needs the benign range). Raises ``ValueError``.
    """
    if name not in MODEL_ATTACKS:
        raise ValueError(f"unknown model attack {name!r}; allowed: {', '.join(MODEL_ATTACKS)}")
    if knowledge not in ("full", "partial"):
        raise ValueError(f"{name} attack: knowledge must be 'full' or 'partial', got {knowledge!r}")
    if goal not in ("directed", "deviation"):
        raise ValueError(f"{name} attack: goal must be 'directed' or 'deviation', got {goal!r}")
    if name in ("trimmed-mean", "median") and knowledge == "partial" and goal == "deviation":
        raise ValueError(f"{name} attack: goal 'deviation' is defined for full knowledge only "
                         "(Appendix B)")


__all__ = [
    "DATA_ATTACKS",
    "MODEL_ATTACKS",
    "AttackContext",
    "AttackOptions",
    "DataAttack",
    "DataAttackContext",
    "KrumLambda",
    "ModelAttack",
    "TrainingData",
    "attack_names",
    "check_model_attack",
    "gaussian_attack",
    "krum_attack",
    "krum_attack_solution",
    "label_flip",
    "median_attack",
    "solve_krum_lambda",
    "solve_partial_krum_lambda",
    "trimmed_mean_attack",
]
