"""Batched local SGD for logistic regression equals a per-worker autograd reference."""

from __future__ import annotations

import pytest
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


def test_sample_batches_takes_the_smallest_keys_ties_to_the_lower_position() -> None:
    """The batch is the B smallest (key, position) pairs of each row, in ascending position:
    the same keys as torch.rand over the padded rows draws, ties broken by position."""
    owner = torch.randint(5, (400,), generator=torch.Generator().manual_seed(1))
    part = Partition.from_owner(owner, 5)
    workers = torch.tensor([4, 0, 2])
    idx, mask = sample_batches(part, workers, 16, torch.Generator().manual_seed(7))
    keys = torch.rand((3, part.indices.shape[1]), generator=torch.Generator().manual_seed(7))
    for row, i in enumerate(workers.tolist()):
        n = int(part.counts[i])
        order = sorted(range(n), key=lambda p, r=row: (float(keys[r, p]), p))[:16]
        assert idx[row].tolist() == part.indices[i, sorted(order)].tolist()
        assert bool(mask[row].all())


def test_sample_batches_tie_at_the_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    owner = torch.zeros(6, dtype=torch.long)
    part = Partition.from_owner(owner, 1)
    tied = torch.tensor([[0.5, 0.25, 0.5, 0.75, 0.5, 0.125]])
    monkeypatch.setattr(torch, "rand", lambda *a, **k: tied.clone())
    idx, _ = sample_batches(part, torch.tensor([0]), 3, torch.Generator())
    assert idx.tolist() == [[0, 1, 5]]  # 0.125, 0.25 and the first of the three 0.5


def _lr_task(n: int, features: int, workers: int, lr: float, batch: int, seed: int
             ) -> tuple[Dataset, Partition, LogisticRegression, Task, torch.Tensor]:
    """A toy 10-class LR task over ``workers`` random owners, and a random start model."""
    ds = _toy(n=n, features=features, classes=10)
    owner = torch.randint(workers, (n,), generator=torch.Generator().manual_seed(seed))
    part = Partition.from_owner(owner, workers)
    model = LogisticRegression(features, 10)
    task = Task(ds, model, part, lr=lr, batch_size=batch)
    w = torch.randn(model.dim, generator=torch.Generator().manual_seed(seed + 1))
    return ds, part, model, task, w


def test_local_train_does_not_depend_on_the_thread_count() -> None:
    ds, _, _, task, w = _lr_task(2000, 50, 40, 0.3, 16, 3)
    threads = torch.get_num_threads()
    out = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            W = task.local_train(w, torch.arange(40), ds.y_train, 2,
                                 torch.Generator().manual_seed(5))
            err, loss = task.evaluate_many(W, ds.x_train, ds.y_train)
            out.append((W, err, loss, task.evaluate(w)))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(out[0][:3], out[1][:3], strict=True):
        assert torch.equal(a, b)
    assert out[0][3] == out[1][3]


def test_fused_sgd_step_equals_gradient_step() -> None:
    g = torch.Generator().manual_seed(0)
    model = LogisticRegression(30, 7)
    W = torch.randn(9, model.dim, generator=g)
    x = torch.rand(9, 11, 30, generator=g)
    y = torch.randint(7, (9, 11), generator=g)
    mask = torch.rand(9, 11, generator=g) > 0.3
    mask[2] = False  # a worker without data keeps its model
    fused = model.sgd_step_(W.clone(), x, y, mask, 0.2)
    step = W.clone().sub_(model.batched_grad(W, x, y, mask), alpha=0.2)
    assert torch.equal(fused, step)
    assert torch.equal(fused[2], W[2])


def test_step_from_one_start_equals_the_step_on_copies() -> None:
    """The first local step reads the global model once (``sgd_step_from_``): bit for bit
    the step on k copies of it, whatever ``out`` held, and the plain gradient step."""
    g = torch.Generator().manual_seed(1)
    model = LogisticRegression(784, 10)
    w = torch.randn(model.dim, generator=g) * 0.1
    x = torch.rand(25, 32, 784, generator=g)
    y = torch.randint(10, (25, 32), generator=g)
    mask = torch.rand(25, 32, generator=g) > 0.2
    mask[3] = False
    copies = model.sgd_step_(w.expand(25, -1).clone(), x, y, mask, 0.1)
    out = torch.full((25, model.dim), float("nan"))
    assert model.sgd_step_from_(w, out, x, y, mask, 0.1) is out
    assert torch.equal(out, copies)
    W = w.expand(25, -1).clone()
    assert torch.equal(out, W.sub_(model.batched_grad(W, x, y, mask), alpha=0.1))
    assert torch.equal(out[3], w)


def test_local_train_equals_a_loop_of_gradient_steps() -> None:
    """``local_train`` (first step from the shared start, in blocks, then in place) against
    a plain loop of ``batched_grad`` steps on the same batches, for 1 and 3 rounds."""
    ds, part, model, task, w = _lr_task(3000, 40, 60, 0.2, 32, 7)
    workers = torch.arange(0, 60, 2)
    for rounds in (1, 3):
        got = task.local_train(w, workers, ds.y_train, rounds, torch.Generator().manual_seed(9))
        g = torch.Generator().manual_seed(9)
        W = w.expand(len(workers), -1).clone()
        for _ in range(rounds):
            idx, mask = sample_batches(part, workers, 32, g)
            x = ds.x_train[idx].reshape(*idx.shape, -1)
            W = W.sub(model.batched_grad(W, x, ds.y_train[idx], mask), alpha=0.2)
        assert torch.equal(got, W), rounds


@pytest.mark.parametrize("n", [5, 700, 1500, 2100])
def test_lr_logits_equal_the_plain_product(n: int) -> None:
    """One model's logits are formed in groups of examples: the same values as x·Aᵀ + b."""
    g = torch.Generator().manual_seed(n)
    model = LogisticRegression(20, 3)
    x = torch.rand(n, 20, generator=g)
    for k in (1, 4):
        W = torch.randn(k, model.dim, generator=g)
        A, b = W[:, :60].view(k, 3, 20), W[:, 60:]
        want = torch.einsum("nf,klf->knl", x.double(), A.double()) + b[:, None, :].double()
        got = model.logits(W, x)
        assert got.shape == (k, n, 3)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_evaluate_many_equals_a_plain_reference() -> None:
    ds = _toy(n=600, features=12, classes=4)
    model = LogisticRegression(12, 4)
    task = Task(ds, model, Partition.from_owner(torch.zeros(600, dtype=torch.long), 1),
                lr=0.1, batch_size=8)
    W = torch.randn(3, model.dim, generator=torch.Generator().manual_seed(2))
    err, loss = task.evaluate_many(W, ds.x_train, ds.y_train)
    logits = torch.einsum("nf,klf->knl", ds.x_train, W[:, :48].view(3, 4, 12)) + W[:, None, 48:]
    want_err = (logits.argmax(2) != ds.y_train).double().mean(1)
    want_loss = torch.stack([torch.nn.functional.cross_entropy(z, ds.y_train) for z in logits])
    torch.testing.assert_close(err, want_err)
    torch.testing.assert_close(loss, want_loss.double(), rtol=1e-5, atol=1e-6)


def test_cpu_blocks_do_not_change_local_training() -> None:
    ds = _toy(n=900, features=20, classes=5)
    owner = torch.randint(30, (900,), generator=torch.Generator().manual_seed(6))
    part = Partition.from_owner(owner, 30)
    w = torch.randn(20 * 5 + 5, generator=torch.Generator().manual_seed(7))
    out = []
    for block in (None, 1, 40, 100):  # one block; a worker each; 5 workers; 12, 12 and 6
        model = LogisticRegression(20, 5)
        model.cpu_block_examples = block
        task = Task(ds, model, part, lr=0.5, batch_size=8)
        out.append(task.local_train(w, torch.arange(30), ds.y_train, 2,
                                    torch.Generator().manual_seed(8)))
    for W in out[1:]:
        assert torch.equal(W, out[0])
