"""Pathological non-IID shards (McMahan et al., 2017): sort by label, cut into shards, deal
each worker a few of them."""

from __future__ import annotations

import torch
from torch import Tensor

from fedpoison.data.partition import Partition
from fedpoison.registry import Option, register_split


def shards(labels: Tensor, num_workers: int, num_classes: int, generator: torch.Generator,
           *, per_worker: int) -> Partition:
    """Examples sorted by label (seeded random order within a label) and cut into
    ``num_workers · per_worker`` contiguous shards whose sizes differ by at most one; each
    worker gets ``per_worker`` shards chosen uniformly at random."""
    n = labels.numel()
    total = num_workers * per_worker
    if total > n:
        raise ValueError(f"shards: {num_workers} workers × {per_worker} shards = {total} "
                         f"shards, more than the {n} training examples")
    shuffled = torch.randperm(n, generator=generator)
    order = shuffled[torch.argsort(labels[shuffled], stable=True)]
    shard_of_position = torch.arange(n) * total // n
    dealt = torch.randperm(total, generator=generator)
    owner_of_shard = torch.empty(total, dtype=torch.int64)
    owner_of_shard[dealt] = torch.arange(total) // per_worker
    owner = torch.empty(n, dtype=torch.int64)
    owner[order] = owner_of_shard[shard_of_position]
    return Partition.from_owner(owner, num_workers)


register_split(
    "shards", shards,
    reference="McMahan, Moore, Ramage, Hampson, Agüera y Arcas: Communication-Efficient "
              "Learning of Deep Networks from Decentralized Data, AISTATS 2017 "
              "(pathological non-IID: 200 shards of 300, 2 per client)",
    summary="sorted by label, cut into shards, each worker gets a few random shards",
    options=[Option("per_worker", 2, "shards each worker holds (McMahan et al.: 2)", low=1)],
)
