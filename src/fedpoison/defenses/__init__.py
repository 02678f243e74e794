"""Defenses by name (Section 5). ``none`` keeps every local model."""

from __future__ import annotations

from fedpoison.defenses.base import Defense, DefenseContext

DEFENSES: dict[str, Defense | None] = {"none": None}

__all__ = ["DEFENSES", "Defense", "DefenseContext"]
