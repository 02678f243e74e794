"""Sub-commands for experiments (``reproduce``, later ``sweep`` and ``report``)."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub: Any) -> None:
    """Register the experiment sub-commands on the top-level parser."""
    from fedpoison.experiments.presets import add_reproduce_command

    add_reproduce_command(sub)


__all__ = ["add_commands", "argparse"]
