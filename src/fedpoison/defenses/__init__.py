"""Defenses by name (Section 5). ``none`` keeps every local model; ``err``, ``lfr`` and
``union`` reject local models by their impact on a validation set (``rejection``).

The submodule ``leave_one_out`` (not re-exported under that name, which would shadow it)
holds ``leave_one_out(rule, W, f, beta)`` and ``with_and_without``."""

from __future__ import annotations

from fedpoison.defenses.base import Defense, DefenseContext
from fedpoison.defenses.leave_one_out import with_and_without
from fedpoison.defenses.rejection import check_defense, err, impacts, lfr, union

DEFENSES: dict[str, Defense | None] = {"none": None, "err": err, "lfr": lfr, "union": union}

__all__ = [
    "DEFENSES",
    "Defense",
    "DefenseContext",
    "check_defense",
    "err",
    "impacts",
    "lfr",
    "union",
    "with_and_without",
]
