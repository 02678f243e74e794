"""Attacks: model poisoning (craft the compromised local models) and data poisoning.

Each attack registers itself in its own module (:func:`fedpoison.register_attack`): a model
attack is ``craft(ctx: AttackContext, **options) -> Tensor[c, d]``, a data attack
``poison(ctx: DataAttackContext, **options) -> TrainingData``. Importing this package
imports every module in it, which registers the built-in attacks: a new attack is one new
module here (and its test), named nowhere else.
"""

from __future__ import annotations

from fedpoison.attacks.base import (
    AttackContext,
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
from fedpoison.attacks.mpaf import mpaf_attack
from fedpoison.attacks.scaling import scaling_attack
from fedpoison.attacks.trimmed_mean_attack import trimmed_mean_attack
from fedpoison.registry import import_submodules

__all__ = [
    "AttackContext",
    "DataAttack",
    "DataAttackContext",
    "KrumLambda",
    "ModelAttack",
    "TrainingData",
    "bga_attack",
    "gaussian_attack",
    "krum_attack",
    "krum_attack_solution",
    "label_flip",
    "mpaf_attack",
    "scaling_attack",
    "solve_krum_lambda",
    "solve_partial_krum_lambda",
    "trimmed_mean_attack",
]

# Every module of this package registers its components when imported: a new component needs
# only its own file.
import_submodules(__name__, __path__)
