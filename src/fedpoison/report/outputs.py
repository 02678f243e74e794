"""Writing a spec's results: the note printed above a table, and the Markdown/CSV/figure files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedpoison.experiments.spec import SweepSpec


def note_for(spec: SweepSpec, seconds: float | None = None, reused: int = 0) -> str:
    """'REDUCED RUN (--quick: ...)', trials, time: the line printed above a result."""
    note = f"{spec.trials} trial(s) per cell"
    if seconds is not None:
        note += f", {seconds:.0f} s"
    note += "."
    if reused:
        note += f" {reused} run(s) reused from the store."
    if spec.options.get("quick"):
        label = f" {spec.quick_label}" if spec.quick_label else ""
        note = (f"REDUCED RUN (--quick: {spec.quick_note()}); not the paper's scale.{label} "
                + note)
    return note


def write_outputs(spec: SweepSpec, stats: list[Any], out: Path, note: str,
                  plot: bool, *, options: Any = None,
                  curves: Sequence[Sequence[Any]] | None = None) -> list[Path]:
    """NAME.md, NAME.csv, the figures (``plot``; PlotOptions ``options``) and, given the
    stored ``curves`` (``plots.load_curves``), NAME-curves; returns the paths written.

    A figure needs at least one stored run: with none, ``plot`` writes no figure (the tables
    say that every run is missing); ``fedpoison report`` refuses such a figure up front.
    """
    from fedpoison.report.plots import plot_curves, plot_spec
    from fedpoison.report.tables import format_csv, format_markdown

    out.mkdir(parents=True, exist_ok=True)
    name = spec.record_name
    md, csvp = out / f"{name}.md", out / f"{name}.csv"
    md.write_text(format_markdown(spec, stats, note))
    csvp.write_text(format_csv(spec, stats))
    written = [md, csvp]
    short = "REDUCED RUN (--quick)" if spec.options.get("quick") else ""
    if plot and any(s.values for s in stats):
        written += plot_spec(spec, stats, out, note=short, options=options)
    if curves is not None:
        written += plot_curves(spec, stats, curves, out, note=short, options=options)
    return written
