"""Non-IID split of a training set over workers with the paper's degree p (Section 4.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Partition:
    """Which training examples each worker holds.

    ``owner[n]`` is the worker of example n. ``indices[i, :counts[i]]`` are worker i's example
    ids (ascending); the rest of row i is padding (0) so that per-worker sampling is one
    tensor operation over all workers.
    """

    owner: Tensor  # int64 [n]
    indices: Tensor  # int64 [m, max_count]
    counts: Tensor  # int64 [m]

    @property
    def num_workers(self) -> int:
        return int(self.counts.shape[0])

    @classmethod
    def from_owner(cls, owner: Tensor, num_workers: int) -> Partition:
        owner = owner.to(torch.int64)
        counts = torch.bincount(owner, minlength=num_workers)
        order = torch.argsort(owner, stable=True)  # example ids grouped by worker, ascending
        width = max(int(counts.max().item()) if counts.numel() else 0, 1)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(owner.numel()) - starts[owner[order]]
        indices = torch.zeros(num_workers, width, dtype=torch.int64)
        indices[owner[order], pos] = order
        return cls(owner=owner, indices=indices, counts=counts)


def worker_groups(num_workers: int, num_groups: int) -> Tensor:
    """Group id of every worker: workers are split evenly (sizes differ by at most one)."""
    return torch.arange(num_workers) * num_groups // num_workers


def noniid_partition(
    labels: Tensor, num_workers: int, p: float, num_classes: int, generator: torch.Generator
) -> Partition:
    """Split examples over workers with degree of non-IID ``p`` (paper Section 4.1).

    Workers are split evenly into L = ``num_classes`` groups. An example with label l goes to
    group l with probability p and to each other group with probability (1 − p)/(L − 1); within
    its group it goes to a uniformly random worker. p = 1/L is IID; p = 1 puts every label on
    its own group only.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"noniid: p must be in [0, 1], got {p}")
    if num_workers < num_classes:
        raise ValueError(
            f"workers: the non-IID split needs at least one worker per class "
            f"(workers >= {num_classes}), got {num_workers}"
        )
    n = labels.numel()
    L = num_classes
    # Probability of each group for each example: p on its own label's group, the rest spread.
    probs = torch.full((n, L), (1.0 - p) / (L - 1) if L > 1 else 0.0, dtype=torch.float64)
    probs[torch.arange(n), labels] = p if L > 1 else 1.0
    group = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    groups = worker_groups(num_workers, L)
    group_size = torch.bincount(groups, minlength=L)
    group_start = torch.cumsum(group_size, 0) - group_size
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    within = torch.minimum((u * group_size[group]).long(), group_size[group] - 1)
    owner = group_start[group] + within
    return Partition.from_owner(owner, num_workers)
