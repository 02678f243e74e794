"""IID split: a uniform random shuffle cut into equal parts (McMahan et al., 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from fedpoison.data.partition import Partition
from fedpoison.registry import register_split


def iid(labels: Tensor, num_workers: int, num_classes: int,
        generator: torch.Generator) -> Partition:
    """The examples in a seeded random order, cut into ``num_workers`` parts whose sizes
    differ by at most one."""
    n = labels.numel()
    if n < num_workers:
        raise ValueError(f"iid: {n} training examples cannot give each of {num_workers} "
                         "workers one")
    order = torch.randperm(n, generator=generator)
    owner = torch.empty(n, dtype=torch.int64)
    owner[order] = torch.arange(n) * num_workers // n
    return Partition.from_owner(owner, num_workers)


register_split(
    "iid", iid,
    reference="McMahan, Moore, Ramage, Hampson, Agüera y Arcas: Communication-Efficient "
              "Learning of Deep Networks from Decentralized Data, AISTATS 2017 (IID split)",
    summary="every worker gets a uniform random equal share of the training set",
)
