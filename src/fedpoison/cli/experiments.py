"""Sub-commands for experiments: ``reproduce``, ``sweep`` and ``report``.

    fedpoison sweep spec.yaml --store results/runs.sqlite [--executor ray]
    fedpoison report results/runs.sqlite --table table2a --figure figure2-quick
    fedpoison report results/runs.sqlite --export runs.parquet
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedpoison.errors import ConfigError
from fedpoison.experiments.presets import DEFAULT_STORE, preset_names


def add_commands(sub: Any) -> None:
    """Register the experiment sub-commands on the top-level parser."""
    add_reproduce_command(sub)

    p = sub.add_parser("sweep", help="run every config of a sweep spec into the results store")
    p.add_argument("spec", help="a sweep spec YAML file, or the name of a shipped preset")
    add_spec_options(p)
    add_dry_run_options(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_executor_options(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="tables (Markdown/CSV) and figures (PNG/SVG/PDF) from a "
                                      "results store")
    p.add_argument("store", help="the results store (SQLite file)")
    p.add_argument("--table", action="append", default=[], metavar="SPEC",
                   help="a sweep recorded in the store, a preset name or a spec file "
                        "(repeatable); default: every recorded sweep")
    p.add_argument("--figure", action="append", default=[], metavar="SPEC",
                   help="also plot it (same names as --table; repeatable): heatmap for two "
                        "categorical axes, lines over a numeric x axis, else grouped bars")
    p.add_argument("--curves", action="store_true",
                   help="also plot the stored error-vs-iteration curves of every selected "
                        "spec (NAME-curves.FMT)")
    p.add_argument("--format", type=_option(_parse_formats), default=("png",), metavar="FMT",
                   help="figure file formats, a comma list of png, svg, pdf (default png)")
    p.add_argument("--ylim", type=_option(_parse_ylim), default=None, metavar="LO,HI",
                   help="fix the y range of every figure (heatmaps: the colour range); "
                        "default: fitted to the data")
    p.add_argument("--export", action="append", default=[], metavar="FILE",
                   help="write every stored run to FILE.csv or FILE.parquet (repeatable)")
    p.add_argument("--runs", action="store_true",
                   help="a table of every stored run, one line each (runs.md, runs.csv); the "
                        "default for a store that records no sweep (runs kept by "
                        "fedpoison run --store)")
    add_spec_options(p)
    p.add_argument("--out", default=str(Path("results") / "report"),
                   help="folder for tables and figures, created if missing "
                        "(default results/report)")
    p.add_argument("--json", action="store_true", help="print the points as JSON")
    p.add_argument("--any-version", action="store_true",
                   help="also use runs of the same config computed by another version of the "
                        "package source (marked ‡ in the tables)")
    p.set_defaults(func=_cmd_report)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from fedpoison.experiments.spec import load_spec
    from fedpoison.experiments.store import ResultStore
    from fedpoison.experiments.sweep import run_sweep

    spec = load_spec(args.spec).effective(trials=args.trials, quick=args.quick,
                                          variant=args.variant, choices=args.choices)
    points = len(spec.points())
    spec.plan()  # every run validated before the store is opened or anything runs
    if args.dry_run:
        return _dry_run(spec, points, args)
    with ResultStore(args.store) as store:
        if not _confirm(spec, args, store):
            return 1
        executor = executor_from_args(args)
        try:
            outcome = run_sweep(spec, store, executor, progress=not args.no_progress)
        except KeyboardInterrupt:
            print(f"interrupted; {len(store)} runs in {args.store}. Run the same command "
                  "again to resume.", file=sys.stderr)
            raise
    print(outcome.summary() + f" [{executor.name}]; store: {args.store}")
    print(f"report: fedpoison report {args.store} --table {spec.record_name}")
    if outcome.failed:
        report_failures(outcome.failed)
        return 1
    return 0


def add_dry_run_options(p: argparse.ArgumentParser) -> None:
    """--dry-run, --calibrate and --yes."""
    p.add_argument("--dry-run", action="store_true",
                   help="validate and count the runs (planned, stored, to run) and estimate "
                        "their wall time here from a short calibration; run nothing")
    p.add_argument("--calibrate", type=_option(_positive_int("calibrate")), default=3,
                   metavar="N", help="iterations timed per run shape for the estimate "
                                     "(after one warm-up iteration; default 3)")
    p.add_argument("--yes", "-y", action="store_true",
                   help="start without estimating first (otherwise more than an hour of "
                        "estimated work asks for confirmation on a terminal, and warns "
                        "elsewhere)")


def _positive_int(name: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(name, f"must be an integer ≥ 1, got {text!r}")
        return value

    return parse


def _jobs(spec: Any, store_path: str) -> tuple[list[Any], int, int]:
    """(jobs to run, planned, stored), reading the store read-only if there is one."""
    from fedpoison.experiments.store import ResultStore
    from fedpoison.experiments.sweep import plan_jobs

    if Path(store_path).exists():
        with ResultStore(store_path, readonly=True) as store:
            return plan_jobs(spec, store)
    return plan_jobs(spec, None)


def _workers(args: argparse.Namespace) -> int:
    import os

    if args.executor == "local":
        return 1
    return args.jobs or os.cpu_count() or 1


def _dry_run(spec: Any, points: int, args: argparse.Namespace) -> int:
    """Count the runs and estimate their time; the store is read, never created or changed."""
    jobs, planned, stored = _jobs(spec, args.store)
    print(f"{spec.record_name}: {points} points × {spec.trials} trial(s) → {planned} "
          f"distinct runs; {stored} stored in {args.store}, {len(jobs)} to run")
    return _estimate_jobs(jobs, args)


def _estimate_jobs(jobs: list[Any], args: argparse.Namespace) -> int:
    """Print the estimated wall time of ``jobs`` (a short calibration per run shape)."""
    from fedpoison.errors import DataError
    from fedpoison.experiments.estimate import estimate

    if not jobs:
        return 0
    try:
        est = estimate(jobs, iterations=args.calibrate)
    except DataError as e:
        print(f"estimate: unavailable ({str(e).splitlines()[0]})")
        return 0
    print(est.describe(_workers(args)))
    for cost in est.shapes:
        print(f"  {cost.runs:>4} × {cost.label}: {cost.per_iteration * 1000:.1f} ms/iteration,"
              f" setup {cost.setup:.2f} s" + (f", preparation {cost.preparation:.0f} s"
                                               if cost.preparation else "")
              + f" → {_duration(cost.seconds)}")
    return 0


def _dry_run_ablation(args: argparse.Namespace) -> int:
    """``--dry-run`` with ``--ablation``: the runs of every alternative (a run two
    alternatives share counted once) and their estimate; nothing is run or written."""
    from fedpoison.experiments.presets import load_preset
    from fedpoison.experiments.sweep import ablation_specs

    values, specs = ablation_specs(load_preset(args.name), args.ablation, trials=args.trials,
                                   quick=args.quick, variant=args.variant,
                                   choices=args.choices)
    jobs: dict[str, Any] = {}
    keys: set[str] = set()
    for value, spec in zip(values, specs, strict=True):
        mine, planned, stored = _jobs(spec, args.store)
        keys |= {p.key for p in spec.plan()}
        print(f"{spec.record_name} ({args.ablation}={value}): {len(spec.points())} points × "
              f"{spec.trials} trial(s) → {planned} distinct runs; {stored} stored, "
              f"{len(mine)} to run")
        for job in mine:
            jobs.setdefault(job.key, job)
    print(f"ablation of {args.ablation}: {len(keys)} distinct runs over {len(values)} "
          f"alternatives; {len(keys) - len(jobs)} stored in {args.store}, {len(jobs)} to run")
    return _estimate_jobs(list(jobs.values()), args)


def _duration(seconds: float) -> str:
    from fedpoison.experiments.estimate import duration

    return duration(seconds)


def _confirm(spec: Any, args: argparse.Namespace, store: Any) -> bool:
    """Estimate first; beyond an hour ask on a terminal (warn elsewhere). ``--yes`` skips.
    (A store created for a sweep that is then not started stays, empty.)"""
    if args.yes:
        return True
    from fedpoison.errors import DataError
    from fedpoison.experiments.estimate import HOUR, estimate
    from fedpoison.experiments.sweep import plan_jobs

    jobs, _, _ = plan_jobs(spec, store)
    if not jobs:
        return True
    try:
        est = estimate(jobs, iterations=2, stop_after=HOUR * _workers(args))
    except DataError:
        return True  # the sweep itself reports the missing data, run by run
    if est.seconds <= HOUR * _workers(args):
        return True
    print(f"fedpoison: warning: {spec.record_name}: {est.describe(_workers(args))}; "
          "--quick runs a reduced version, --dry-run shows the estimate per run shape",
          file=sys.stderr)
    if not sys.stdin.isatty():
        return True
    try:
        answer = input("start anyway? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("not started", file=sys.stderr)
    return False


def _resolve(name: str, store: Any, args: argparse.Namespace) -> Any:
    """A sweep recorded in the store under ``name``, else a preset or spec file."""
    from fedpoison.experiments.spec import load_spec, parse_spec

    for rec in store.sweeps():
        if rec["name"] == name:
            o = rec["options"]
            if _asks_otherwise(o, args):
                break  # the options asked for name another table than the one recorded
            return parse_spec(rec["spec"], f"recorded in {store.path}").effective(
                trials=o.get("trials"), quick=bool(o.get("quick")), variant=o.get("variant"),
                choices=o.get("choices"))
    return load_spec(name).effective(trials=args.trials, quick=args.quick,
                                     variant=args.variant, choices=args.choices)


def _asks_otherwise(recorded: dict[str, Any], args: argparse.Namespace) -> bool:
    """Whether the command line sets --trials, --quick, --variant or --choices to something
    other than what a recorded sweep was run with."""
    asked = {"trials": getattr(args, "trials", None), "variant": getattr(args, "variant", None),
             "choices": getattr(args, "choices", None)}
    if any(v is not None and v != (recorded.get(k) or ({} if k == "choices" else None))
           for k, v in asked.items()):
        return True
    return bool(getattr(args, "quick", False)) and not recorded.get("quick")


def _option(parse: Any) -> Any:
    """An argparse type from a parser that raises ConfigError (one-line usage error)."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(e.message) from None

    return convert


def _parse_formats(text: str) -> tuple[str, ...]:
    from fedpoison.report.plots import parse_formats

    return parse_formats(text)


def _parse_choices(text: str) -> dict[str, Any]:
    from fedpoison.experiments.spec import parse_choices

    return parse_choices(text)


def _parse_ylim(text: str) -> tuple[float, float]:
    from fedpoison.report.plots import parse_ylim

    return parse_ylim(text)


def _cmd_report(args: argparse.Namespace) -> int:
    from fedpoison.experiments.store import ResultStore
    from fedpoison.report.outputs import note_for, write_outputs
    from fedpoison.report.plots import PlotOptions, load_curves
    from fedpoison.report.tables import collect, format_markdown

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} is a file; name a folder (it is created if missing)")
    options = PlotOptions(formats=tuple(args.format), ylim=args.ylim)
    with ResultStore(args.store, create=False) as store:
        for path in args.export:
            try:
                n = store.export(path)
            except OSError as e:
                raise ConfigError("export", f"cannot write {path}: {e.strerror or e}") from None
            print(f"exported {n} runs to {path}", file=sys.stderr)
        wanted = [(n, False) for n in args.table] + [(n, True) for n in args.figure]
        runs = None
        if not wanted and not args.export:
            recorded = store.sweeps()
            if not recorded and not len(store):
                raise ConfigError("table", f"{args.store} holds no run and records no sweep")
            if not recorded:
                args.runs = True
            wanted = [(r["name"], r["spec"].get("kind") == "figure" or "panels" in r["spec"])
                      for r in recorded]
        if args.runs:
            runs = list(store.records())
        specs = [(_resolve(name, store, args), plot) for name, plot in wanted]
        results = []
        for spec, plot in specs:
            stats = collect(spec, store, args.any_version)
            if (plot or args.curves) and not any(s.values for s in stats):
                _nothing_to_plot(spec, stats, args.store, "--figure" if plot else "--curves")
            curves = load_curves(store, stats, spec.metric) if args.curves else None
            if curves is not None and not any(curves):
                raise ConfigError("curves", f"{spec.record_name}: its stored runs in "
                                            f"{args.store} hold no error curve")
            results.append((spec, stats, plot, curves))
    dump: list[Any] = []
    if runs is not None:
        from fedpoison.report.tables import runs_table

        md, csv_text = runs_table(runs)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "runs.md").write_text(md)
            (out / "runs.csv").write_text(csv_text)
        except OSError as e:
            raise ConfigError("out", f"cannot write into {out}: {e.strerror or e}") from None
        if args.json:
            dump.append({"name": "runs", "runs": [{k: v for k, v in r.items() if k != "curve"}
                                                  for r in runs]})
        else:
            print(md)
        print(f"written: {out / 'runs.md'}, {out / 'runs.csv'}", file=sys.stderr)
    for spec, stats, plot, curves in results:
        note = note_for(spec)
        try:
            written = write_outputs(spec, stats, out, note, plot=plot, options=options,
                                    curves=curves)
        except OSError as e:
            raise ConfigError("out", f"cannot write into {out}: {e.strerror or e}"
                                     f"{f' ({e.filename})' if e.filename else ''}") from None
        if args.json:
            dump.append({"name": spec.record_name, "points": [s.to_json() for s in stats]})
        else:
            print(format_markdown(spec, stats, note))
        print(f"written: {', '.join(str(p) for p in written)}", file=sys.stderr)
    if args.json:
        print(json.dumps(dump))
    return 0


def _nothing_to_plot(spec: Any, stats: Any, store: str, option: str) -> None:
    """Refuse a figure of a spec none of whose runs is stored (it would be an empty picture)."""
    runs = sum(s.expected for s in stats)
    elsewhere = sum(s.elsewhere for s in stats)
    hint = (f" ({elsewhere} are stored as computed by another version of fedpoison: add "
            "--any-version)") if elsewhere else (f"; run it first: fedpoison sweep SPEC "
                                                 f"--store {store}")
    raise ConfigError(option.removeprefix("--"),
                      f"{spec.record_name}: none of its {runs} runs is in {store}, nothing to "
                      f"plot{hint}")


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
    p.add_argument("--choices", type=_option(_parse_choices), default=None,
                   metavar="legacy|KEY=VALUE,...",
                   help="readings the paper leaves open, applied to every run: legacy (every "
                        "option's previous default) and/or KEY=VALUE for a config field or a "
                        "component option, e.g. direction=mean,compromised_choice=first "
                        "(docs/choices.md)")


def executor_from_args(args: argparse.Namespace) -> Any:
    from fedpoison.experiments.executors import make_executor

    return make_executor(args.executor, jobs=args.jobs, address=args.address,
                         max_retries=args.max_retries)


def report_failures(failed: list[tuple[str, str]]) -> None:
    for key, error in failed[:3]:
        print(f"run {key} failed:\n{error.rstrip()}", file=sys.stderr)
    if len(failed) > 3:
        print(f"... and {len(failed) - 3} more failed runs", file=sys.stderr)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from fedpoison.experiments.presets import load_preset
    from fedpoison.experiments.store import ResultStore
    from fedpoison.experiments.sweep import run_sweep
    from fedpoison.report.outputs import note_for, write_outputs
    from fedpoison.report.tables import collect, format_markdown

    if args.ablation:
        return _cmd_ablation(args)
    spec = load_preset(args.name).effective(trials=args.trials, quick=args.quick,
                                            variant=args.variant, choices=args.choices)
    spec.plan()  # validate every run before opening the store or starting an executor
    if args.dry_run:
        return _dry_run(spec, len(spec.points()), args)
    with ResultStore(args.store) as store:
        if not _confirm(spec, args, store):
            return 1
        executor = executor_from_args(args)
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


def _cmd_ablation(args: argparse.Namespace) -> int:
    """``reproduce NAME --ablation OPTION``: the preset once per alternative of OPTION."""
    from fedpoison.experiments.presets import load_preset
    from fedpoison.experiments.spec import default_alternative
    from fedpoison.experiments.store import ResultStore
    from fedpoison.experiments.sweep import run_ablation
    from fedpoison.report.outputs import note_for
    from fedpoison.report.tables import Ablation, collect, format_ablation

    if args.dry_run:
        return _dry_run_ablation(args)
    with ResultStore(args.store) as store:
        done = run_ablation(load_preset(args.name), args.ablation, store,
                            lambda: executor_from_args(args), trials=args.trials,
                            quick=args.quick, variant=args.variant, choices=args.choices,
                            progress=not args.json)
        runs = [(v, spec, collect(spec, store))
                for v, spec in zip(done.values, done.specs, strict=True)]
    ablation = Ablation(args.ablation, default_alternative(args.ablation), runs)
    text = format_ablation(ablation, note_for(done.specs[0], done.seconds, done.skipped))
    if args.json:
        print(json.dumps(ablation.to_json()))
    else:
        print(text)
    from fedpoison.experiments.spec import choices_text

    first = done.specs[0]
    name = first.name + (f"-{choices_text(args.choices)}" if args.choices else "")
    name += ("-quick" if args.quick else "") + f"-ablation-{args.ablation}"
    out = Path(args.out) if args.out else Path("results") / first.name
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.md"
    path.write_text(text)
    print(f"written: {path}; store: {args.store}", file=sys.stderr)
    if done.failed:
        report_failures(done.failed)
        return 1
    return 0


def add_reproduce_command(sub: Any) -> None:
    """``fedpoison reproduce NAME [--trials N] [--quick] [--json] [--out DIR] ...``."""
    p = sub.add_parser("reproduce", help="run a table or figure of the paper, ours beside "
                                         "the paper's")
    p.add_argument("name", help=f"preset: {', '.join(preset_names())}")
    add_spec_options(p)
    p.add_argument("--json", action="store_true", help="print the cells as a JSON list")
    p.add_argument("--ablation", default=None, metavar="OPTION",
                   help="run the preset once per alternative of OPTION (a component option "
                        "with fixed choices, e.g. direction, copies, frame, zero_sign, or the "
                        "field compromised_choice) and print the results side by side")
    p.add_argument("--out", default=None,
                   help="folder for the Markdown/CSV tables and PNGs (default results/NAME)")
    add_dry_run_options(p)
    add_executor_options(p)
    p.set_defaults(func=_cmd_reproduce)
