"""``fedpoison run`` and ``fedpoison demo``: one run from command-line options."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from typing import Any

from fedpoison.cli.common import number


def _field_type(hint: Any) -> type:
    """The non-None type of a (possibly optional) field annotation."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_config_options(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One ``--option`` per RunConfig field (``local_rounds`` → ``--local-rounds``)."""
    from fedpoison.config import RunConfig

    group = parser.add_argument_group("run configuration (defaults: paper Table 1)")
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if f.name in skip:
            continue
        option = "--" + f.name.replace("_", "-")
        kind = _field_type(hints[f.name])
        default = f.default
        shown = "dataset/model default" if default is None else repr(default)
        conv = number(kind, option) if kind in (int, float) else kind
        group.add_argument(option, dest=f.name, type=conv, default=default,
                           help=f"(default: {shown})")
    group.add_argument("--workers-per-iteration", dest="sample", type=number(int, "--sample"),
                       help="alias of --sample")


def config_from_args(args: argparse.Namespace) -> Any:
    from fedpoison.config import RunConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)
              if hasattr(args, f.name)}
    return RunConfig(**values)


def _cmd_run(args: argparse.Namespace) -> int:
    from fedpoison.simulation import run

    config = config_from_args(args)
    config.resolved()  # validate before loading anything
    result = run(config, progress=not args.no_progress and not args.json)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        t = result.timings
        print(
            f"final error {result.final_error:.4f} | best {result.best_error:.4f} "
            f"(iteration {result.best_iteration}) | {result.seconds:.2f} s "
            f"[train {t['train']:.2f}, attack {t['attack']:.2f}, defense {t['defense']:.2f}, "
            f"aggregate {t['aggregate']:.2f}, evaluate {t['evaluate']:.2f}] | "
            f"config {result.config_hash}"
        )
        line = diagnostics_line(result.diagnostics)
        if line:
            print(line)
    return 0


def diagnostics_line(diagnostics: dict[str, dict[str, float]]) -> str:
    """One human-readable line from ``RunResult.diagnostics`` ('' when there are none)."""
    def count(name: str) -> str:
        st = diagnostics[name]
        return f"{round(st.get('mean', 0.0) * st['n'])}/{int(st['n'])}"

    parts = []
    if "krum_lambda_found" in diagnostics:
        parts.append(f"Krum attack found λ in {count('krum_lambda_found')} poisoned iterations")
    if "mean" in diagnostics.get("krum_lambda", {}):
        parts.append(f"median λ {diagnostics['krum_lambda']['median']:.3g}")
    if "mean" in diagnostics.get("krum_copies", {}):
        parts.append(f"copies in the search {diagnostics['krum_copies']['median']:g}")
    if "krum_selected_crafted" in diagnostics:
        parts.append(f"Krum selected a crafted model in {count('krum_selected_crafted')}")
    if "mean" in diagnostics.get("against_mean_direction", {}):
        parts.append("the global model moved against the local models' mean direction in "
                     f"{diagnostics['against_mean_direction']['mean']:.1%} of parameters "
                     "(mean over iterations)")
    known = {"krum_lambda_found", "krum_lambda", "krum_copies", "krum_selected_crafted",
             "against_mean_direction"}
    for name, st in diagnostics.items():
        if name not in known:
            parts.append(f"{name} median {st['median']:.3g}" if "median" in st
                         else f"{name}: no finite value")
    return "; ".join(parts)


def _cmd_demo(args: argparse.Namespace) -> int:
    from fedpoison.demo import main as demo

    return demo()


def add_run_commands(sub: Any) -> None:
    """``run`` and ``demo``."""
    p_run = sub.add_parser("run", help="simulate one federated-learning run")
    add_config_options(p_run)
    p_run.add_argument("--json", action="store_true", help="print one JSON object")
    p_run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p_run.set_defaults(func=_cmd_run)

    p_demo = sub.add_parser("demo", help="the main job on an embedded default dataset")
    p_demo.set_defaults(func=_cmd_demo)
