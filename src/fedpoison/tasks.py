"""Task = dataset + model + how the training set is spread over workers.

The task owns the only model-specific computation of a run: batched local SGD for all
sampled workers at once (paper Section 2.1, Step II) and evaluation of global models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedpoison.data.base import Dataset
from fedpoison.data.partition import Partition
from fedpoison.models.base import FlatModel

EVAL_CHUNK = 4096


@dataclass(frozen=True)
class Evaluation:
    """Error rate and mean cross-entropy of one model on one labelled set."""

    error: float
    loss: float


def sample_batches(
    partition: Partition, workers: Tensor, batch_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One mini-batch per worker, drawn without replacement from its local data.

    Returns example ids [k, B] and a mask [k, B]; a worker holding fewer than B examples uses
    all of them (mask False on the padding). One random key per (worker, local example) and
    a selection of the B smallest keys per row: no loop over workers.

    The keys are ``torch.rand`` float32 values (one draw per (worker, padded position), the
    same random stream as ever), exact multiples of 2⁻²⁴. Each key is made unique by appending
    its position, ``key·2²⁴·width + position`` as an exact int64, so the chosen set is well
    defined when two keys tie (the lower position wins; a ``torch.topk`` over the float keys
    broke such ties arbitrarily, about once in 200,000 rows on MNIST), and every backend and
    version chooses the same batch. The batch comes in ascending position, i.e. ascending
    example id. The selection runs in NumPy on the CPU, where the keys are drawn
    (``np.partition`` took 0.37 ms for 100 MNIST workers where ``torch.topk`` took 0.78 ms).
    """
    pos = batch_positions(partition, workers, batch_size, generator)
    return batch_examples(partition, workers, pos)


def batch_positions(
    partition: Partition, workers: Tensor, batch_size: int, generator: torch.Generator
) -> Tensor:
    """The draw of :func:`sample_batches`: positions [k, B] into each worker's examples
    (``partition.indices`` rows), ascending; a position at or past the worker's count is
    padding.

    Separate so that a server can draw the batches and send each worker its own row
    (``fedpoison.flower``) while the draw stays the simulator's."""
    w = workers.cpu().numpy()
    counts = partition.counts.numpy()[w]
    width = partition.indices.shape[1]
    keys = torch.rand((w.shape[0], width), generator=generator)
    take = min(batch_size, width)
    comp = (keys.numpy() * np.float32(1 << 24)).astype(np.int64)
    position = np.arange(width)
    np.copyto(comp, 1 << 24, where=position >= counts[:, None])  # padding after real keys
    comp *= width
    comp += position
    if take < width:
        comp = np.partition(comp, take - 1, axis=1)[:, :take]
    return torch.from_numpy(np.sort(comp % width, axis=1))


def batch_examples(partition: Partition, workers: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
    """Example ids [k, B] and mask [k, B] of the positions ``pos`` [k, B] of ``workers``."""
    w = workers.cpu().numpy()
    p = pos.cpu().numpy()
    counts = partition.counts.numpy()[w]
    ids = partition.indices.numpy()[w[:, None], p]
    return torch.from_numpy(ids), torch.from_numpy(p < counts[:, None])


def _blocks(k: int, batch: int, block_examples: int | None) -> list[slice]:
    """Slices of k workers of about ``block_examples`` examples each (and at least one worker
    per thread), as equal as possible; one slice when ``block_examples`` is None."""
    if not block_examples or k == 0:
        return [slice(0, k)]
    # at least one worker per thread: MKL then splits a block's batched products by worker,
    # while a block smaller than the thread count would split single products, and the
    # results would depend on the thread count
    per = max(torch.get_num_threads(), block_examples // max(1, batch))
    n = -(-k // per)
    size = -(-k // n)
    return [slice(s, min(s + size, k)) for s in range(0, k, size)]


class Task:
    """A dataset, a flat model and a partition of the training set over workers."""

    def __init__(
        self,
        dataset: Dataset,
        model: FlatModel,
        partition: Partition,
        *,
        lr: float,
        batch_size: int,
        device: torch.device | str = "cpu",
        x_train: Tensor | None = None,
    ) -> None:
        """``x_train`` overrides the dataset's training inputs (a data-poisoning attack may
        have added examples); ``partition`` must index into it."""
        self.dataset = dataset
        self.model = model
        self.partition = partition
        self.lr = lr
        self.batch_size = batch_size
        self.device = torch.device(device)
        x = dataset.x_train if x_train is None else x_train
        self.x_train = x.to(self.device)
        # Flat, contiguous rows so that gathering a batch is one index_select.
        self._x_rows = self.x_train.reshape(self.x_train.shape[0], -1).contiguous()
        self._input_shape = tuple(self.x_train.shape[1:])
        self._x_buf: Tensor | None = None
        self.x_test = dataset.x_test.to(self.device)
        self.y_test = dataset.y_test.to(self.device)

    def _upload(self, t: Tensor) -> Tensor:
        """A batch drawn on the host (``sample_batches``) onto the task's device. To a GPU it
        goes through pinned memory without waiting: a plain copy from pageable memory makes
        the host wait until the device has finished all queued work, every step."""
        if self.device.type != "cuda" or t.device.type != "cpu":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    @property
    def dim(self) -> int:
        return self.model.dim

    def rows(self, x: Tensor) -> Tensor:
        """Training inputs ``x`` [n, ...] (as many as the task's) as the flat rows on the
        task's device that :meth:`local_train` takes as ``inputs``."""
        if x.shape != self.x_train.shape:
            raise ValueError(f"inputs of shape {tuple(x.shape)}; the task trains on "
                             f"{tuple(self.x_train.shape)}")
        return x.to(self.device).reshape(x.shape[0], -1).contiguous()

    def local_train(
        self,
        w: Tensor,
        workers: Tensor,
        labels: Tensor,
        rounds: int,
        generator: torch.Generator,
        inputs: Tensor | None = None,
    ) -> Tensor:
        """Local models of ``workers`` after ``rounds`` SGD steps from the global model ``w``.

        Each step is w_i ← w_i − α ∇F(w_i, B_i) with B_i a fresh batch of worker i's data
        (paper Section 2.1, Step II). ``labels`` are the training labels as the workers see
        them (a data-poisoning attack may have changed some); ``inputs``, when given, the
        training inputs as they see them (flat rows from :meth:`rows`, e.g. with a backdoor's
        trigger stamped), else the task's own. Returns [k, d].
        """
        k = workers.numel()
        if rounds < 1:
            return w.expand(k, -1).clone()
        W = w.new_empty(k, w.shape[-1])
        x_rows = self._x_rows if inputs is None else inputs
        for r in range(rounds):
            idx, mask = sample_batches(self.partition, workers, self.batch_size, generator)
            self.sgd_step(W, idx, mask, labels, x_rows, start=w if r == 0 else None)
        return W

    def sgd_step(self, W: Tensor, idx: Tensor, mask: Tensor, labels: Tensor,
                 inputs: Tensor | None = None, *, start: Tensor | None = None) -> None:
        """One local SGD step of every row of ``W`` [k, d] (in place) on its mini-batch:
        example ids ``idx`` [k, B] with ``mask`` [k, B] (False on padding), ``labels`` and
        ``inputs`` (flat rows, default the task's own) as the workers see them. The step
        :meth:`local_train` takes; a Flower ClientApp takes the same one
        (``fedpoison.flower``).

        A model with a fused in-place step (logistic regression's ``sgd_step_``) is stepped
        in blocks of workers on CPU, so that each block's gathered inputs stay in the L2
        cache between the two products that read them (per-worker results do not depend on
        the blocks, so a Flower node stepping one worker computes the same numbers).

        ``start`` [d], when given, is the model every row starts from (the first step of a
        local training): ``W``'s values are not read, and a model with a fused step from
        one start (``sgd_step_from_``) does not copy it k times first."""
        idx, mask = self._upload(idx), self._upload(mask)
        x_rows = self._x_rows if inputs is None else inputs
        y = labels.index_select(0, idx.reshape(-1)).view(idx.shape)
        fused = getattr(self.model, "sgd_step_", None)
        fused_from = getattr(self.model, "sgd_step_from_", None)
        if start is not None and (fused is None or fused_from is None):
            W.copy_(start.expand_as(W))
            start = None
        if fused is None:
            W.sub_(self.model.batched_grad(W, self._gather(idx, x_rows), y, mask),
                   alpha=self.lr)
            return
        block = getattr(self.model, "cpu_block_examples", None)
        for rows in _blocks(W.shape[0], idx.shape[1],
                            block if self.device.type == "cpu" else None):
            x = self._gather(idx[rows], x_rows)
            if start is None:
                fused(W[rows], x, y[rows], mask[rows], self.lr)
            else:
                fused_from(start, W[rows], x, y[rows], mask[rows], self.lr)

    def local_train_momentum(
        self,
        w: Tensor,
        workers: Tensor,
        labels: Tensor,
        rounds: int,
        generator: torch.Generator,
        *,
        momentum: float,
        weight_decay: float,
        velocity: Tensor | None,
        inputs: Tensor | None = None,
    ) -> Tensor:
        """:meth:`local_train` with momentum and weight decay (PyTorch's SGD, dampening 0).

        Each step is g = ∇F(w_i, B_i) + λ w_i, u_i ← μ u_i + g, w_i ← w_i − α u_i, with the
        same batches as :meth:`local_train`. ``velocity`` [m, d] holds every worker's
        momentum buffer u across iterations (zeros at first, which is PyTorch's first step
        u = g); the rows of ``workers`` are read and written back, the others are kept.
        ``None`` when μ = 0 (weight decay only). ``inputs`` as in :meth:`local_train`.
        """
        k = workers.numel()
        W = w.expand(k, -1).clone()
        rows = workers.to(self.device)
        u = velocity.index_select(0, rows) if velocity is not None else None
        x_rows = self._x_rows if inputs is None else inputs
        for _ in range(rounds):
            idx, mask = sample_batches(self.partition, workers, self.batch_size, generator)
            idx, mask = self._upload(idx), self._upload(mask)
            x = x_rows.index_select(0, idx.view(-1)).view(*idx.shape, *self._input_shape)
            g = self.model.batched_grad(W, x, labels[idx], mask)
            if weight_decay:
                g = g + weight_decay * W
            if u is not None:
                g = u.mul_(momentum).add_(g)
            W.sub_(g, alpha=self.lr)
        if velocity is not None and u is not None:
            velocity.index_copy_(0, rows, u)
        return W

    def train_on(self, w: Tensor, x: Tensor, y: Tensor, rounds: int,
                 generator: torch.Generator) -> Tensor:
        """One model after ``rounds`` SGD steps from ``w`` on mini-batches of (x, y), drawn
        without replacement each step (the server's own training, e.g. FLTrust's)."""
        n = x.shape[0]
        take = min(self.batch_size, n)
        W = w.detach().clone().unsqueeze(0)
        for _ in range(rounds):
            idx = torch.randperm(n, generator=generator)[:take].to(x.device)
            mask = torch.ones(1, take, dtype=torch.bool, device=x.device)
            W.sub_(self.model.batched_grad(W, x[idx][None], y[idx][None], mask), alpha=self.lr)
        return W[0]

    def _gather(self, idx: Tensor, x_rows: Tensor) -> Tensor:
        """Inputs (rows of ``x_rows``) of the examples ``idx`` [k, B] -> [k, B, *input_shape],
        gathered into a
        buffer the task reuses (a batch is only read within one local step; a fresh 10 MB
        tensor per step on MNIST costs page faults)."""
        n = idx.numel()
        buf = self._x_buf
        if buf is None or buf.shape[0] < n:
            buf = self._x_buf = x_rows.new_empty(n, x_rows.shape[1])
        out = buf[:n]
        torch.index_select(x_rows, 0, idx.reshape(-1), out=out)
        return out.view(*idx.shape, *self._input_shape)

    def evaluate_many(self, W: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Error rates and mean cross-entropies of k models W [k, d] on (x, y): two [k] tensors.

        Works class-major ([k, L, n]): the softmax and the maximum over L classes are then
        reductions across rows that vectorize along the n examples (with L = 10, 5–20× faster
        than along a last dimension of size 10). A model whose ``logits`` are a transposed
        view of class-major logits (logistic regression) costs no copy."""
        k = W.shape[0]
        wrong = torch.zeros(k, dtype=torch.float64, device=W.device)
        loss = torch.zeros(k, dtype=torch.float64, device=W.device)
        for start in range(0, x.shape[0], EVAL_CHUNK):
            xb, yb = x[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
            logits = self.model.logits(W, xb).float().transpose(1, 2)  # [k, L, n]
            # A non-finite model (e.g. mean under a hostile update) predicts nothing right.
            bad = ~torch.isfinite(logits).all(1)
            # max(...).indices: the first maximal class, as argmax, 5× faster across rows
            wrong += ((logits.max(1).indices != yb) | bad).sum(1).double()
            logp = torch.log_softmax(logits, dim=1)
            loss -= logp.gather(1, yb.expand(k, 1, -1)).squeeze(1).double().sum(1)
        n = max(x.shape[0], 1)
        loss = torch.where(torch.isfinite(loss), loss, torch.full_like(loss, float("inf")))
        return wrong / n, loss / n

    def evaluate(self, w: Tensor) -> Evaluation:
        """Test error rate and cross-entropy of one global model."""
        err, loss = self.evaluate_many(w[None], self.x_test, self.y_test)
        return Evaluation(error=float(err[0]), loss=float(loss[0]))
