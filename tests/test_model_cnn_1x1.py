"""``cnn-1x1``: Table 7a with 1×1 kernels over a tabular row (the authors' group code's
``dnn2``), its closed-form batched gradient against per-worker autograd."""

from __future__ import annotations

import pytest
import torch

from fedpoison import registry
from fedpoison.config import RunConfig
from fedpoison.models.cnn_1x1 import CNN1x1
from fedpoison.simulation import run


def _case(seed: int, k: int = 4, B: int = 5, features: int = 7, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    model = CNN1x1(features, classes)
    W = torch.stack([model.init(g) for _ in range(k)])
    x = torch.randn(k, B, features, generator=g)
    y = torch.randint(0, classes, (k, B), generator=g)
    mask = torch.rand(k, B, generator=g) > 0.3
    mask[:, 0] = True
    return model, W, x, y, mask


@pytest.mark.parametrize("seed", range(4))
def test_batched_grad_equals_per_worker_autograd(seed: int) -> None:
    model, W, x, y, mask = _case(seed)
    G = model.batched_grad(W, x, y, mask)
    for i in range(W.shape[0]):
        want = model.reference_grad(W[i], x[i][mask[i]], y[i][mask[i]])
        torch.testing.assert_close(G[i], want, rtol=1e-4, atol=1e-6)


def test_logits_equal_the_torch_module() -> None:
    model, W, x, _, _ = _case(7)
    got = model.logits(W, x[0])
    for i in range(W.shape[0]):
        torch.testing.assert_close(got[i], model.reference_logits(W[i], x[0]),
                                   rtol=1e-5, atol=1e-6)


def test_size_and_layout_follow_table_7a_with_1x1_kernels() -> None:
    model = CNN1x1(30, 2)
    assert model.dim == 30 + 30 + 50 * 30 + 50 + 50 * 30 * 200 + 200 + 200 * 2 + 2
    names = list(model.torch_module().state_dict())
    assert names == list(model.layout.state_dict(torch.zeros(model.dim)))


def test_registered_for_tabular_data_only() -> None:
    spec = registry.get("model", "cnn-1x1")
    assert spec.inputs == ("tabular",)
    r = run(RunConfig(dataset="breast-cancer", model="cnn-1x1", workers=10, compromised=2,
                      iterations=30, rule="median"))
    assert r.final_error < 0.2  # it learns (a trivial classifier errs on ~0.37)
