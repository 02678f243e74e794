"""Aggregation rules (paper Section 2.2): ``rule(W: Tensor[m, d], f: int, **options) -> w``.

Every rule registers itself in its own module (:func:`fedpoison.register_rule`), is pure and
deterministic, takes and returns float32 on ``W``'s device, and checks its preconditions up
front (``ValueError`` naming the rule, ``m`` and ``f``). ``f`` is the number of Byzantine
workers the server assumes (the paper's c). Importing this package registers the built-in
rules; :func:`get_aggregator` and :func:`check_aggregator` reach any registered rule.

>>> agg = get_aggregator("trimmed-mean", beta=3)
>>> check_aggregator("krum", m=100, f=20)   # validates without data
"""

from __future__ import annotations

from typing import Any

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
    "bulyan",
    "bulyan_select",
    "check_aggregator",
    "check_bulyan",
    "check_krum",
    "check_mean",
    "check_median",
    "check_trimmed_mean",
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


def get_aggregator(name: str, **options: Any) -> Any:
    """The registered rule ``name`` with ``options`` bound: ``aggregate(W, f) -> w``.

    Unknown names or options raise ``ConfigError`` (a ``ValueError``); option values are
    checked against ``m`` and ``f`` when the rule is called (or with ``check_aggregator``).
    """
    from fedpoison.server import bind_rule

    return bind_rule(name, options)


def check_aggregator(name: str, m: int, f: int, **options: Any) -> None:
    """Validate rule ``name`` with ``m`` models, ``f`` assumed Byzantine and ``options``,
    without data. Raises ``ValueError``."""
    get_aggregator(name, **options).check(m, f)


def _import_all_modules() -> None:
    """Import every module of this package: each rule and pre-aggregator registers itself in
    its own module, so adding one is adding its file (and its test)."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_import_all_modules()
