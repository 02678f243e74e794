"""Table 7a's network read for a tabular row: the same layers with 1×1 kernels and pools.

A second reading of "a DNN with the architecture described in Table 7a" for Breast Cancer
(Section 4.1; our default, ``mlp``, keeps only Table 7a's fully connected head). Code
descended from the authors' group (the MXNet federated-learning code whose attacks are named
``partial_trim`` / ``full_trim`` / ``full_krum``, as published with FLAIR, Sharma et al.
2023) runs Breast Cancer with a net it calls ``dnn2``: the row as a 1×1×F image, Table 7a's
two convolutions (30 and 50 channels, ReLU) with 1×1 kernels, its pools with 1×1 windows
(no-ops), then FC 200 + ReLU and the output layer. Per feature that is a small 1 → 30 → 50
network shared across features; the FC layer sees all 50·F values. d = 30 + 30 + 1,500 + 50
+ 50·30·200 + 200 + 200·2 + 2 = 302,212 for Breast Cancer.

Flat layout (PyTorch ``state_dict`` order): c1.weight [30, 1, 1, 1], c1.bias [30],
c2.weight [50, 30, 1, 1], c2.bias [50], fc.weight [200, 50·F] (channel-major: input c·F + f,
as ``flatten`` of an [n, 50, 1, F] map), fc.bias [200], out.weight [L, 200], out.bias [L].
The batched gradient is written out in closed form (tested against autograd).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedpoison.models.batched import cross_entropy_grad, linear
from fedpoison.models.flat import AutogradReference, FlatLayout, pytorch_default_init
from fedpoison.registry import register_model

C1, C2, HIDDEN = 30, 50, 200  # Table 7a's channels and fully connected width


class CNN1x1(AutogradReference):
    """Table 7a with 1×1 kernels and 1×1 pools over a 1×F row, as one flat vector."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        f = num_features
        self.layout = FlatLayout(
            [
                ("c1.weight", (C1, 1, 1, 1)),
                ("c1.bias", (C1,)),
                ("c2.weight", (C2, C1, 1, 1)),
                ("c2.bias", (C2,)),
                ("fc.weight", (HIDDEN, C2 * f)),
                ("fc.bias", (HIDDEN,)),
                ("out.weight", (num_classes, HIDDEN)),
                ("out.bias", (num_classes,)),
            ]
        )
        self.dim = self.layout.dim
        with torch.device("meta"):
            self._template = self.torch_module()

    def init(self, generator: torch.Generator) -> Tensor:
        """PyTorch's default init (Kaiming-uniform, a = √5; biases U(±1/√fan_in))."""
        return pytorch_default_init(self.layout, generator)

    def _forward(self, P: dict[str, Tensor], x: Tensor) -> tuple[Tensor, ...]:
        """x [k, n, F] (k models, each on its own rows) -> h1, h2, flat, h3, z."""
        k, n, f = x.shape
        w1 = P["c1.weight"].reshape(k, 1, C1, 1)
        h1 = torch.addcmul(P["c1.bias"].reshape(k, 1, C1, 1), x[:, :, None, :], w1).relu_()
        w2 = P["c2.weight"].reshape(k, C2, C1)
        h2 = torch.matmul(w2[:, None], h1).add_(P["c2.bias"].reshape(k, 1, C2, 1)).relu_()
        flat = h2.reshape(k, n, C2 * f)
        h3 = linear(flat, P["fc.weight"], P["fc.bias"]).relu_()
        z = linear(h3, P["out.weight"], P["out.bias"])
        return h1, h2, flat, h3, z

    def logits(self, W: Tensor, x: Tensor) -> Tensor:
        """k models on the same inputs: W [k, dim], x [n, F] -> [k, n, L]."""
        k = W.shape[0]
        x = x.reshape(1, x.shape[0], -1).expand(k, -1, -1)
        return self._forward(self.layout.split(W), x)[-1]

    def batched_grad(self, W: Tensor, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """Per-worker gradient of the mean cross-entropy over each worker's batch [k, dim]."""
        k, B = y.shape
        W = W.detach()
        P = self.layout.split(W)
        x = x.reshape(k, B, -1)
        h1, h2, flat, h3, z = self._forward(P, x)
        dz = cross_entropy_grad(z, y, mask)
        G = torch.empty_like(W)
        GP = self.layout.split(G)
        torch.bmm(dz.transpose(1, 2), h3, out=GP["out.weight"])
        torch.sum(dz, 1, out=GP["out.bias"])
        da3 = torch.ops.aten.threshold_backward(torch.bmm(dz, P["out.weight"]), h3, 0.0)
        torch.bmm(da3.transpose(1, 2), flat, out=GP["fc.weight"])
        torch.sum(da3, 1, out=GP["fc.bias"])
        dh2 = torch.bmm(da3, P["fc.weight"]).reshape(h2.shape)
        da2 = torch.ops.aten.threshold_backward(dh2, h2, 0.0)  # [k, B, C2, F]
        GP["c2.weight"].copy_(torch.einsum("kbcf,kbdf->kcd", da2, h1).reshape(k, C2, C1, 1, 1))
        torch.sum(da2, (1, 3), out=GP["c2.bias"])
        w2 = P["c2.weight"].reshape(k, C2, C1)
        dh1 = torch.matmul(w2.transpose(1, 2)[:, None], da2)  # [k, B, C1, F]
        da1 = torch.ops.aten.threshold_backward(dh1, h1, 0.0)
        GP["c1.weight"].copy_(torch.einsum("kbcf,kbf->kc", da1, x).reshape(k, C1, 1, 1, 1))
        torch.sum(da1, (1, 3), out=GP["c1.bias"])
        return G

    def torch_module(self) -> nn.Module:
        """The same network as a plain ``nn.Module`` (state_dict names = the flat layout)."""
        return _Module(self.num_features, self.num_classes)


class _Module(nn.Module):
    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, C1, 1)
        self.c2 = nn.Conv2d(C1, C2, 1)
        self.fc = nn.Linear(C2 * features, HIDDEN)
        self.out = nn.Linear(HIDDEN, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], 1, 1, -1)
        x = F.max_pool2d(F.relu(self.c1(x)), 1)
        x = F.max_pool2d(F.relu(self.c2(x)), 1)
        return self.out(F.relu(self.fc(x.flatten(1))))


def _build(ds: object) -> CNN1x1:
    return CNN1x1(ds.num_features, ds.num_classes)  # type: ignore[attr-defined]


register_model(
    "cnn-1x1", _build,
    reference="Fang et al., USENIX Security 2020, Table 7a read with 1×1 kernels and pools "
              "over a tabular row ('dnn2' in code descended from the authors' group; "
              "docs/choices.md)",
    summary="1×F row: conv 1×1 ×30, conv 1×1 ×50, FC 200, L; closed-form batched gradient",
    inputs=("tabular",),
    # α = 0.1, the CNN's; not tuned (docs/results.md, "Table 2(e) re-examined")
    defaults=lambda ds: {"lr": 0.1},
)
