"""ResNet20 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Section 4.2)
as one flat vector — the paper's model for CH-MNIST (Fang et al. 2020, Section 4.1).

The CIFAR variant: a 3×3 convolution with 16 filters, then three stages of three basic blocks
(two 3×3 convolutions each, BatchNorm after every convolution) with 16, 32 and 64 filters;
the first block of stages 2 and 3 halves the resolution with stride 2, and its shortcut is
He et al.'s option A (parameter-free: subsample by 2, append zero channels). Global average
pooling and one fully connected layer to L classes. Convolutions have no bias and padding 1,
so any input size works: CH-MNIST 1×64×64 runs the stages at 64², 32² and 16².

BatchNorm under federated batching (see also docs/choices.md, "Models"):

* training uses each worker's own batch statistics (per worker and channel, over its real
  examples and all positions; padding excluded) — what one device training alone computes;
* the running mean and (unbiased) variance of every BatchNorm layer are part of the flat
  vector, so they travel with the model, are aggregated by the server's rule like every
  other coordinate, and can be crafted by an attacker (as in a real FedAvg deployment that
  averages the whole state_dict);
* ``batched_grad`` returns, in those coordinates, ``running − batch statistic``: the gradient
  of ½‖running − batch‖². The SGD step w ← w − α·g therefore updates them as an exponential
  moving average with momentum α (α = 0.1 is PyTorch's default momentum). A worker with no
  examples leaves them unchanged;
* evaluation (``logits``) uses the stored statistics (``model.eval()`` semantics); a
  negative stored variance (possible after a hostile aggregation) is clamped to 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedpoison.models.batched import (
    CL,
    MEMORY_BUDGET,
    batch_norm_eval,
    batch_norm_train,
    conv_grouped,
    linear,
    per_worker_mean_ce,
    stack_images,
    worker_chunks,
)
from fedpoison.models.flat import FlatLayout, pytorch_default_init
from fedpoison.registry import register_model

EPS = 1e-5


def _bn_entries(name: str, channels: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{name}.{t}", (channels,)) for t in ("weight", "bias", "running_mean", "running_var")]


class ResNet20:
    """ResNet20 for images [C, H, W] and ``num_classes`` outputs (CH-MNIST, 1×64×64, L = 8:
    d = 270,680 = 269,304 learnable + 1,376 BatchNorm running statistics).

    Flat layout: PyTorch ``state_dict`` order of ``torch_module()`` (conv1.weight,
    bn1.{weight, bias, running_mean, running_var}, layer1.0.conv1.weight, layer1.0.bn1.*, …,
    fc.weight, fc.bias; ``num_batches_tracked`` is not stored).
    """

    STAGES = (16, 32, 64)
    BLOCKS = 3

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        memory_budget: int = MEMORY_BUDGET,
    ) -> None:
        C, H, W = input_shape
        self.input_shape = (C, H, W)
        self.num_classes = num_classes
        self.memory_budget = memory_budget
        entries: list[tuple[str, tuple[int, ...]]] = [("conv1.weight", (16, C, 3, 3))]
        entries += _bn_entries("bn1", 16)
        # (prefix, in_planes, planes, stride) of every block
        self.blocks: list[tuple[str, int, int, int]] = []
        in_planes = 16
        act = 16 * H * W  # floats per example after conv1
        h, w = H, W
        for s, planes in enumerate(self.STAGES):
            for i in range(self.BLOCKS):
                stride = 2 if s > 0 and i == 0 else 1
                pre = f"layer{s + 1}.{i}"
                self.blocks.append((pre, in_planes, planes, stride))
                entries.append((f"{pre}.conv1.weight", (planes, in_planes, 3, 3)))
                entries += _bn_entries(f"{pre}.bn1", planes)
                entries.append((f"{pre}.conv2.weight", (planes, planes, 3, 3)))
                entries += _bn_entries(f"{pre}.bn2", planes)
                h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
                act += 2 * planes * h * w
                in_planes = planes
        entries += [("fc.weight", (num_classes, 64)), ("fc.bias", (num_classes,))]
        self.layout = FlatLayout(entries)
        self.dim = self.layout.dim
        self.bn_names = [s.name[: -len(".running_mean")] for s in self.layout
                         if s.name.endswith(".running_mean")]
        # autograd keeps ~4 tensors of every activation's size (conv output, BN output, ReLU
        # output, BN's saved input) plus the stacked input
        self.bytes_per_example = 4 * (4 * act + 2 * C * H * W)
        with torch.device("meta"):  # a parameter-free template for functional_call
            self._template = self.torch_module()

    # ---------------------------------------------------------------- parameters
    def init(self, generator: torch.Generator) -> Tensor:
        """He-normal convolutions (He et al. 2015, as ResNet), BatchNorm γ = 1, β = 0, running
        mean 0 and variance 1, and PyTorch's default for the FC layer."""
        return pytorch_default_init(self.layout, generator, he_normal_convs=True)

    # ------------------------------------------------------------------- batched
    def _forward(
        self,
        P: dict[str, Tensor],
        x: Tensor,
        mask: Tensor | None,
        train: bool,
        stats: dict[str, tuple[Tensor, Tensor]],
    ) -> Tensor:
        """k models on x [k, n, C, H, W] -> logits [k, n, L]. In training mode BatchNorm uses
        per-worker batch statistics (``mask`` [k, n] excludes padding; None = no padding) and
        records them in ``stats``; otherwise the stored running statistics."""
        k, n = x.shape[:2]

        def bn(name: str, h: Tensor) -> Tensor:
            g, b = P[f"{name}.weight"], P[f"{name}.bias"]
            if not train:
                return batch_norm_eval(
                    h, g, b, P[f"{name}.running_mean"], P[f"{name}.running_var"], EPS
                )
            out, mean, var = batch_norm_train(h, g, b, mask, EPS)
            stats[name] = (mean, var)
            return out

        h = F.relu_(bn("bn1", conv_grouped(stack_images(x), P["conv1.weight"], None, 1, 1)))
        for pre, in_planes, planes, stride in self.blocks:
            out = conv_grouped(h, P[f"{pre}.conv1.weight"], None, stride, 1)
            out = F.relu_(bn(f"{pre}.bn1", out))
            out = bn(f"{pre}.bn2", conv_grouped(out, P[f"{pre}.conv2.weight"], None, 1, 1))
            h = F.relu_(out + _shortcut(h, k, in_planes, planes, stride))
        # global average pooling [k, n, 64]; avg_pool2d keeps the gradient channels-last
        feat = F.avg_pool2d(h, h.shape[2:]).view(n, k, -1).transpose(0, 1)
        return linear(feat, P["fc.weight"], P["fc.bias"])

    def logits(self, W: Tensor, x: Tensor) -> Tensor:
        """k models on the same inputs (stored BatchNorm statistics): W [k, dim],
        x [n, C, H, W] -> [k, n, L]."""
        k = W.shape[0]
        P = self.layout.split(W)
        per = max(1, 4 * self.memory_budget // (k * self.bytes_per_example))
        with torch.no_grad():
            out = [
                self._forward(P, xs.expand(k, *xs.shape), None, False, {})
                for xs in x.split(per)
            ]
        return torch.cat(out, 1) if out else x.new_zeros(k, 0, self.num_classes)

    def batched_grad(
        self, W: Tensor, x: Tensor, y: Tensor, mask: Tensor
    ) -> Tensor:
        """Per-worker gradient [k, dim] of the mean cross-entropy over each worker's batch,
        with ``running − batch statistic`` in the running-statistics coordinates (module
        docstring). All workers in one autograd pass (chunks of workers only beyond the memory
        budget); grouped convolutions cost the same for shared and diverged weights."""
        k, B = y.shape
        chunks = worker_chunks(k, B, self.bytes_per_example, self.memory_budget)
        if len(chunks) == 1:
            return self._grad(W, x, y, mask)
        return torch.cat([self._grad(W[c], x[c], y[c], mask[c]) for c in chunks])

    def _grad(self, W: Tensor, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        Wl = W.detach().requires_grad_(True)
        P = self.layout.split(Wl)
        stats: dict[str, tuple[Tensor, Tensor]] = {}
        full = bool(mask.all())
        logits = self._forward(P, x, None if full else mask, True, stats)
        (G,) = torch.autograd.grad(per_worker_mean_ce(logits, y, mask), Wl)
        GP = self.layout.split(G)
        Wd = self.layout.split(W.detach())
        has_data = mask.any(1, keepdim=True).to(W.dtype)  # [k, 1]
        for name, (mean, var) in stats.items():
            for key, batch in (("running_mean", mean), ("running_var", var)):
                GP[f"{name}.{key}"].copy_((Wd[f"{name}.{key}"] - batch) * has_data)
        return G

    # ----------------------------------------------------------------- reference
    def torch_module(self) -> nn.Module:
        """The same network as a plain ``nn.Module`` (state_dict names = the flat layout,
        plus BatchNorm's ``num_batches_tracked``)."""
        return _ResNet20Module(self.input_shape[0], self.num_classes, self.blocks)

    def _module(self) -> nn.Module:
        return self._template

    def reference_logits(self, w: Tensor, x: Tensor) -> Tensor:
        """One model w [dim] on x [n, C, H, W] in eval mode (stored statistics) -> [n, L]."""
        from torch.func import functional_call

        m = self._module().eval()
        return functional_call(m, self.layout.state_dict(w), (x,), strict=False)

    def reference_grad(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """One worker alone, plain ``nn.Module`` in training mode: autograd gradient of the
        mean cross-entropy, and ``running − batch statistic`` for the running statistics
        (read from BatchNorm's own buffer update with momentum 1)."""
        from torch.func import functional_call

        m = self._module().train()
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.momentum = 1.0
        w = w.detach().clone().requires_grad_(True)
        tensors = self.layout.state_dict(w)
        buffers = {name: tensors[name].detach().clone() for name in tensors
                   if name.endswith(("running_mean", "running_var"))}
        loss = F.cross_entropy(
            functional_call(m, {**tensors, **buffers}, (x,), strict=False), y
        )
        (g,) = torch.autograd.grad(loss, w)
        g = g.clone()
        for name, batch in buffers.items():
            slot = self.layout.by_name[name]
            g[slot.offset : slot.end] = w.detach()[slot.offset : slot.end] - batch
        return g


def _shortcut(h: Tensor, k: int, in_planes: int, planes: int, stride: int) -> Tensor:
    """He et al.'s option A on the stacked layout: identity, or subsample by ``stride`` and
    append ``planes − in_planes`` zero channels to every worker's channels."""
    if stride == 1 and in_planes == planes:
        return h
    sub = h[:, :, ::stride, ::stride]
    n, _, hh, ww = sub.shape
    sub = sub.reshape(n, k, in_planes, hh, ww)
    pad = sub.new_zeros(n, k, planes - in_planes, hh, ww)
    return torch.cat([sub, pad], 2).view(n, k * planes, hh, ww).contiguous(memory_format=CL)


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shape = (in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        in_planes, planes, stride = self.shape
        sc = x
        if stride != 1 or in_planes != planes:
            sc = F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, 0, planes - in_planes))
        return F.relu(out + sc)


class _ResNet20Module(nn.Module):
    def __init__(
        self, channels: int, num_classes: int, blocks: list[tuple[str, int, int, int]]
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages: list[list[nn.Module]] = [[], [], []]
        for pre, in_planes, planes, stride in blocks:
            stages[int(pre[5]) - 1].append(_BasicBlock(in_planes, planes, stride))
        self.layer1 = nn.Sequential(*stages[0])
        self.layer2 = nn.Sequential(*stages[1])
        self.layer3 = nn.Sequential(*stages[2])
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.layer3(self.layer2(self.layer1(h)))
        return self.fc(h.mean((2, 3)))


def _build(ds: object) -> ResNet20:
    shape = tuple(ds.input_shape)  # type: ignore[attr-defined]
    return ResNet20(shape, ds.num_classes)  # type: ignore[arg-type, attr-defined]


register_model(
    "resnet20", _build,
    reference="He, Zhang, Ren, Sun, CVPR 2016 (ResNet20); Fang et al. Section 4.1 (CH-MNIST)",
    summary="ResNet20 with per-worker BatchNorm statistics in the flat vector",
    inputs=("image",),
)
