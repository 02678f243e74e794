"""Batched local SGD for logistic regression equals a per-worker autograd reference."""

from __future__ import annotations

import torch

from fedpoison.data.base import Dataset
from fedpoison.data.partition import Partition
from fedpoison.models.lr import LogisticRegression
from fedpoison.tasks import Task, sample_batches


def _toy(n: int = 300, features: int = 12, classes: int = 4) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, features, generator=g)
    y = torch.randint(classes, (n,), generator=g)
    return Dataset("toy", x, y, x[:50].clone(), y[:50].clone(), classes)


def test_lr_gradient_matches_autograd() -> None:
    ds = _toy()
    model = LogisticRegression(12, 4)
    W = torch.randn(5, model.dim, generator=torch.Generator().manual_seed(1))
    idx = torch.randint(300, (5, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(5, 8, dtype=torch.bool)
    mask[3, 5:] = False
    got = model.batched_grad(W, ds.x_train[idx], ds.y_train[idx], mask)
    for i in range(5):
        wi = W[i].clone().requires_grad_(True)
        keep = mask[i]
        logits = model.logits(wi[None], ds.x_train[idx[i]][keep])[0]
        loss = torch.nn.functional.cross_entropy(logits, ds.y_train[idx[i]][keep])
        (g,) = torch.autograd.grad(loss, wi)
        torch.testing.assert_close(got[i], g, rtol=1e-5, atol=1e-6)


def test_local_train_equals_per_worker_loop() -> None:
    ds = _toy()
    owner = torch.randint(6, (300,), generator=torch.Generator().manual_seed(3))
    part = Partition.from_owner(owner, 6)
    model = LogisticRegression(12, 4)
    task = Task(ds, model, part, lr=0.3, batch_size=16)
    w = torch.randn(model.dim, generator=torch.Generator().manual_seed(4))
    workers = torch.tensor([0, 2, 5])
    W = task.local_train(w, workers, ds.y_train, 3, torch.Generator().manual_seed(5))
    # reference: replay the same batches one worker at a time with autograd
    g = torch.Generator().manual_seed(5)
    ref = w.expand(3, -1).clone()
    for _ in range(3):
        idx, mask = sample_batches(part, workers, 16, g)
        for i in range(3):
            wi = ref[i].clone().requires_grad_(True)
            sel = idx[i][mask[i]]
            loss = torch.nn.functional.cross_entropy(
                model.logits(wi[None], ds.x_train[sel])[0], ds.y_train[sel]
            )
            (grad,) = torch.autograd.grad(loss, wi)
            ref[i] = ref[i] - 0.3 * grad
    torch.testing.assert_close(W, ref, rtol=1e-5, atol=1e-6)


def test_sample_batches_draws_own_examples_without_replacement() -> None:
    owner = torch.tensor([0] * 40 + [1] * 5 + [2] * 0 + [3] * 20)
    part = Partition.from_owner(owner, 4)
    workers = torch.arange(4)
    idx, mask = sample_batches(part, workers, 8, torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [8, 5, 0, 8]
    for i in range(4):
        chosen = idx[i][mask[i]]
        assert chosen.unique().numel() == chosen.numel()
        assert bool((owner[chosen] == i).all())


def test_evaluate_counts_nonfinite_model_as_wrong() -> None:
    ds = _toy()
    model = LogisticRegression(12, 4)
    task = Task(ds, model, Partition.from_owner(torch.zeros(300, dtype=torch.long), 1),
                lr=0.1, batch_size=8)
    w = torch.full((model.dim,), float("nan"))
    ev = task.evaluate(w)
    assert ev.error == 1.0
    assert ev.loss == float("inf")


def test_train_on_is_plain_sgd_on_the_given_examples() -> None:
    """The server's own training (FLTrust's root dataset): rounds of SGD on batches drawn
    from (x, y), equal to a hand-written step of the closed-form LR gradient."""
    from fedpoison.models.lr import LogisticRegression

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 3, generator=g), torch.randint(0, 2, (40,), generator=g)
    ds = Dataset("t", x, y, x, y, 2)
    part = Partition.from_owner(torch.zeros(40, dtype=torch.int64), 1)
    task = Task(ds, LogisticRegression(3, 2), part, lr=0.5, batch_size=8)
    w = torch.randn(8, generator=g)
    got = task.train_on(w, x, y, 2, torch.Generator().manual_seed(3))
    ref, g2 = w.clone(), torch.Generator().manual_seed(3)
    for _ in range(2):
        idx = torch.randperm(40, generator=g2)[:8]
        A, b = ref[:6].view(2, 3), ref[6:]
        p = torch.softmax(x[idx] @ A.T + b, 1)
        p[torch.arange(8), y[idx]] -= 1
        grad = torch.cat([(p.T @ x[idx] / 8).reshape(-1), p.mean(0)])
        ref = ref - 0.5 * grad
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
