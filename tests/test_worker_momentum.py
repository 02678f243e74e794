"""Worker momentum and weight decay of local SGD: against per-worker torch.optim.SGD whose
state lives across iterations, sampling, defaults off, validation, reproducibility."""

from __future__ import annotations

import pytest
import torch

import fedpoison
from fedpoison.data.base import Dataset
from fedpoison.data.partition import Partition
from fedpoison.errors import ConfigError
from fedpoison.models.lr import LogisticRegression
from fedpoison.simulation import prepare
from fedpoison.tasks import Task, sample_batches


def _toy(n: int = 300, features: int = 12, classes: int = 4) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, features, generator=g)
    y = torch.randint(classes, (n,), generator=g)
    return Dataset("toy-momentum", x, y, x[:50].clone(), y[:50].clone(), classes)


def _task(lr: float = 0.3) -> tuple[Task, Dataset, Partition]:
    ds = _toy()
    owner = torch.randint(6, (300,), generator=torch.Generator().manual_seed(3))
    part = Partition.from_owner(owner, 6)
    return Task(ds, LogisticRegression(12, 4), part, lr=lr, batch_size=16), ds, part


@pytest.mark.parametrize(("mu", "wd"), [(0.9, 0.0), (0.5, 0.01), (0.0, 0.1)])
def test_equals_per_worker_torch_sgd_kept_across_iterations(mu: float, wd: float) -> None:
    """Three iterations with different sampled workers: each worker is a parameter with its
    own torch.optim.SGD(momentum, weight_decay), reset to the global model every iteration
    while its optimizer (momentum buffer) is kept; unsampled workers' buffers do not move."""
    task, ds, part = _task()
    model = task.model
    w = torch.randn(model.dim, generator=torch.Generator().manual_seed(4)) * 0.1
    velocity = torch.zeros(6, model.dim) if mu > 0 else None
    params = [torch.nn.Parameter(torch.zeros(model.dim)) for _ in range(6)]
    opts = [torch.optim.SGD([p], lr=0.3, momentum=mu, weight_decay=wd) for p in params]
    g_batch, g_ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for workers in (torch.tensor([0, 2, 5]), torch.tensor([1, 2]), torch.arange(6)):
        W = task.local_train_momentum(w, workers, ds.y_train, 2, g_batch, momentum=mu,
                                      weight_decay=wd, velocity=velocity)
        for p in params:
            p.data.copy_(w)
        for _ in range(2):
            idx, mask = sample_batches(part, workers, 16, g_ref)
            for r, i in enumerate(workers.tolist()):
                sel = idx[r][mask[r]]
                opts[i].zero_grad()
                loss = torch.nn.functional.cross_entropy(
                    model.logits(params[i][None], ds.x_train[sel])[0], ds.y_train[sel])
                loss.backward()
                opts[i].step()
        ref = torch.stack([params[i].detach() for i in workers.tolist()])
        torch.testing.assert_close(W, ref, rtol=1e-5, atol=1e-6)
        if velocity is not None:
            for i in workers.tolist():
                buf = opts[i].state[params[i]]["momentum_buffer"]
                torch.testing.assert_close(velocity[i], buf, rtol=1e-5, atol=1e-6)
            if workers.numel() == 2:  # workers 0, 3, 4, 5 keep their earlier buffers
                assert torch.equal(velocity[3], torch.zeros(model.dim))
        w = W.mean(0)


def test_without_momentum_and_decay_it_is_plain_local_sgd_bit_for_bit() -> None:
    task, ds, _ = _task()
    w = torch.randn(task.model.dim, generator=torch.Generator().manual_seed(1))
    workers = torch.tensor([1, 3, 4])
    plain = task.local_train(w, workers, ds.y_train, 3, torch.Generator().manual_seed(2))
    other = task.local_train_momentum(w, workers, ds.y_train, 3, torch.Generator().manual_seed(2),
                                      momentum=0.0, weight_decay=0.0, velocity=None)
    assert torch.equal(plain, other)


SMALL = dict(workers=10, compromised=2, iterations=6, eval_every=2, lr=0.3, sample=6)


def test_off_by_default_buffer_only_with_momentum() -> None:
    ds = _toy()
    cfg = fedpoison.RunConfig(dataset="mnist", **SMALL)
    assert cfg.momentum == 0.0 and cfg.weight_decay == 0.0
    assert prepare(cfg, ds).velocity is None
    setup = prepare(fedpoison.RunConfig(dataset="mnist", momentum=0.9, **SMALL), ds)
    assert setup.velocity is not None and setup.velocity.shape == (10, setup.w0.numel())


def test_momentum_runs_are_reproducible_and_differ_from_plain_sgd() -> None:
    ds = _toy()
    base = fedpoison.RunConfig(dataset="mnist", rule="median", **SMALL)
    with_mu = fedpoison.RunConfig(**{**base.to_dict(), "momentum": 0.9, "weight_decay": 1e-3})
    a, b = fedpoison.run(with_mu, dataset=ds), fedpoison.run(with_mu, dataset=ds)
    plain = fedpoison.run(base, dataset=ds)
    assert a.loss_curve == b.loss_curve  # no buffer survives a run
    assert a.loss_curve != plain.loss_curve
    decay = fedpoison.run(fedpoison.RunConfig(**{**base.to_dict(), "weight_decay": 0.05}),
                          dataset=ds)
    assert decay.loss_curve != plain.loss_curve  # weight decay alone takes the new path


@pytest.mark.parametrize(("field", "value"), [("momentum", 1.0), ("momentum", -0.1),
                                               ("weight_decay", -1e-4), ("momentum", "x")])
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as e:
        fedpoison.RunConfig(**{field: value}).resolve()  # type: ignore[arg-type]
    assert e.value.field == field and "\n" not in str(e.value)
