"""Defenses: rejection before the rule (Section 5) and trust or detection defenses.

A defense that drops rows registers itself (:func:`fedpoison.register_defense`) as
``reject(ctx: DefenseContext, **options) -> indices to drop``; a defense that aggregates with
weights registers itself as a rule (:func:`fedpoison.register_rule`) and reports the rows it
gave no weight with ``ctx.remove``. Importing this package imports every module in it (each
registers its own components), so adding a defense is adding its module: ``err``, ``lfr``
and ``union`` (:mod:`.rejection`) and the trust and detection defenses, one module each.
"""

from __future__ import annotations

import importlib
import pkgutil

from fedpoison.defenses.base import BoundDefense, Defense, DefenseContext
from fedpoison.defenses.rejection import check_rejection, err, impacts, lfr, union

__all__ = [
    "BoundDefense",
    "Defense",
    "DefenseContext",
    "check_rejection",
    "err",
    "impacts",
    "lfr",
    "union",
]

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")
