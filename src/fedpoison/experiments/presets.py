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

import argparse
import json
import sys
from pathlib import Path
from typing import Any

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


def add_executor_options(p: argparse.ArgumentParser) -> None:
    """--store, --executor, --jobs, --address, --max-retries."""
    from fedpoison.experiments.executors import EXECUTORS

    g = p.add_argument_group("execution")
    g.add_argument("--store", default=str(DEFAULT_STORE),
                   help=f"results store (SQLite file; default {DEFAULT_STORE})")
    g.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this process (default); process: a process pool on this "
                        "machine; ray: Ray tasks")
    g.add_argument("--jobs", type=int, default=None,
                   help="process pool size / CPUs of a local Ray instance (default: all cores)")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join: 'auto' or ray://HOST:PORT (default: start a local "
                        "instance)")
    g.add_argument("--max-retries", type=int, default=3,
                   help="times a run is retried when its worker process dies (default 3)")


def add_spec_options(p: argparse.ArgumentParser, what: str = "run") -> None:
    p.add_argument("--trials", type=int, default=None,
                   help="trials per point (seeds 0..N-1; default: the spec's)")
    p.add_argument("--quick", action="store_true",
                   help="reduced run with the spec's 'quick' overrides (labelled as such)")
    p.add_argument("--variant", default=None,
                   help="the spec's variant (figures: lr, the default, or dnn)")


def executor_from_args(args: argparse.Namespace) -> Any:
    from fedpoison.experiments.executors import make_executor

    return make_executor(args.executor, jobs=args.jobs, address=args.address,
                         max_retries=args.max_retries)


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


def report_failures(failed: list[tuple[str, str]]) -> None:
    for key, error in failed[:3]:
        print(f"run {key} failed:\n{error.rstrip()}", file=sys.stderr)
    if len(failed) > 3:
        print(f"... and {len(failed) - 3} more failed runs", file=sys.stderr)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from fedpoison.experiments.store import ResultStore
    from fedpoison.experiments.sweep import run_sweep
    from fedpoison.report.tables import collect, format_markdown

    spec = load_preset(args.name).effective(trials=args.trials, quick=args.quick,
                                            variant=args.variant)
    spec.plan()  # validate every run before opening the store or starting an executor
    executor = executor_from_args(args)
    with ResultStore(args.store) as store:
        outcome = run_sweep(spec, store, executor, progress=not args.json)
        stats = collect(spec, store)
    note = note_for(spec, outcome.seconds, outcome.skipped)
    out = Path(args.out) if args.out else Path("results") / spec.record_name
    written = write_outputs(spec, stats, out, note, plot=spec.kind == "figure")
    if args.json:
        print(json.dumps([s.to_json() for s in stats]))
    else:
        print(format_markdown(spec, stats, note))
        print(f"written: {', '.join(str(p) for p in written)}; store: {args.store}",
              file=sys.stderr)
    if outcome.failed:
        report_failures(outcome.failed)
        return 1
    return 0


def add_reproduce_command(sub: Any) -> None:
    """``fedpoison reproduce NAME [--trials N] [--quick] [--json] [--out DIR] ...``."""
    p = sub.add_parser("reproduce", help="run a table or figure of the paper, ours beside "
                                         "the paper's")
    p.add_argument("name", help=f"preset: {', '.join(preset_names())}")
    add_spec_options(p)
    p.add_argument("--json", action="store_true", help="print the cells as a JSON list")
    p.add_argument("--out", default=None,
                   help="folder for the Markdown/CSV tables and PNGs (default results/NAME)")
    add_executor_options(p)
    p.set_defaults(func=_cmd_reproduce)
