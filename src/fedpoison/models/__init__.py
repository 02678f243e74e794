"""Models usable as flat parameter vectors, by name.

Each model registers itself in its own module (:func:`fedpoison.register_model`) with a
factory ``factory(dataset) -> FlatModel``; a factory may instead return any
``torch.nn.Module``, which the generic ``torch.func`` adapter (:mod:`.functional`) trains.
"""

from __future__ import annotations

from typing import Any

from fedpoison import registry
from fedpoison.data.base import Dataset
from fedpoison.models.base import FlatModel
from fedpoison.models.cnn import CNN
from fedpoison.models.functional import ModuleModel
from fedpoison.models.lr import LogisticRegression
from fedpoison.models.mlp import MLP
from fedpoison.models.resnet20 import ResNet20
from fedpoison.registry import import_submodules


def build_model(name: str, dataset: Dataset) -> FlatModel:
    """The registered model ``name`` sized for ``dataset`` (``ConfigError`` if unknown)."""
    from torch import nn

    spec = registry.get("model", name)
    spec.check_inputs(dataset.name, dataset.input_shape)
    made: Any = spec.impl(dataset)
    if isinstance(made, nn.Module):
        return ModuleModel(lambda: spec.impl(dataset), dataset.num_classes, name=spec.name)
    return made


__all__ = ["CNN", "MLP", "FlatModel", "LogisticRegression", "ModuleModel", "ResNet20",
           "build_model"]

# Every module of this package registers its components when imported: a new component needs
# only its own file.
import_submodules(__name__, __path__)
