"""Models usable as flat parameter vectors, by name."""

from __future__ import annotations

from collections.abc import Callable

from fedpoison.data.base import Dataset
from fedpoison.models.base import FlatModel
from fedpoison.models.lr import LogisticRegression

ModelFactory = Callable[[Dataset], FlatModel]


def _lr(ds: Dataset) -> FlatModel:
    return LogisticRegression(ds.num_features, ds.num_classes)


MODELS: dict[str, ModelFactory] = {"lr": _lr}


def build_model(name: str, dataset: Dataset) -> FlatModel:
    """The model ``name`` sized for ``dataset``; unknown names raise ValueError."""
    if name not in MODELS:
        raise ValueError(f"model: unknown model {name!r}; allowed: {', '.join(MODELS)}")
    return MODELS[name](dataset)


__all__ = ["MODELS", "FlatModel", "LogisticRegression", "build_model"]
