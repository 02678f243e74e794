"""Defenses (Section 5): choose rows of ``W`` to drop before the server's rule aggregates.

Each defense registers itself in its own module (:func:`fedpoison.register_defense`) as
``reject(ctx: DefenseContext, **options) -> indices to drop``. Importing this package
registers the built-in ones: ``err``, ``lfr`` and ``union`` (:mod:`.rejection`).
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
