"""The non-IID split of Section 4.1."""

from __future__ import annotations

import pytest
import torch

from fedpoison.data.partition import Partition, noniid_partition, worker_groups


def _labels(n: int = 20000, classes: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(classes, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8, 1.0])
def test_group_label_shares_match_p(p: float) -> None:
    labels = _labels()
    part = noniid_partition(labels, 100, p, 10, torch.Generator().manual_seed(1))
    group_of_example = worker_groups(100, 10)[part.owner]
    for label in range(10):
        on_own = (group_of_example[labels == label] == label).double().mean().item()
        assert on_own == pytest.approx(p, abs=0.03)
        if p < 1:
            # every other group gets (1 - p)/(L - 1) of the label
            others = group_of_example[(labels == label) & (group_of_example != label)]
            share = torch.bincount(others, minlength=10).double() / (labels == label).sum()
            share = torch.cat([share[:label], share[label + 1 :]])
            assert torch.allclose(share, torch.full_like(share, (1 - p) / 9), atol=0.02)


def test_every_example_assigned_exactly_once() -> None:
    labels = _labels(5000)
    part = noniid_partition(labels, 37, 0.5, 10, torch.Generator().manual_seed(2))
    held = torch.cat([part.indices[i, : part.counts[i]] for i in range(37)])
    assert held.numel() == 5000
    assert torch.equal(held.sort()[0], torch.arange(5000))
    for i in range(37):
        assert bool((part.owner[part.indices[i, : part.counts[i]]] == i).all())


def test_workers_within_group_are_uniform() -> None:
    labels = _labels(50000)
    part = noniid_partition(labels, 100, 0.5, 10, torch.Generator().manual_seed(3))
    # 10 workers per group, each should hold ~1/10 of its group's examples
    counts = part.counts.view(10, 10).double()
    share = counts / counts.sum(1, keepdim=True)
    assert torch.allclose(share, torch.full_like(share, 0.1), atol=0.02)


def test_same_seed_same_split_and_different_seed_differs() -> None:
    labels = _labels(3000)
    a = noniid_partition(labels, 20, 0.5, 10, torch.Generator().manual_seed(7))
    b = noniid_partition(labels, 20, 0.5, 10, torch.Generator().manual_seed(7))
    c = noniid_partition(labels, 20, 0.5, 10, torch.Generator().manual_seed(8))
    assert torch.equal(a.owner, b.owner)
    assert not torch.equal(a.owner, c.owner)


def test_uneven_groups() -> None:
    groups = worker_groups(13, 4)
    assert torch.bincount(groups).tolist() == [4, 3, 3, 3] or sorted(
        torch.bincount(groups).tolist()
    ) == [3, 3, 3, 4]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="noniid"):
        noniid_partition(_labels(10), 10, 1.5, 10, torch.Generator())
    with pytest.raises(ValueError, match="workers"):
        noniid_partition(_labels(10), 5, 0.5, 10, torch.Generator())


def test_from_owner_padding() -> None:
    part = Partition.from_owner(torch.tensor([2, 0, 2, 2]), 4)
    assert part.counts.tolist() == [1, 0, 3, 0]
    assert part.indices[2, :3].tolist() == [0, 2, 3]
    assert part.indices[0, 0].item() == 1
