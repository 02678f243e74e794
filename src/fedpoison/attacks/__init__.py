"""Attacks: model poisoning (craft the compromised local models) and data poisoning.

Each attack registers itself in its own module (:func:`fedpoison.register_attack`): a model
attack is ``craft(ctx: AttackContext, **options) -> Tensor[c, d]``, a data attack
``poison(ctx: DataAttackContext, **options) -> TrainingData``. Importing this package
imports every module in it, which registers the built-in attacks: a new attack is one new
module here (and its test), named nowhere else.
"""

from __future__ import annotations

import importlib
import pkgutil

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
from fedpoison.attacks.trimmed_mean_attack import trimmed_mean_attack

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
    "solve_krum_lambda",
    "solve_partial_krum_lambda",
    "trimmed_mean_attack",
]

# Every other module of this package registers its attack when imported.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module

