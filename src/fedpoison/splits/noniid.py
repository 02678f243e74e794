"""The paper's non-IID split with degree p (Fang et al., Section 4.1): the default split."""

from __future__ import annotations

import torch
from torch import Tensor

from fedpoison.data.partition import Partition, noniid_partition
from fedpoison.errors import ConfigError
from fedpoison.registry import Option, register_split


def check_noniid(num_workers: int, num_classes: int, *, p: float) -> None:
    """Needs at least one worker per class (workers ≥ classes)."""
    if num_workers < num_classes:
        raise ConfigError("workers", f"the non-IID split needs at least one worker per class: "
                                     f"the dataset has {num_classes} classes, got "
                                     f"workers={num_workers}")


def noniid(labels: Tensor, num_workers: int, num_classes: int, generator: torch.Generator,
           *, p: float) -> Partition:
    """Workers in L = classes groups; an example of label l goes to group l with probability
    p, to each other group with (1 − p)/(L − 1), then to a uniform worker of its group."""
    return noniid_partition(labels, num_workers, p, num_classes, generator)


register_split(
    "noniid", noniid,
    reference="Fang, Cao, Jia, Gong, USENIX Security 2020, Section 4.1 (degree of non-IID p)",
    summary="the paper's split: each label mostly on its own group of workers (degree p)",
    options=[Option("p", 0.5, "degree of non-IID: probability an example goes to its label's "
                    "group of workers (1/classes = IID in labels)", low=0.0, high=1.0,
                    alias="noniid")],
    check=check_noniid,
)
