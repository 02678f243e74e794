"""Defenses: rejection before the rule (Section 5) and trust or detection defenses.

A defense that drops rows registers itself (:func:`fedpoison.register_defense`) as
``reject(ctx: DefenseContext, **options) -> indices to drop``; a defense that aggregates with
weights registers itself as a rule (:func:`fedpoison.register_rule`) and reports the rows it
gave no weight with ``ctx.remove``. Importing this package imports every module in it (each
registers its own components), so adding a defense is adding its module: ``err``, ``lfr``
and ``union`` (:mod:`.rejection`) and the trust and detection defenses, one module each.
"""

from __future__ import annotations

from fedpoison.defenses.base import BoundDefense, Defense, DefenseContext
from fedpoison.defenses.rejection import check_rejection, err, impacts, lfr, union
from fedpoison.registry import import_submodules

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

# Every module of this package registers its components when imported: a new component needs
# only its own file.
import_submodules(__name__, __path__)
