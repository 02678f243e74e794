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

Leave-one-out (ERR, LFR, Union before a bucketed rule; option ``leave_one_out``). A defense
compares the aggregate of all rows with the aggregate without each row ``i``. ``same`` (the
default) shuffles once: the aggregate without ``i`` uses the same buckets, the bucket that
held ``i`` averaging its other rows (or vanishing if ``i`` was alone), so the comparison
measures row ``i``'s effect and not a new shuffle's (common random numbers; neither paper
combines the two, docs/choices.md). ``fresh`` runs the whole pipeline again for each ``i``, a
new shuffle of the other ``m − 1`` rows each time (``m + 1`` permutations per iteration).

Hostile rows. A bucket mean is a float64 average, so rows of ±1e38 give finite means; a
bucket with a NaN or ±Inf row is non-finite, and at most ``f`` buckets are: the rule after
it handles them as hostile rows.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fedpoison.aggregators.leave_one_out import exclusive_sums
from fedpoison.aggregators.mean import check_count, check_matrix
from fedpoison.registry import Option, register_preaggregator
from fedpoison.server import LeaveOneOut

__all__ = ["LEAVE_ONE_OUT", "bucket_of_rows", "bucketing", "bucketing_leave_one_out",
           "bucketing_output"]


def bucketing_output(m: int, f: int, s: int, leave_one_out: str = "same") -> tuple[int, int]:
    """``(⌈m/s⌉, min(f, ⌈m/s⌉))``: the buckets, and how many may hold a Byzantine row."""
    m, f = check_count("bucketing", m, f)
    buckets = math.ceil(m / s)
    return buckets, min(f, buckets)


#: ``leave_one_out`` choices (module doc).
LEAVE_ONE_OUT = ("same", "fresh")


def bucket_of_rows(m: int, s: int, generator: torch.Generator) -> Tensor:
    """The bucket of each row [m]: row ``perm[k]`` goes to bucket ``k // s``."""
    perm = torch.randperm(m, generator=generator)
    bucket = torch.empty(m, dtype=torch.int64)
    bucket[perm] = torch.arange(m) // s
    return bucket


def _means(W: Tensor, bucket: Tensor, buckets: int) -> Tensor:
    sums = torch.zeros(buckets, W.shape[1], dtype=torch.float64, device=W.device)
    sums.index_add_(0, bucket, W.detach().to(torch.float64))
    counts = torch.bincount(bucket, minlength=buckets).to(torch.float64)
    return (sums / counts[:, None]).to(torch.float32)


def bucketing(W: Tensor, f: int, *, ctx: Any, s: int = 2, leave_one_out: str = "same"
              ) -> Tensor:
    """The means of ``⌈m/s⌉`` random buckets of ``s`` rows (ICLR 2022, Algorithm 1)."""
    m, f = check_matrix(W, "bucketing", f)
    buckets = math.ceil(m / s)
    return _means(W, bucket_of_rows(m, s, ctx.generator).to(W.device), buckets)


def bucketing_leave_one_out(W: Tensor, f: int, *, ctx: Any, s: int = 2,
                            leave_one_out: str = "same") -> LeaveOneOut | None:
    """One shuffle; without row ``i`` its bucket averages its other rows (``same``, module
    doc), or ``None`` for ``fresh``. The other rows' sums are exclusive sums over the
    bucket's slots (no subtraction: a hostile ``i`` leaves its partners' mean exact)."""
    if leave_one_out not in LEAVE_ONE_OUT:
        raise ValueError(f"bucketing: leave_one_out must be one of {', '.join(LEAVE_ONE_OUT)}, "
                         f"got {leave_one_out!r}")
    if leave_one_out == "fresh":
        return None
    m, f = check_matrix(W, "bucketing", f)
    buckets = math.ceil(m / s)
    bucket = bucket_of_rows(m, s, ctx.generator).to(W.device)
    full = _means(W, bucket, buckets)
    # slot table [buckets, s]: the rows of bucket b (in index order) fill slots b·s, b·s + 1,
    # ... (every bucket but the last is full); the slots past m get row m, a zero row, so
    # the last (shorter) bucket sums only its own rows
    table = torch.full((buckets * s,), m, dtype=torch.int64, device=W.device)
    order = torch.argsort(bucket, stable=True)  # rows bucket by bucket
    table[: m] = order
    X = torch.cat([W.detach().to(torch.float64),
                   torch.zeros((1, W.shape[1]), dtype=torch.float64, device=W.device)])
    others = exclusive_sums(X[table].reshape(buckets, s, -1), dim=1).reshape(buckets * s, -1)
    counts = torch.bincount(bucket, minlength=buckets).to(torch.float64)
    slot = torch.empty(m, dtype=torch.int64, device=W.device)
    slot[order] = torch.arange(m, device=W.device)
    rest = counts[bucket] - 1.0
    replacement = (others[slot] / rest.clamp(min=1.0)[:, None]).to(torch.float32)
    return LeaveOneOut(full, bucket, replacement, rest == 0)


register_preaggregator(
    "bucketing", bucketing,
    reference="Karimireddy, He, Jaggi, Byzantine-Robust Learning on Heterogeneous Datasets "
              "via Bucketing, ICLR 2022, Algorithm 1",
    summary="shuffle the models (seeded), average them in buckets of s; the rule aggregates "
            "the ⌈m/s⌉ bucket means with f unchanged",
    options=[Option("s", 2, "models per bucket", low=1),
             Option("leave_one_out", "same", "a defense's leave-one-out: same (one shuffle; "
                    "the bucket of the left-out model averages its others) or fresh (a new "
                    "shuffle per left-out model)", choices=LEAVE_ONE_OUT)],
    output=bucketing_output, needs=("generator",), leave_one_out=bucketing_leave_one_out,
)
