"""Aggregation rules (paper Section 2.2): ``aggregate(W: Tensor[m, d], f: int) -> Tensor[d]``.

Every rule is pure and deterministic, takes and returns float32 on ``W``'s device, and
checks its preconditions up front (``ValueError`` naming the rule, ``m`` and ``f``). ``f``
is the number of Byzantine workers the server assumes (the paper's c).

>>> agg = get_aggregator("trimmed-mean", beta=3)
>>> check_aggregator("krum", m=100, f=20)   # validates without data
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from torch import Tensor

from fedpoison.aggregators.bulyan import bulyan, bulyan_select, check_bulyan
from fedpoison.aggregators.coordinate import (
    check_median,
    check_trimmed_mean,
    closest_to_median_mean_sorted,
    median,
    median_sorted,
    sort_workers,
    trimmed_mean,
    trimmed_mean_sorted,
)
from fedpoison.aggregators.krum import (
    check_krum,
    krum,
    krum_scores,
    krum_select,
    pairwise_sq_distances,
)
from fedpoison.aggregators.mean import check_mean, mean

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "bulyan",
    "bulyan_select",
    "check_aggregator",
    "closest_to_median_mean_sorted",
    "get_aggregator",
    "krum",
    "krum_scores",
    "krum_select",
    "mean",
    "median",
    "median_sorted",
    "pairwise_sq_distances",
    "sort_workers",
    "trimmed_mean",
    "trimmed_mean_sorted",
]

#: The contract: ``aggregate(W, f) -> w``.
Aggregator = Callable[[Tensor, int], Tensor]

#: Rules by name. Each takes ``(W, f, **options)``; ``get_aggregator`` binds the options.
AGGREGATORS: dict[str, Callable[..., Tensor]] = {
    "mean": mean,
    "krum": krum,
    "bulyan": bulyan,
    "trimmed-mean": trimmed_mean,
    "median": median,
}

# Options each rule accepts (all optional integers; None means the rule's default).
_OPTIONS: dict[str, tuple[str, ...]] = {
    "mean": (),
    "krum": (),
    "bulyan": ("theta", "gamma"),
    "trimmed-mean": ("beta",),
    "median": (),
}

_CHECKS: dict[str, Callable[..., Any]] = {
    "mean": check_mean,
    "krum": check_krum,
    "bulyan": check_bulyan,
    "trimmed-mean": check_trimmed_mean,
    "median": check_median,
}


def _check_name_and_options(name: str, options: dict[str, Any], *, signs: bool) -> None:
    if name not in AGGREGATORS:
        allowed = ", ".join(AGGREGATORS)
        raise ValueError(f"unknown aggregation rule {name!r}; allowed: {allowed}")
    allowed_opts = _OPTIONS[name]
    for key, value in options.items():
        if key not in allowed_opts:
            accepted = ", ".join(allowed_opts) if allowed_opts else "none"
            raise ValueError(f"{name}: unknown option {key!r}; accepted options: {accepted}")
        if value is None:
            continue
        if isinstance(value, bool) or not hasattr(type(value), "__index__"):
            raise ValueError(f"{name}: option {key} must be an integer or None, got {value!r}")
        if signs and operator.index(value) < 0:
            raise ValueError(f"{name}: option {key} must be >= 0, got {value}")


def check_aggregator(name: str, m: int, f: int, **options: Any) -> None:
    """Validate rule ``name`` with ``m`` workers, ``f`` assumed Byzantine and ``options``,
    without data (for config and sweep validation). Raises ``ValueError``."""
    _check_name_and_options(name, options, signs=False)  # the rule's check names m and f
    _CHECKS[name](m, f, **options)


def get_aggregator(name: str, **options: Any) -> Aggregator:
    """The rule ``name`` with ``options`` bound, as an ``aggregate(W, f) -> w`` callable.

    Unknown names or options raise ``ValueError``; option values are checked against
    ``m`` and ``f`` when the callable is called (or up front with ``check_aggregator``).
    """
    _check_name_and_options(name, options, signs=True)
    rule = AGGREGATORS[name]
    bound = dict(options)

    def aggregate(W: Tensor, f: int) -> Tensor:
        return rule(W, f, **bound)

    label = ", ".join(f"{k}={v}" for k, v in bound.items())
    aggregate.__name__ = name
    aggregate.__qualname__ = f"{name}({label})" if label else name
    aggregate.__doc__ = rule.__doc__
    return aggregate
