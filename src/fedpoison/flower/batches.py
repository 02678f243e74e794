"""Local SGD on a Flower SuperNode, batch for batch as fedpoison's simulator does it.

The simulator draws the mini-batches of all sampled workers in one call per local step, from
one generator (``rng.generator(seed, "train")``), in worker order: a worker's batch depends on
the others' draws. A ClientApp alone cannot reproduce that. The faithful choice: the server,
which knows the split, draws exactly the simulator's batches (:class:`BatchSchedule`, the
simulator's own :func:`fedpoison.tasks.batch_positions`) and sends each node its positions
into its own examples, an ``ArrayRecord`` ``{"positions": int64 [rounds, B]}`` under the
key :data:`BATCHES`. The node then takes fedpoison's own SGD step on them
(:func:`train_on_positions`, :meth:`fedpoison.tasks.Task.sgd_step`).

Positions, not example ids: a node holding only its own examples (a real deployment) uses
them as they are, provided its examples are in the order of the split (ascending ids). Where
the server does not know the split, nodes draw their own batches from a per-(seed, round,
worker) stream (:func:`client_generator`); the result is then not the simulator's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message
from torch import Tensor

from fedpoison.data.partition import Partition
from fedpoison.resolve import check_int
from fedpoison.rng import STREAMS, generator
from fedpoison.tasks import Task, batch_examples, batch_positions

BATCHES = "batches"
"""Key of the ``ArrayRecord`` holding a node's batch positions in a train message."""


class BatchSchedule:
    """The simulator's mini-batch draw, made on the server: per round, each sampled worker's
    positions [local_rounds, B] into its examples.

    Called once per round by the strategy (``node_records``) with the round's sampled
    workers, ascending; rounds must come in order, as the draw continues one stream.
    """

    def __init__(self, partition: Partition, batch_size: int, local_rounds: int = 1, *,
                 seed: int = 0) -> None:
        self.partition = partition
        self.batch_size = check_int("batch_size", batch_size, 1, None)
        self.local_rounds = check_int("local_rounds", local_rounds, 1, None)
        self.generator = generator(seed, "train")
        self.last_round = 0

    def positions(self, workers: Tensor) -> Tensor:
        """The next draw: int64 [k, local_rounds, B] for ``workers`` (ascending)."""
        steps = [batch_positions(self.partition, workers, self.batch_size, self.generator)
                 for _ in range(self.local_rounds)]
        return torch.stack(steps, dim=1)

    def __call__(self, server_round: int, workers: Tensor) -> list[dict[str, ArrayRecord]]:
        if server_round != self.last_round + 1:
            raise ValueError(f"batch schedule: round {server_round} after round "
                             f"{self.last_round}; rounds must come in order")
        self.last_round = server_round
        pos = self.positions(workers).numpy()
        return [{BATCHES: ArrayRecord({"positions": Array(np.ascontiguousarray(p))})}
                for p in pos]


def read_positions(message: Message) -> Tensor:
    """The batch positions [rounds, B] the server sent with a train message."""
    if BATCHES not in message.content.array_records:
        raise ValueError(f"the train message carries no {BATCHES!r} record: the server "
                         "sends no batch schedule (see fedpoison.flower.BatchSchedule)")
    return torch.from_numpy(message.content.array_records[BATCHES]["positions"].numpy())


def train_on_positions(task: Task, worker: int, w: Tensor, positions: Tensor,
                       labels: Tensor | None = None) -> Tensor:
    """Worker ``worker``'s local model after one SGD step per row of ``positions``
    [rounds, B] from the global model ``w``: the simulator's step on the simulator's batches.

    ``task`` holds the worker's examples in its partition (the whole split, or only this
    worker's examples as worker 0); ``labels`` default to the task's training labels.
    """
    workers = torch.tensor([worker], dtype=torch.int64)
    labels = task.dataset.y_train.to(task.device) if labels is None else labels
    W = w.to(task.device, torch.float32).reshape(1, -1).clone()
    for pos in positions.to(torch.int64):
        idx, mask = batch_examples(task.partition, workers, pos.reshape(1, -1))
        task.sgd_step(W, idx, mask, labels)
    return W[0]


def client_generator(seed: int, server_round: int, worker: int) -> torch.Generator:
    """A node's own batch stream for one round, where the server sends no schedule: seeded
    by (seed, round, worker), independent of the other nodes (not the simulator's draw)."""
    state = np.random.SeedSequence([seed, STREAMS.index("train"), server_round, worker])
    a, b = state.generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(a) << 32 | int(b))


def train_own_batches(task: Task, worker: int, w: Tensor, rounds: int, seed: int,
                      server_round: int, labels: Tensor | None = None) -> Tensor:
    """Worker ``worker``'s local model after ``rounds`` SGD steps on batches it draws itself
    (:func:`client_generator`), for deployments where the server does not know the split."""
    labels = task.dataset.y_train.to(task.device) if labels is None else labels
    W = task.local_train(w.to(task.device, torch.float32), torch.tensor([worker]), labels,
                         rounds, client_generator(seed, server_round, worker))
    return W[0]


__all__: Sequence[str] = ("BATCHES", "BatchSchedule", "client_generator", "read_positions",
                          "train_on_positions", "train_own_batches")
