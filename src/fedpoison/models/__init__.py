"""Models usable as flat parameter vectors, by name."""

from __future__ import annotations

from collections.abc import Callable

from fedpoison.data.base import Dataset
from fedpoison.models.base import FlatModel
from fedpoison.models.cnn import CNN
from fedpoison.models.lr import LogisticRegression
from fedpoison.models.mlp import MLP
from fedpoison.models.resnet20 import ResNet20

ModelFactory = Callable[[Dataset], FlatModel]


def _lr(ds: Dataset) -> FlatModel:
    return LogisticRegression(ds.num_features, ds.num_classes)


def _image_shape(ds: Dataset, model: str) -> tuple[int, int, int]:
    shape = ds.input_shape
    if len(shape) != 3:
        raise ValueError(
            f"model: {model!r} needs image inputs [C, H, W]; dataset {ds.name!r} has shape "
            f"{list(shape)} (use 'mlp' or 'lr' for tabular data)"
        )
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def _cnn(ds: Dataset) -> FlatModel:
    return CNN(_image_shape(ds, "cnn"), ds.num_classes)


def _mlp(ds: Dataset) -> FlatModel:
    return MLP(ds.num_features, ds.num_classes)


def _resnet20(ds: Dataset) -> FlatModel:
    return ResNet20(_image_shape(ds, "resnet20"), ds.num_classes)


MODELS: dict[str, ModelFactory] = {"lr": _lr, "cnn": _cnn, "mlp": _mlp, "resnet20": _resnet20}


def build_model(name: str, dataset: Dataset) -> FlatModel:
    """The model ``name`` sized for ``dataset``; unknown names raise ValueError."""
    if name not in MODELS:
        raise ValueError(f"model: unknown model {name!r}; allowed: {', '.join(MODELS)}")
    return MODELS[name](dataset)


__all__ = ["CNN", "MLP", "MODELS", "FlatModel", "LogisticRegression", "ResNet20", "build_model"]
