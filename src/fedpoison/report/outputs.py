"""Writing a spec's results: the note printed above a table, and the Markdown/CSV/PNG files."""

from __future__ import annotations

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
        note = f"REDUCED RUN (--quick: {spec.quick_note()}); not the paper's scale. " + note
    return note


def write_outputs(spec: SweepSpec, stats: list[Any], out: Path, note: str,
                  plot: bool) -> list[Path]:
    """NAME.md, NAME.csv and (figures) the PNGs; returns the paths written."""
    from fedpoison.report.plots import plot_spec
    from fedpoison.report.tables import format_csv, format_markdown

    out.mkdir(parents=True, exist_ok=True)
    name = spec.record_name
    md, csvp = out / f"{name}.md", out / f"{name}.csv"
    md.write_text(format_markdown(spec, stats, note))
    csvp.write_text(format_csv(spec, stats))
    written = [md, csvp]
    if plot:
        short = "REDUCED RUN (--quick)" if spec.options.get("quick") else ""
        written += plot_spec(spec, stats, out, note=short)
    return written
