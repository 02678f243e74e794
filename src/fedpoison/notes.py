"""Per-iteration diagnostics (``RunResult.diagnostics``) as they are recorded.

A value may stay a 0-dim tensor on the run's device until it is read, so that recording a
diagnostic never makes the host wait for the device within an iteration.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: Per-iteration diagnostics by name. A value may be a 0-dim tensor, on the run's device,
#: until :func:`settle_notes` reads them all at once: recording a diagnostic must not make
#: the host wait for the device every iteration.
Notes = dict[str, list[Any]]


def note_value(value: Any) -> Any:
    """What a diagnostic's list keeps of ``value``: a float, or a detached 0-dim tensor."""
    if isinstance(value, Tensor):
        return value.detach().reshape(())
    return float(value)


def settle_notes(notes: Notes) -> Notes:
    """Replace the tensors among ``notes``' values by floats, in place, with one transfer
    per device (called where the values are read: evaluations and the run's end)."""
    pending: dict[torch.device, list[tuple[list[Any], int]]] = {}
    for values in notes.values():
        for i, v in enumerate(values):
            if isinstance(v, Tensor):
                pending.setdefault(v.device, []).append((values, i))
    for where in pending.values():
        got = torch.stack([values[i].to(torch.float64) for values, i in where]).tolist()
        for (values, i), v in zip(where, got, strict=True):
            values[i] = v
    return notes
