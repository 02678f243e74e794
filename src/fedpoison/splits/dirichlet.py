"""Dirichlet label shares per worker (Hsu, Qi, Brown, 2019)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fedpoison.data.partition import Partition
from fedpoison.registry import Option, register_split


def dirichlet(labels: Tensor, num_workers: int, num_classes: int, generator: torch.Generator,
              *, alpha: float) -> Partition:
    """Worker i draws label shares q_i ~ Dir(α · prior), prior the training set's label
    distribution (Hsu et al.); each example of label k then goes to worker i with
    probability q_ik / Σ_j q_jk, so every example is held exactly once and worker i's label
    shares are q_i up to sampling noise. α → 0: one label per worker; α → ∞: IID."""
    n = labels.numel()
    counts = torch.bincount(labels, minlength=num_classes).double()
    concentration = (alpha * counts / n).numpy()
    present = np.flatnonzero(concentration > 0)
    # NumPy's sampler stays finite for tiny concentrations; its seed comes from the run's
    # split stream, so the split is a pure function of the run's seed.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    shares = np.zeros((num_workers, num_classes))
    shares[:, present] = rng.dirichlet(concentration[present], size=num_workers)
    q = torch.from_numpy(shares)
    owner = torch.empty(n, dtype=torch.int64)
    for k in present.tolist():
        mine = torch.nonzero(labels == k).squeeze(1)
        column = q[:, k]
        if not bool(column.sum() > 0):
            raise ValueError(f"dirichlet: alpha={alpha:g} gave no worker a share of label {k}; "
                             "use a larger alpha or more workers")
        owner[mine] = torch.multinomial(column, mine.numel(), replacement=True,
                                        generator=generator)
    return Partition.from_owner(owner, num_workers)


register_split(
    "dirichlet", dirichlet,
    reference="Hsu, Qi, Brown: Measuring the Effects of Non-Identical Data Distribution for "
              "Federated Visual Classification, arXiv:1909.06335, 2019",
    summary="each worker's label shares drawn from Dir(α · label prior); α small = few "
            "labels per worker",
    options=[Option("alpha", 1.0, "concentration α (Hsu et al.'s; the per-label "
                    "concentration is α times the label's share, α/classes when balanced)",
                    low=0.0, low_open=True)],
)
