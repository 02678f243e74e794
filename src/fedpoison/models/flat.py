"""A named, deterministic layout of a network's parameters inside one flat float32 vector.

Every model in :mod:`fedpoison.models` is a flat vector w ∈ R^d (DESIGN.md). The layout lists
the tensors in the order of the equivalent PyTorch module's ``state_dict`` (e.g. ``conv1.weight``,
``conv1.bias``, …), each stored row-major, so that ``state_dict(w)`` can be loaded into a
``torch.nn.Module`` with the same names and ``flatten`` maps one back.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Slot:
    """One named tensor of the layout: its shape and where it sits in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def end(self) -> int:
        return self.offset + self.size


class FlatLayout:
    """Ordered (name, shape) pairs laid end to end in one vector of length ``dim``."""

    def __init__(self, entries: list[tuple[str, tuple[int, ...]]]) -> None:
        slots: list[Slot] = []
        offset = 0
        for name, shape in entries:
            slot = Slot(name, tuple(int(s) for s in shape), offset)
            slots.append(slot)
            offset = slot.end
        if len({s.name for s in slots}) != len(slots):
            raise ValueError("FlatLayout: duplicate tensor names")
        self.slots = slots
        self.by_name = {s.name: s for s in slots}
        self.dim = offset

    def __iter__(self) -> Iterator[Slot]:
        return iter(self.slots)

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def sizes(self) -> list[int]:
        return [s.size for s in self.slots]

    def split(self, W: Tensor) -> dict[str, Tensor]:
        """Views of W [k, dim] as {name: [k, *shape]} (copies only where W is not contiguous)."""
        k = W.shape[0]
        parts = W.split(self.sizes, dim=1)
        return {s.name: p.reshape(k, *s.shape) for s, p in zip(self.slots, parts, strict=True)}

    def state_dict(self, w: Tensor) -> dict[str, Tensor]:
        """One model w [dim] as {name: tensor of its shape} (views of w)."""
        if w.shape != (self.dim,):
            raise ValueError(
                f"FlatLayout: expected a vector of length {self.dim}, got {tuple(w.shape)}"
            )
        return {s.name: w[s.offset : s.end].view(s.shape) for s in self.slots}

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Inverse of ``state_dict``: one vector [dim] from {name: tensor} (extra names,
        e.g. BatchNorm's ``num_batches_tracked``, are ignored)."""
        missing = [s.name for s in self.slots if s.name not in tensors]
        if missing:
            raise KeyError(f"FlatLayout: missing tensors {missing}")
        return torch.cat([tensors[s.name].detach().reshape(-1).float() for s in self.slots])

    def flatten_rows(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Inverse of ``split``: {name: [k, *shape]} -> [k, dim]."""
        k = next(iter(tensors.values())).shape[0]
        return torch.cat([tensors[s.name].reshape(k, -1) for s in self.slots], dim=1)


def pytorch_default_init(
    layout: FlatLayout, generator: torch.Generator, he_normal_convs: bool = False
) -> Tensor:
    """PyTorch's default initialisation of every tensor of ``layout``, drawn in layout order.

    ``*.weight`` of ``nn.Linear``/``nn.Conv2d`` (2-D or more): Kaiming-uniform with a = √5, i.e.
    U(±1/√fan_in); ``*.bias`` following such a weight: U(±1/√fan_in). 1-D ``*.weight``/``*.bias``
    of a BatchNorm: 1 and 0; ``running_mean``/``running_var``: 0 and 1. With
    ``he_normal_convs`` 4-D weights are He-normal N(0, 2/fan_in) instead (He et al. 2015, the
    initialisation ResNet uses).
    """
    w = torch.empty(layout.dim)
    views = layout.state_dict(w)
    fan_in: dict[str, int] = {}
    for slot in layout:
        t = views[slot.name]
        prefix, _, kind = slot.name.rpartition(".")
        if kind == "weight" and t.dim() >= 2:
            fan_in[prefix] = math.prod(slot.shape[1:])
            if he_normal_convs and t.dim() == 4:
                torch.nn.init.kaiming_normal_(t, nonlinearity="relu", generator=generator)
            else:
                torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=generator)
        elif kind == "bias" and prefix in fan_in:
            bound = 1 / math.sqrt(fan_in[prefix])
            torch.nn.init.uniform_(t, -bound, bound, generator=generator)
        elif kind in ("weight", "running_var"):
            t.fill_(1.0)
        elif kind in ("bias", "running_mean"):
            t.zero_()
        else:
            raise ValueError(f"pytorch_default_init: no rule for {slot.name!r}")
    return w


class AutogradReference:
    """The per-worker autograd reference the batched models are tested against.

    Needs ``self._template`` (the equivalent ``nn.Module``) and ``self.layout``.
    """

    _template: torch.nn.Module
    layout: FlatLayout

    def reference_logits(self, w: Tensor, x: Tensor) -> Tensor:
        """One model w [dim] on x [n, ...] through ``torch_module()`` -> [n, L]."""
        from torch.func import functional_call

        return functional_call(self._template, self.layout.state_dict(w), (x,))

    def reference_grad(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """One worker's gradient of the mean cross-entropy by plain autograd -> [dim]."""
        w = w.detach().clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(self.reference_logits(w, x), y)
        (g,) = torch.autograd.grad(loss, w)
        return g
