"""Neural models as flat vectors: batched training equals the plain per-worker loop.

Tiny shapes throughout (the whole file runs in seconds). The reference is
``reference_batched_grad``: a Python loop over workers with autograd through ordinary
``torch.nn`` layers (each model's ``torch_module()``), one worker's real examples at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from fedpoison import registry
from fedpoison.data.base import Dataset
from fedpoison.data.partition import Partition
from fedpoison.memory import tune_cpu_allocator
from fedpoison.models import build_model
from fedpoison.models.batched import (
    naive_vmap_grad,
    reference_batched_grad,
    worker_chunks,
)
from fedpoison.models.cnn import CNN
from fedpoison.models.mlp import MLP
from fedpoison.models.resnet20 import ResNet20
from fedpoison.tasks import Task, sample_batches

Model = CNN | MLP | ResNet20


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny shapes gain nothing from threads, and on a loaded machine every parallel region
    can wait milliseconds for a descheduled thread: run this module single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _models() -> dict[str, Model]:
    return {
        "cnn": CNN((1, 12, 12), 4),
        "cnn-odd": CNN((1, 15, 13), 3),  # odd sizes: pools drop the last row/column
        "cnn-rgb": CNN((2, 10, 10), 3),
        "mlp": MLP(7, 3, hidden=9),
        "resnet20": ResNet20((1, 8, 8), 5),
        "resnet20-odd": ResNet20((1, 7, 9), 3),
    }


MODEL_NAMES = ["cnn", "cnn-odd", "mlp", "resnet20"]  # the main parametrisation


def _model(name: str) -> Model:
    return _models()[name]


def _inputs(model: Model, k: int, B: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = model.input_shape if not isinstance(model, MLP) else (model.num_features,)
    x = torch.rand(k, B, *shape, generator=g)
    y = torch.randint(model.num_classes, (k, B), generator=g)
    return x, y


def _weights(model: Model, k: int, diverged: bool, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = model.init(g).expand(k, -1).clone()
    if diverged:
        W += 0.05 * torch.randn(W.shape, generator=g)
    return W


K, B = 4, 5  # workers and batch size of most tests (one oneDNN kernel set per shape)


def _mask(k: int, B: int) -> torch.Tensor:
    mask = torch.ones(k, B, dtype=torch.bool)
    mask[1, 3:] = False  # a worker with fewer than B examples
    mask[2, :] = False  # a worker with none
    return mask


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("diverged", [False, True], ids=["shared", "diverged"])
def test_batched_grad_equals_per_worker_loop(name: str, diverged: bool) -> None:
    model = _model(name)
    W = _weights(model, K, diverged)
    x, y = _inputs(model, K, B, seed=1)
    mask = _mask(K, B)
    got = model.batched_grad(W, x, y, mask)
    assert got.shape == (K, model.dim) and got.dtype == torch.float32
    _close(got, reference_batched_grad(model, W, x, y, mask))
    assert torch.all(got[2] == 0)  # no examples: no gradient (and running stats unchanged)


@pytest.mark.parametrize("name", ["cnn-rgb", "resnet20-odd"])
def test_batched_grad_without_padding(name: str) -> None:
    model = _model(name)
    W = _weights(model, K, diverged=True, seed=3)
    x, y = _inputs(model, K, B, seed=4)
    mask = torch.ones(K, B, dtype=torch.bool)
    _close(model.batched_grad(W, x, y, mask),
           reference_batched_grad(model, W, x, y, mask))


@pytest.mark.parametrize("name", ["cnn", "resnet20"])
def test_worker_chunks_give_the_same_gradient(name: str) -> None:
    model = _model(name)
    W = _weights(model, K, diverged=True)
    x, y = _inputs(model, K, B, seed=2)
    mask = _mask(K, B)
    whole = model.batched_grad(W, x, y, mask)
    model.memory_budget = 2 * B * model.bytes_per_example  # two workers per chunk
    assert len(worker_chunks(K, B, model.bytes_per_example, model.memory_budget)) == 2
    _close(model.batched_grad(W, x, y, mask), whole)


def test_worker_chunks_cover_all_workers() -> None:
    for k, per in [(1, 1), (7, 3), (100, 100), (100, 7)]:
        chunks = worker_chunks(k, 1, 1, per)
        assert sum(c.stop - c.start for c in chunks) == k
        assert all(c.stop - c.start <= per for c in chunks)


def test_cnn_vmap_baseline_matches() -> None:
    model = _model("cnn")
    assert isinstance(model, CNN)
    W = _weights(model, K, diverged=True)
    x, y = _inputs(model, K, B, seed=5)
    mask = torch.ones(K, B, dtype=torch.bool)
    _close(naive_vmap_grad(model.reference_logits, W, x, y),
           model.batched_grad(W, x, y, mask))


# --------------------------------------------------------------------- logits
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_logits_match_per_model_loop(name: str) -> None:
    model = _model(name)
    W = _weights(model, K, diverged=True)
    x, _ = _inputs(model, 1, B, seed=6)
    got = model.logits(W, x[0])
    assert got.shape == (K, B, model.num_classes)
    for i in range(K):
        _close(got[i], model.reference_logits(W[i], x[0]))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_flat_layout_is_the_torch_module_state_dict(name: str) -> None:
    model = _model(name)
    w = _weights(model, 1, diverged=True)[0]
    module = model.torch_module()
    names = [n for n in module.state_dict() if not n.endswith("num_batches_tracked")]
    assert names == [s.name for s in model.layout]
    assert model.dim == sum(t.numel() for n, t in module.state_dict().items()
                            if not n.endswith("num_batches_tracked"))
    sd = model.layout.state_dict(w)
    module.load_state_dict(sd, strict=False)
    torch.testing.assert_close(model.layout.flatten(module.state_dict()), w)  # round trip
    torch.testing.assert_close(model.layout.flatten_rows(model.layout.split(w[None]))[0], w)
    x, _ = _inputs(model, 1, B, seed=7)
    with torch.no_grad():
        _close(model.logits(w[None], x[0])[0], module.eval()(x[0]))


def test_cnn_sizes_follow_table_7a() -> None:
    mnist = CNN((1, 28, 28), 10)
    assert mnist.features == 50 * 5 * 5 and mnist.dim == 266_060
    assert CNN((1, 64, 64), 8).features == 50 * 14 * 14
    assert abs(mnist.flops_per_example - 4.14e6) < 0.01e6  # ≈ 4.1 MFLOP forward per image
    assert MLP(30, 2).dim == 30 * 200 + 200 + 200 * 2 + 2
    r = ResNet20((1, 64, 64), 8)
    stats = sum(s.size for s in r.layout if "running" in s.name)
    assert r.dim - stats == 269_304  # ResNet20's ~0.27M learnable parameters (L = 8)


# ----------------------------------------------------------------------- init
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_init_is_seeded(name: str) -> None:
    model = _model(name)
    a = model.init(torch.Generator().manual_seed(11))
    b = model.init(torch.Generator().manual_seed(11))
    c = model.init(torch.Generator().manual_seed(12))
    assert a.shape == (model.dim,) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_init_is_pytorch_default() -> None:
    model = CNN((1, 28, 28), 10)
    sd = model.layout.state_dict(model.init(torch.Generator().manual_seed(0)))
    for layer, fan_in in [("conv1", 9), ("conv2", 270), ("fc1", 1250), ("fc2", 200)]:
        bound = fan_in**-0.5
        for part in ("weight", "bias"):
            t = sd[f"{layer}.{part}"]
            assert t.abs().max() <= bound and t.abs().max() > 0.8 * bound
    r = ResNet20((1, 16, 16), 8)
    sd = r.layout.state_dict(r.init(torch.Generator().manual_seed(0)))
    assert torch.all(sd["bn1.weight"] == 1) and torch.all(sd["bn1.running_var"] == 1)
    assert torch.all(sd["layer2.0.bn1.running_mean"] == 0)
    std = sd["layer3.0.conv2.weight"].std().item()
    assert abs(std - (2 / (64 * 9)) ** 0.5) < 0.1 * std  # He-normal


# ----------------------------------------------------------------- local SGD
def _toy_images(n: int, shape: tuple[int, ...], classes: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, *shape, generator=g)
    y = torch.randint(classes, (n,), generator=g)
    return Dataset("toy", x, y, x[:20].clone(), y[:20].clone(), classes)


@pytest.mark.parametrize("name", ["cnn", "mlp", "resnet20"])
def test_local_train_two_rounds_equals_loop(name: str) -> None:
    model = _model(name)
    shape = model.input_shape if not isinstance(model, MLP) else (model.num_features,)
    ds = _toy_images(120, shape, model.num_classes)
    owner = torch.randint(5, (120,), generator=torch.Generator().manual_seed(3))
    owner[owner == 4] = 3  # worker 4 holds no data
    part = Partition.from_owner(owner, 5)
    lr = 0.1
    # B = 30 exceeds some workers' data (padding); ResNet20 uses the other tests' B (every
    # new batch shape costs seconds of oneDNN kernel generation; padding is tested above)
    batch = B if name == "resnet20" else 30
    task = Task(ds, model, part, lr=lr, batch_size=batch)
    w = model.init(torch.Generator().manual_seed(4))
    workers = torch.tensor([0, 2, 3, 4])
    W = task.local_train(w, workers, ds.y_train, 2, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    ref = w.expand(4, -1).clone()
    for _ in range(2):
        idx, mask = sample_batches(part, workers, batch, g)
        ref = ref - lr * reference_batched_grad(model, ref, ds.x_train[idx], ds.y_train[idx], mask)
    _close(W, ref)
    assert not torch.equal(W[0], W[1])  # the rows diverged in round 2
    torch.testing.assert_close(W[3], w)  # no data: unchanged


# ------------------------------------------------------------- ResNet20 BatchNorm
def test_resnet_batchnorm_statistics_are_per_worker() -> None:
    model = _model("resnet20")
    assert isinstance(model, ResNet20)
    W = _weights(model, K, diverged=True)
    x, y = _inputs(model, K, B, seed=8)
    mask = _mask(K, B)
    g1 = model.batched_grad(W, x, y, mask)
    x2 = x.clone()
    x2[1] = 5 * x2[1] + 1  # another worker's data shifts a lot
    g2 = model.batched_grad(W, x2, y, mask)
    _close(g1[0], g2[0])
    assert not torch.allclose(g1[1], g2[1])
    # padding does not enter the statistics: garbage in padded slots changes nothing
    x3 = x.clone()
    x3[1, 3:] = 100.0
    _close(model.batched_grad(W, x3, y, mask), g1)


def test_resnet_running_statistics_follow_an_ema() -> None:
    model = _model("resnet20")
    assert isinstance(model, ResNet20)
    w = model.init(torch.Generator().manual_seed(0))
    x, y = _inputs(model, K, B, seed=9)
    mask = torch.ones(K, B, dtype=torch.bool)
    g = model.batched_grad(w.expand(K, -1), x, y, mask)[0]
    # batch statistics of the first BatchNorm, from a plain module in training mode
    module = model.torch_module()
    module.load_state_dict(model.layout.state_dict(w), strict=False)
    module.bn1.momentum = 1.0
    module.train()(x[0])
    alpha = 0.1
    sd_new = model.layout.state_dict(w - alpha * g)
    sd_old = model.layout.state_dict(w)
    for key in ("running_mean", "running_var"):
        batch = getattr(module.bn1, key)
        _close(sd_new[f"bn1.{key}"], (1 - alpha) * sd_old[f"bn1.{key}"] + alpha * batch)


def test_resnet_evaluation_uses_stored_statistics() -> None:
    model = _model("resnet20")
    W = _weights(model, K, diverged=True)
    x, _ = _inputs(model, 1, B, seed=10)
    alone = model.logits(W, x[0, :1])
    together = model.logits(W, x[0])[:, :1]
    _close(alone, together)  # an example's prediction does not depend on its batch
    slot = model.layout.by_name["bn1.running_var"]
    W2 = W.clone()
    W2[:, slot.offset : slot.end] = -1.0  # hostile negative variance: clamped, finite
    assert torch.isfinite(model.logits(W2, x[0])).all()


# ------------------------------------------------------------ registry, device
def test_registry_builds_models_for_datasets() -> None:
    assert {"lr", "cnn", "mlp", "resnet20"} <= set(registry.names("model"))
    images = _toy_images(10, (1, 28, 28), 10)
    tabular = _toy_images(10, (30,), 2)
    assert isinstance(build_model("cnn", images), CNN)
    assert isinstance(build_model("resnet20", images), ResNet20)
    assert isinstance(build_model("mlp", tabular), MLP)
    assert build_model("mlp", images).dim == 784 * 200 + 200 + 200 * 10 + 10
    with pytest.raises(ValueError, match="image inputs"):
        build_model("cnn", tabular)


def test_tune_cpu_allocator_is_harmless() -> None:
    assert isinstance(tune_cpu_allocator(), bool)
    model = _model("cnn")
    W = _weights(model, K, diverged=True)
    x, y = _inputs(model, K, B, seed=1)
    mask = torch.ones(K, B, dtype=torch.bool)
    _close(model.batched_grad(W, x, y, mask),
           reference_batched_grad(model, W, x, y, mask))


def test_device_auto_is_cpu_without_cuda() -> None:
    from fedpoison.simulation import _resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert _resolve_device("auto").type == expected
    assert _resolve_device("cpu").type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_cuda_matches_cpu(name: str) -> None:
    model = _model(name)
    W = _weights(model, K, diverged=True)
    x, y = _inputs(model, K, B, seed=1)
    mask = _mask(K, B)
    cpu = model.batched_grad(W, x, y, mask)
    gpu = model.batched_grad(W.cuda(), x.cuda(), y.cuda(), mask.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(model.logits(W.cuda(), x[0].cuda()).cpu(),
                               model.logits(W, x[0]), rtol=1e-3, atol=1e-4)
    # the same inputs give the same numbers on one device
    again = model.batched_grad(W.cuda(), x.cuda(), y.cuda(), mask.cuda())
    torch.testing.assert_close(again, gpu, rtol=1e-5, atol=1e-6)
