"""Saving and loading a run's final global model in a safe format.

A model file is ``torch.save`` of plain data only, so ``torch.load(path, weights_only=True)``
reads it without running any pickled code::

    {"format": "fedpoison-model", "format_version": 1,
     "tensors": {name: tensor, ...},          # the model's named tensors (its FlatLayout,
                                              # e.g. conv1.weight) or {"flat": w}
     "layout": [[name, [shape...]], ...],     # the order of the tensors in the flat vector
     "metadata": {"config": ..., "config_hash": ..., "final_error": ..., ...}}

The names are those of the model's ``torch.nn.Module`` equivalent (``nn.Linear`` for LR:
``weight``, ``bias``), so ``module.load_state_dict(load_model(path).tensors)`` works.
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedpoison.errors import ConfigError

FORMAT = "fedpoison-model"
FORMAT_VERSION = 1

Layout = Sequence[tuple[str, Sequence[int]]]


@dataclass(frozen=True)
class SavedModel:
    """A loaded model file: named tensors, their flat order, and the run's metadata."""

    tensors: dict[str, Tensor]
    layout: list[tuple[str, tuple[int, ...]]]
    metadata: dict[str, Any]

    @property
    def flat(self) -> Tensor:
        """The flat parameter vector w (the tensors concatenated in layout order)."""
        return torch.cat([self.tensors[name].reshape(-1) for name, _ in self.layout])


def model_tensors(w: Tensor, layout: Layout | None) -> dict[str, Tensor]:
    """``{name: tensor}`` of the flat model ``w`` by ``layout`` (``{"flat": w}`` without)."""
    w = w.detach().cpu().contiguous()
    if layout is None:
        return {"flat": w.clone()}
    out: dict[str, Tensor] = {}
    offset = 0
    for name, shape in layout:
        size = math.prod(shape)
        out[name] = w[offset:offset + size].reshape(tuple(shape)).clone()
        offset += size
    if offset != w.numel():
        raise ValueError(f"model layout covers {offset} values, the model has {w.numel()}")
    return out


def check_writable(path: str | Path, option: str = "save_model") -> Path:
    """``path`` as a Path whose folder exists (created if missing) and can be written; a
    ``ConfigError`` naming ``option`` otherwise. Checked before a run, not after it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(option, f"{path} is a folder; name a file (e.g. model.pt)")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".fedpoison-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(option, f"cannot write into {folder}: {e.strerror or e}") from None
    return path


def save_model(path: str | Path, w: Tensor, layout: Layout | None,
               metadata: Mapping[str, Any]) -> Path:
    """Write the model file (atomically: a temporary file renamed into place)."""
    path = check_writable(path)
    entry = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "tensors": model_tensors(w, layout),
        "layout": [[name, list(shape)] for name, shape in layout] if layout is not None
        else [["flat", [int(w.numel())]]],
        "metadata": dict(metadata),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(entry, fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError("save_model", f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_model(path: str | Path) -> SavedModel:
    """Read a model file written by :func:`save_model` (``weights_only=True``)."""
    try:
        entry = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError("model", f"no model file at {path}") from None
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError("model", f"{path} is not a fedpoison model file ({first})") from None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        raise ConfigError("model", f"{path} is not a fedpoison model file")
    if entry.get("format_version") != FORMAT_VERSION:
        raise ConfigError("model", f"{path}: format version {entry.get('format_version')}, "
                                   f"this fedpoison reads {FORMAT_VERSION}")
    layout = [(str(n), tuple(int(s) for s in shape)) for n, shape in entry["layout"]]
    return SavedModel(dict(entry["tensors"]), layout, dict(entry["metadata"]))
