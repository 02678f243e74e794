"""Bucketing (Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets
via Bucketing", ICLR 2022, Algorithm 1): a pre-aggregator composable before any rule.

The rows are shuffled by a random permutation (the server's seeded generator,
``ctx.generator``), cut into ``⌈m/s⌉`` consecutive buckets of ``s`` rows (the last one holds
the remaining ``m − s(⌈m/s⌉ − 1)``), and each bucket is replaced by the average of its rows;
the rule then aggregates the ``⌈m/s⌉`` bucket means. As in the authors' code
(``bucketing_wrapper``: ``sum(inputs[i] for i in indices_slice) / len(indices_slice)``), the
last bucket is the mean of the rows it holds. One scatter-add in float64, no loop.

Byzantine count. A Byzantine row lands in exactly one bucket, so at most ``f`` of the
``⌈m/s⌉`` buckets hold one: the rule is told ``f' = min(f, ⌈m/s⌉)`` (the authors' code keeps
``f`` for the rule after bucketing, e.g. ``Krum(n=⌈n/s⌉, f=f)``, ``TM(b=f)``; the paper's
analysis needs the Byzantine fraction ``s·δ`` of buckets below the rule's breakdown point).
The rule's precondition is checked on ``(⌈m/s⌉, f')`` when the config is resolved.

Hostile rows. A bucket mean is a float64 average, so rows of ±1e38 give finite means; a
bucket with a NaN or ±Inf row is non-finite, and at most ``f`` buckets are: the rule after
it handles them as hostile rows.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fedpoison.aggregators.mean import check_count, check_matrix
from fedpoison.registry import Option, register_preaggregator

__all__ = ["bucket_of_rows", "bucketing", "bucketing_output"]


def bucketing_output(m: int, f: int, s: int) -> tuple[int, int]:
    """``(⌈m/s⌉, min(f, ⌈m/s⌉))``: the buckets, and how many may hold a Byzantine row."""
    m, f = check_count("bucketing", m, f)
    buckets = math.ceil(m / s)
    return buckets, min(f, buckets)


def bucket_of_rows(m: int, s: int, generator: torch.Generator) -> Tensor:
    """The bucket of each row [m]: row ``perm[k]`` goes to bucket ``k // s``."""
    perm = torch.randperm(m, generator=generator)
    bucket = torch.empty(m, dtype=torch.int64)
    bucket[perm] = torch.arange(m) // s
    return bucket


def bucketing(W: Tensor, f: int, *, ctx: Any, s: int = 2) -> Tensor:
    """The means of ``⌈m/s⌉`` random buckets of ``s`` rows (ICLR 2022, Algorithm 1)."""
    m, f = check_matrix(W, "bucketing", f)
    buckets = math.ceil(m / s)
    bucket = bucket_of_rows(m, s, ctx.generator).to(W.device)
    sums = torch.zeros(buckets, W.shape[1], dtype=torch.float64, device=W.device)
    sums.index_add_(0, bucket, W.detach().to(torch.float64))
    counts = torch.bincount(bucket, minlength=buckets).to(torch.float64)
    return (sums / counts[:, None]).to(torch.float32)


register_preaggregator(
    "bucketing", bucketing,
    reference="Karimireddy, He, Jaggi, Byzantine-Robust Learning on Heterogeneous Datasets "
              "via Bucketing, ICLR 2022, Algorithm 1",
    summary="shuffle the models (seeded), average them in buckets of s; the rule aggregates "
            "the ⌈m/s⌉ bucket means with f unchanged",
    options=[Option("s", 2, "models per bucket", low=1)],
    output=bucketing_output, needs=("generator",),
)
