"""The paper's convolutional network (Fang et al. 2020, Table 7a) as one flat vector.

conv 3×3×30 + ReLU → max-pool 2×2 → conv 3×3×50 + ReLU → max-pool 2×2 → FC 200 + ReLU →
FC L → softmax (inside the cross-entropy). Convolutions use stride 1 and no padding ("valid",
MXNet's and PyTorch's default), pools are 2×2 with stride 2 and drop an odd last row/column.
On 28×28 MNIST images: 28 → 26 → 13 → 11 → 5, so FC 200 sees 50·5·5 = 1250 features and
d = 266,060; about 4.1 MFLOP per image forward. On 64×64 inputs: 64 → 62 → 31 → 29 → 14
(9800 features, d = 1,976,060).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedpoison.models.batched import (
    CL,
    CPU_BLOCK_EXAMPLES,
    MEMORY_BUDGET,
    add_channel_bias_,
    cross_entropy_grad,
    linear,
    stack_images,
    worker_chunks,
)
from fedpoison.models.flat import AutogradReference, FlatLayout, pytorch_default_init
from fedpoison.registry import register_model


class CNN(AutogradReference):
    """Table 7a's network for images [C, H, W] and ``num_classes`` outputs.

    Flat layout (PyTorch ``state_dict`` order, row-major): conv1.weight [30, C, 3, 3],
    conv1.bias [30], conv2.weight [50, 30, 3, 3], conv2.bias [50], fc1.weight [200, F],
    fc1.bias [200], fc2.weight [L, 200], fc2.bias [L], with F = 50·H₂·W₂ in C, H, W order.
    ``torch_module()`` is the same network as an ``nn.Module`` with the same names.

    Batched training (all workers at once, also with diverged weights): both convolutions
    are grouped convolutions (groups = k) on the channels-last stacked layout, the FC layers
    bmm over workers, and the backward pass is written out layer by layer. Pooling is applied
    before ReLU (and before conv2's bias): max commutes with a per-channel shift and with
    ReLU, so these touch 4× fewer values and the function is unchanged.
    """

    C1, C2, HIDDEN = 30, 50, 200

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        memory_budget: int = MEMORY_BUDGET,
    ) -> None:
        C, H, W = input_shape
        h1, w1 = (H - 2) // 2, (W - 2) // 2
        h2, w2 = (h1 - 2) // 2, (w1 - 2) // 2
        if h2 < 1 or w2 < 1:
            raise ValueError(f"CNN: input {input_shape} is too small (needs at least 10×10)")
        self.input_shape = (C, H, W)
        self.num_classes = num_classes
        self.features = self.C2 * h2 * w2
        # Input rows/columns that reach the output: a pool with an odd input drops its last
        # row/column, so (28×28) conv2's 11th output row and the input's last 2 rows are
        # dead. The batched path skips them (exactly the same outputs and gradients).
        self.used_input = (4 * h2 + 6, 4 * w2 + 6)
        self.layout = FlatLayout(
            [
                ("conv1.weight", (self.C1, C, 3, 3)),
                ("conv1.bias", (self.C1,)),
                ("conv2.weight", (self.C2, self.C1, 3, 3)),
                ("conv2.bias", (self.C2,)),
                ("fc1.weight", (self.HIDDEN, self.features)),
                ("fc1.bias", (self.HIDDEN,)),
                ("fc2.weight", (num_classes, self.HIDDEN)),
                ("fc2.bias", (num_classes,)),
            ]
        )
        self.dim = self.layout.dim
        self.memory_budget = memory_budget
        # CPU cache blocking (batched_grad); None = one block. Measured in bench_cnn.py.
        self.cpu_block_examples: int | None = CPU_BLOCK_EXAMPLES
        with torch.device("meta"):  # a parameter-free template for functional_call
            self._template = self.torch_module()
        # Activation bytes one training example holds at the peak (conv1 output, its pooling
        # gradient and indices, conv2 likewise, inputs), a deliberate overestimate.
        a1, a2 = self.C1 * (H - 2) * (W - 2), self.C2 * (h1 - 2) * (w1 - 2)
        self.bytes_per_example = 4 * (4 * a1 + 10 * C * (H - 2) * (W - 2) + 4 * a2)
        self.flops_per_example = 2 * (
            a1 * 9 * C + a2 * 9 * self.C1 + self.features * self.HIDDEN
            + self.HIDDEN * num_classes
        )

    # ---------------------------------------------------------------- parameters
    def init(self, generator: torch.Generator) -> Tensor:
        """PyTorch's default init (Kaiming-uniform, a = √5; biases U(±1/√fan_in))."""
        return pytorch_default_init(self.layout, generator)

    # ------------------------------------------------------------------- batched
    def _forward(
        self, P: dict[str, Tensor], x: Tensor, need_backward: bool
    ) -> tuple[Tensor, dict[str, Any]]:
        """k models, each on its own images x [k, n, C, H, W] -> logits [k, n, L] and the
        activations the backward pass needs. Image activations use the channels-last stacked
        layout [n, k·C, H, W] (oneDNN's fast path for grouped convolution and pooling); the
        fully connected part is worker-major [k, n, F]."""
        k, n = x.shape[:2]
        x = x[..., : self.used_input[0], : self.used_input[1]]
        xs = stack_images(x)
        w1 = P["conv1.weight"].reshape(k * self.C1, -1, 3, 3).contiguous(memory_format=CL)
        z1 = F.conv2d(xs, w1, P["conv1.bias"].reshape(-1), groups=k)
        pool = F.max_pool2d_with_indices if need_backward else _pool_no_indices
        p1, idx1 = pool(z1, 2)
        a1 = p1.relu_()  # pool before ReLU: they commute, and the pooled tensor is 4× smaller
        w2 = P["conv2.weight"].reshape(k * self.C2, self.C1, 3, 3).contiguous(memory_format=CL)
        z2 = F.conv2d(a1, w2, None, groups=k)
        p2, idx2 = pool(z2, 2)
        # pool before bias + ReLU: max commutes with both, and the pooled tensor is 4× smaller
        a2 = add_channel_bias_(p2, P["conv2.bias"]).relu_()
        f = a2.view(n, k, self.C2, *a2.shape[2:]).transpose(0, 1).reshape(k, n, self.features)
        h = linear(f, P["fc1.weight"], P["fc1.bias"]).relu_()
        z = linear(h, P["fc2.weight"], P["fc2.bias"])
        saved = {"xs": xs, "w1": w1, "z1": z1, "idx1": idx1, "a1": a1, "w2": w2, "z2": z2,
                 "idx2": idx2, "a2": a2, "f": f, "h": h}
        return z, saved

    def logits(self, W: Tensor, x: Tensor) -> Tensor:
        """k models on the same inputs: W [k, dim], x [n, C, H, W] -> [k, n, L]."""
        k = W.shape[0]
        P = self.layout.split(W)
        per = max(1, self.memory_budget // (k * self.bytes_per_example))
        if W.device.type == "cpu" and self.cpu_block_examples:
            per = min(per, max(1, self.cpu_block_examples // k))  # cache blocking, as in training
        with torch.no_grad():
            out = [
                self._forward(P, x[s : s + per].expand(k, *x[s : s + per].shape), False)[0]
                for s in range(0, x.shape[0], per)
            ]
        return torch.cat(out, 1) if out else x.new_zeros(k, 0, self.num_classes)

    def batched_grad(
        self, W: Tensor, x: Tensor, y: Tensor, mask: Tensor
    ) -> Tensor:
        """Per-worker gradient of the mean cross-entropy over each worker's batch [k, dim].

        All workers in one computation, with the backward pass written out layer by layer so
        that every weight gradient is formed as a per-worker reduction (bmm over workers,
        grouped-convolution weight gradient) and written straight into the output. On CPU
        the workers are processed in blocks of about ``cpu_block_examples`` examples (a
        handful of blocks, not a loop over workers) so that the first layer's large
        activations stay in cache; beyond the memory budget likewise. The same code serves
        shared and diverged weights: a grouped convolution costs the same as a shared-weight
        one on oneDNN (docs/choices.md, "Models").
        """
        k, B = y.shape
        G = torch.empty_like(W)
        block = self.cpu_block_examples if W.device.type == "cpu" else None
        for c in worker_chunks(k, B, self.bytes_per_example, self.memory_budget, block):
            self._grad(W[c], x[c], y[c], mask[c], G[c])
        return G

    def _grad(self, W: Tensor, x: Tensor, y: Tensor, mask: Tensor, G: Tensor) -> None:
        k, B = y.shape
        W = W.detach()
        P = self.layout.split(W)
        with torch.no_grad():
            z, s = self._forward(P, x, True)
            GP = self.layout.split(G)
            # cross-entropy: d/dz of Σ_i (1/|B_i|) Σ_n CE_n is (softmax − onehot)·mask/|B_i|
            dz = cross_entropy_grad(z, y, mask)
            h, f, a2 = s["h"], s["f"], s["a2"]
            torch.bmm(dz.transpose(1, 2), h, out=GP["fc2.weight"])
            torch.sum(dz, 1, out=GP["fc2.bias"])
            dh = _relu_backward(torch.bmm(dz, P["fc2.weight"]), h)
            torch.bmm(dh.transpose(1, 2), f, out=GP["fc1.weight"])
            torch.sum(dh, 1, out=GP["fc1.bias"])
            df = torch.bmm(dh, P["fc1.weight"])  # [k, B, F]
            da2 = torch.empty_like(a2)
            da2.view(B, k, self.C2, *a2.shape[2:]).copy_(
                df.view(k, B, self.C2, *a2.shape[2:]).transpose(0, 1)
            )
            da2 = _relu_backward(da2, a2)
            GP["conv2.bias"].copy_(da2.sum((0, 2, 3)).view(k, self.C2))
            dz2 = torch.ops.aten.max_pool2d_with_indices_backward(
                da2, s["z2"], [2, 2], [2, 2], [0, 0], [1, 1], False, s["idx2"]
            )
            da1, dw2, _ = torch.ops.aten.convolution_backward(
                dz2, s["a1"], s["w2"], None, [1, 1], [0, 0], [1, 1], False, [0, 0], k,
                [True, True, False],
            )
            GP["conv2.weight"].copy_(dw2.view(k, self.C2, self.C1, 3, 3))
            da1 = _relu_backward(da1, s["a1"])
            dz1 = torch.ops.aten.max_pool2d_with_indices_backward(
                da1, s["z1"], [2, 2], [2, 2], [0, 0], [1, 1], False, s["idx1"]
            )
            _, dw1, db1 = torch.ops.aten.convolution_backward(
                dz1, s["xs"], s["w1"], [k * self.C1], [1, 1], [0, 0], [1, 1], False, [0, 0], k,
                [False, True, True],
            )
            GP["conv1.weight"].copy_(dw1.view(GP["conv1.weight"].shape))
            GP["conv1.bias"].copy_(db1.view(k, self.C1))

    # ----------------------------------------------------------------- reference
    def torch_module(self) -> nn.Module:
        """The same network as a plain ``nn.Module`` (state_dict names = the flat layout)."""
        return _CNNModule(self.input_shape[0], self.features, self.num_classes)



class _CNNModule(nn.Module):
    def __init__(self, channels: int, features: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, CNN.C1, 3)
        self.conv2 = nn.Conv2d(CNN.C1, CNN.C2, 3)
        self.fc1 = nn.Linear(features, CNN.HIDDEN)
        self.fc2 = nn.Linear(CNN.HIDDEN, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.fc1(h.flatten(1)))
        return self.fc2(h)



def _pool_no_indices(h: Tensor, size: int) -> tuple[Tensor, None]:
    return F.max_pool2d(h, size), None


def _relu_backward(grad: Tensor, out: Tensor) -> Tensor:
    """grad where the ReLU output is positive, else 0 (one fused pass)."""
    return torch.ops.aten.threshold_backward(grad, out, 0.0)


def _build(ds: object) -> CNN:
    shape = tuple(ds.input_shape)  # type: ignore[attr-defined]
    return CNN(shape, ds.num_classes)  # type: ignore[arg-type, attr-defined]


register_model(
    "cnn", _build,
    reference="Fang et al., USENIX Security 2020, Table 7a",
    summary="conv 3×3×30 → pool → conv 3×3×50 → pool → FC 200 → FC L, all workers in "
            "grouped convolutions",
    inputs=("image",),
)
