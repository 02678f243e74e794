"""Paper presets: ``fedpoison reproduce NAME`` runs a table or figure of the paper through the
sweep engine and prints our numbers beside the paper's.

A preset is a sweep spec shipped in ``fedpoison/presets/`` (format: :mod:`.spec`). Tables
(``table2a`` ...) have ``rows`` × ``columns`` and the paper's value per cell; figures
(``figure2`` ... ``figure5``) have panels, each an x axis and the attack series. Runs go to
the results store (default ``results/runs.sqlite``), so a rerun, or another preset that
shares runs, reuses every stored run. Outputs: Markdown and CSV tables (and PNGs for
figures) in ``--out`` (default ``results/NAME[-quick]``).
"""

from __future__ import annotations

from pathlib import Path

from fedpoison.errors import ConfigError
from fedpoison.experiments.spec import SweepSpec, load_spec, spec_names

DEFAULT_STORE = Path("results") / "runs.sqlite"


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    return spec_names()


def load_preset(name: str) -> SweepSpec:
    """The shipped preset ``name`` (ConfigError listing the presets if unknown)."""
    if name not in preset_names():
        raise ConfigError("preset", f"unknown preset {name!r}; allowed: "
                                    f"{', '.join(preset_names())}")
    return load_spec(name)
