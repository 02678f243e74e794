"""A small fully connected network for tabular data (Breast Cancer Wisconsin, 30 features).

The paper uses "a DNN with the architecture described in Table 7a" for Breast Cancer too
(Section 4.1), but Table 7a is a convolutional net for images: its 3×3 convolutions and 2×2
pools need a spatial grid, and 30 unordered tabular features have none. We keep what does
carry over, Table 7a's fully connected head: F → 200 + ReLU → L (softmax inside the
cross-entropy). d = 30·200 + 200 + 200·2 + 2 = 6,602 for Breast Cancer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedpoison.models.batched import cross_entropy_grad, linear
from fedpoison.models.flat import AutogradReference, FlatLayout, pytorch_default_init
from fedpoison.registry import register_model


class MLP(AutogradReference):
    """F → ``hidden`` + ReLU → L as one flat vector.

    Flat layout (PyTorch ``state_dict`` order): fc1.weight [H, F], fc1.bias [H], fc2.weight
    [L, H], fc2.bias [L]. Batched training is two bmm over workers forward and three backward,
    with the gradient written out in closed form (no autograd, no loop over workers).
    """

    def __init__(self, num_features: int, num_classes: int, hidden: int = 200) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        self.hidden = hidden
        self.layout = FlatLayout(
            [
                ("fc1.weight", (hidden, num_features)),
                ("fc1.bias", (hidden,)),
                ("fc2.weight", (num_classes, hidden)),
                ("fc2.bias", (num_classes,)),
            ]
        )
        self.dim = self.layout.dim
        with torch.device("meta"):  # a parameter-free template for functional_call
            self._template = self.torch_module()

    def init(self, generator: torch.Generator) -> Tensor:
        """PyTorch's default init (Kaiming-uniform, a = √5; biases U(±1/√fan_in))."""
        return pytorch_default_init(self.layout, generator)

    def logits(self, W: Tensor, x: Tensor) -> Tensor:
        """k models on the same inputs: W [k, dim], x [n, F] -> [k, n, L]."""
        P = self.layout.split(W)
        h = linear(x.reshape(x.shape[0], -1), P["fc1.weight"], P["fc1.bias"]).relu_()
        return linear(h, P["fc2.weight"], P["fc2.bias"])

    def batched_grad(
        self, W: Tensor, x: Tensor, y: Tensor, mask: Tensor
    ) -> Tensor:
        """Per-worker gradient of the mean cross-entropy over each worker's batch [k, dim]."""
        k, B = y.shape
        W = W.detach()
        P = self.layout.split(W)
        x = x.reshape(k, B, -1)
        h = linear(x, P["fc1.weight"], P["fc1.bias"]).relu_()
        z = linear(h, P["fc2.weight"], P["fc2.bias"])
        dz = cross_entropy_grad(z, y, mask)
        G = torch.empty_like(W)
        GP = self.layout.split(G)
        torch.bmm(dz.transpose(1, 2), h, out=GP["fc2.weight"])
        torch.sum(dz, 1, out=GP["fc2.bias"])
        dh = torch.ops.aten.threshold_backward(torch.bmm(dz, P["fc2.weight"]), h, 0.0)
        torch.bmm(dh.transpose(1, 2), x, out=GP["fc1.weight"])
        torch.sum(dh, 1, out=GP["fc1.bias"])
        return G

    # ----------------------------------------------------------------- reference
    def torch_module(self) -> nn.Module:
        """The same network as a plain ``nn.Module`` (state_dict names = the flat layout)."""
        return _MLPModule(self.num_features, self.hidden, self.num_classes)



class _MLPModule(nn.Module):
    def __init__(self, features: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def _build(ds: object) -> MLP:
    return MLP(ds.num_features, ds.num_classes)  # type: ignore[attr-defined]


register_model(
    "mlp", _build,
    reference="Fang et al., USENIX Security 2020, Section 4.1 and Table 7a's fully connected "
              "head (our reading of 'the DNN' for tabular data, docs/choices.md)",
    summary="F → 200 + ReLU → L, closed-form batched gradient",
    inputs=("image", "tabular"),
    # α = 1.0 on tabular data (Breast Cancer), docs/choices.md "Learning rates".
    defaults=lambda ds: {"lr": 1.0 if len(ds.input_shape) == 1 else 0.1},
)
