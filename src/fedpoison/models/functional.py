"""Any ``torch.nn.Module`` as a flat-vector model, trained for all workers with ``torch.func``.

A model factory registered with :func:`fedpoison.register_model` may return an ``nn.Module``;
it is wrapped in :class:`ModuleModel`: the module's parameters, in ``named_parameters()``
order, are the flat vector; the per-worker gradient is ``vmap(grad(loss))`` over the
workers' parameter rows with ``functional_call``, and evaluation ``vmap`` of the forward
pass. It is the generic path: the hand-written LR, CNN, MLP and ResNet20 are fast paths,
tested against it (tests/test_models.py), and ``benchmarks/bench_cnn.py`` times both.

Limits, checked when the model is built: the module must be deterministic in evaluation
mode (it always runs in ``eval()`` mode, so dropout is off) and hold no state that training
updates (BatchNorm with running statistics: use ``track_running_stats=False``, GroupNorm or
LayerNorm). Floating buffers are constants shared by all workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedpoison.errors import ConfigError
from fedpoison.models.batched import MEMORY_BUDGET
from fedpoison.models.flat import FlatLayout

__all__ = ["ModuleModel"]


def _check_module(module: Any, name: str) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise ConfigError("model", f"{name}: the factory returned {type(module).__name__}, "
                                   "not a FlatModel or torch.nn.Module")
    for sub_name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.track_running_stats:
            raise ConfigError("model", f"{name}: {sub_name or 'the module'} is a BatchNorm "
                                       "with running statistics, which training would update "
                                       "per worker; use track_running_stats=False, GroupNorm "
                                       "or LayerNorm")
    params = list(module.named_parameters())
    if not params:
        raise ConfigError("model", f"{name}: the module has no parameters")
    for p_name, p in params:
        if p.dtype != torch.float32:
            raise ConfigError("model", f"{name}: parameter {p_name} is {p.dtype}; fedpoison "
                                       "trains float32 parameters")
    return module


class ModuleModel:
    """A user's ``nn.Module`` as a flat float32 vector (see the module docstring)."""

    def __init__(self, make: Callable[[], nn.Module], num_classes: int, *, name: str = "model",
                 memory_budget: int = MEMORY_BUDGET) -> None:
        with torch.random.fork_rng(devices=[]):  # building it must not move the global RNG
            module = _check_module(make(), name)
        module.eval()
        self._make = make
        self.name = name
        self.num_classes = num_classes
        self.layout = FlatLayout([(n, tuple(p.shape)) for n, p in module.named_parameters()])
        self.dim = self.layout.dim
        self._module = module.requires_grad_(False)
        self._buffers = {n: b for n, b in module.named_buffers()}
        self.memory_budget = memory_budget
        self._device: torch.device | None = None

    # ---------------------------------------------------------------- parameters
    def init(self, generator: torch.Generator) -> Tensor:
        """The module's own initialisation, drawn under a seed taken from ``generator``."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = self._make()
        return self.layout.flatten(dict(module.named_parameters()))

    def _on(self, device: torch.device) -> None:
        if self._device != device:
            self._module = self._module.to(device)
            self._buffers = {n: b.to(device) for n, b in self._buffers.items()}
            self._device = device

    def _forward(self, w: Tensor, x: Tensor) -> Tensor:
        from torch.func import functional_call

        state = {**self.layout.state_dict(w), **self._buffers}
        return functional_call(self._module, state, (x,))

    # ------------------------------------------------------------------- batched
    def logits(self, W: Tensor, x: Tensor) -> Tensor:
        """k models on the same inputs: W [k, dim], x [n, ...] -> [k, n, L]."""
        from torch.func import vmap

        self._on(W.device)
        k = W.shape[0]
        per_example = 4 * (x[0].numel() if x.shape[0] else 1) * 16
        per = max(1, self.memory_budget // max(1, k * per_example))
        out = []
        with torch.no_grad():
            for s in range(0, x.shape[0], per):
                xs = x[s : s + per]
                out.append(vmap(self._forward, in_dims=(0, None))(W, xs))
        return torch.cat(out, 1) if out else x.new_zeros(k, 0, self.num_classes)

    def batched_grad(self, W: Tensor, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """Per-worker gradient of the mean cross-entropy over each worker's own (masked)
        batch: ``vmap(grad(loss))`` over the rows of W [k, dim] -> [k, dim]."""
        from torch.func import grad, vmap

        self._on(W.device)

        def loss(w: Tensor, xb: Tensor, yb: Tensor, mb: Tensor) -> Tensor:
            ce = F.cross_entropy(self._forward(w, xb), yb, reduction="none")
            return (ce * mb).sum() / mb.sum().clamp_min(1.0)

        k, B = y.shape
        per_worker = 4 * B * (x[0, 0].numel() if B else 1) * 16
        per = max(1, self.memory_budget // max(1, per_worker))
        G = torch.empty_like(W)
        weights = mask.to(W.dtype)
        for s in range(0, k, per):
            sl = slice(s, min(s + per, k))
            G[sl] = vmap(grad(loss))(W[sl].detach(), x[sl], y[sl], weights[sl])
        return G
