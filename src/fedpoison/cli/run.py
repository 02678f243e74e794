"""``fedpoison run`` and ``fedpoison demo``: one run from command-line options.

Every ``RunConfig`` field is an option (``local_rounds`` → ``--local-rounds``) whose help
says what it means and which values it takes; components' options go through
``--rule-opt``, ``--attack-opt``, ``--defense-opt`` (``key=value``, repeatable) and
``--preagg name[:key=value,...]``; the option aliases components declare (``--beta``,
``--epsilon``, ...) are generated from the registry.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from fedpoison.cli.common import number

#: Option flags for the component option mappings (config field → flag).
OPTION_FLAGS = {"rule_options": "--rule-opt", "attack_options": "--attack-opt",
                "defense_options": "--defense-opt", "split_options": "--split-opt"}
_KIND_OF_FIELD = {"rule": "rule", "attack": "attack", "defense": "defense", "dataset": "dataset",
                  "model": "model", "split": "split"}


def _field_type(hint: Any) -> type:
    """The non-None type of a (possibly optional) field annotation."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _choices(kind: str) -> str:
    from fedpoison import registry

    names = sorted(registry.names(kind))
    if kind in ("attack", "defense"):
        names = ["none", *names]
    aliases = sorted(registry.REGISTRY.aliases(kind))
    return ", ".join(names) + (f" (aliases: {', '.join(aliases)})" if aliases else "")


def add_config_options(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One ``--option`` per RunConfig field, plus component options and their aliases."""
    from fedpoison import registry
    from fedpoison.config import OPTION_FIELDS, RunConfig

    group = parser.add_argument_group("run configuration (defaults: paper Table 1)")
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if f.name in skip or f.name in OPTION_FLAGS or f.name == "preaggregators":
            continue
        option = "--" + f.name.replace("_", "-")
        kind = _field_type(hints[f.name])
        default = f.default
        help_text = f.metadata.get("help", "")
        if f.name in _KIND_OF_FIELD:
            help_text += f": {_choices(_KIND_OF_FIELD[f.name])}"
        if default is not None:
            help_text += f" (default: {default})"
        conv = number(kind, option) if kind in (int, float) else kind
        group.add_argument(option, dest=f.name, type=conv, default=default, help=help_text,
                           metavar=f.name.upper())
    group.add_argument("--workers-per-iteration", dest="sample", type=number(int, "--sample"),
                       help="alias of --sample")

    comp = parser.add_argument_group(
        "component options (fedpoison list KIND shows each component's options)")
    for field_name, flag in OPTION_FLAGS.items():
        kind = next(k for k, v in OPTION_FIELDS.items() if v == field_name)
        comp.add_argument(flag, dest=field_name, action="append", default=[],
                          metavar="KEY=VALUE",
                          help=f"an option of the selected {kind} (repeatable)")
    comp.add_argument("--preagg", dest="preaggregators", action="append", default=[],
                      metavar="NAME[:KEY=VALUE,...]",
                      help="a pre-aggregation step before the rule, in order (repeatable): "
                           f"{_choices('preaggregator') or 'none registered'}")
    aliases = parser.add_argument_group("option aliases (earlier flags)")
    seen: set[str] = set()
    for kind in OPTION_FIELDS:
        for alias, targets in registry.REGISTRY.aliases_of_options(kind).items():
            if alias in seen:
                continue
            seen.add(alias)
            where = ", ".join(f"{kind} {c}" for c, _ in targets)
            option = registry.get(kind, targets[0][0]).option(targets[0][1])
            aliases.add_argument("--" + alias.replace("_", "-"), dest=f"alias:{alias}",
                                 default=None, metavar="VALUE",
                                 help=f"option {targets[0][1]} of {where}: {option.help}, "
                                      f"{option.allowed()} (default: "
                                      f"{option.shown_default()})")


def config_from_args(args: argparse.Namespace) -> Any:
    """The RunConfig of parsed ``run`` options (aliases and component options applied)."""
    from fedpoison.config import RunConfig, parse_component_string
    from fedpoison.errors import ConfigError

    values: dict[str, Any] = {}
    for f in dataclasses.fields(RunConfig):
        if f.name in OPTION_FLAGS or f.name == "preaggregators":
            continue
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    for field_name, flag in OPTION_FLAGS.items():
        opts: dict[str, Any] = {}
        for item in getattr(args, field_name, []) or []:
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ConfigError(flag.lstrip("-"), f"takes KEY=VALUE, got {item!r}")
            opts[key.strip()] = value.strip()
        values[field_name] = opts
    values["preaggregators"] = [parse_component_string(p, "preaggregators")
                                for p in getattr(args, "preaggregators", []) or []]
    for key, value in vars(args).items():
        if key.startswith("alias:") and value is not None:
            values[key.removeprefix("alias:")] = value
    return RunConfig.from_dict(values)


def _cmd_run(args: argparse.Namespace) -> int:
    from fedpoison.simulation import run

    config = config_from_args(args).resolve()  # validate before loading anything
    from fedpoison.tracking import parse_target

    for target in args.log:
        parse_target(target)
    save = None
    if args.save_model:
        from fedpoison.modelfile import check_writable

        save = check_writable(args.save_model, "save_model")
    if not args.store:
        if args.force:
            from fedpoison.errors import ConfigError

            raise ConfigError("force", "only applies with --store")
        result = run(config, progress=not args.no_progress and not args.json, track=args.log)
        _print_result(result.to_json(), args.json)
        if save is not None:
            _saved(result, save)
        return 0

    from fedpoison.experiments.store import ResultStore

    key = config.config_hash()
    with ResultStore(args.store) as store:
        stored = store.get(key)
        if stored is not None and not args.force and save is None:
            print(f"already stored in {args.store} (key {key}): the stored result, not run "
                  "again (--force runs it again)", file=sys.stderr)
            _print_result(stored, args.json)
            return 0
        result = run(config, progress=not args.no_progress and not args.json, track=args.log)
        data = result.to_json()
        if store.put(key, data, executor="local"):
            note = f"stored in {args.store} (key {key})"
        else:
            same = all(_same(data.get(k), stored.get(k)) for k in _OUTCOME) if stored else False
            note = (f"already stored in {args.store} (key {key}); the store keeps its first "
                    "row (it is append-only); this run's numbers are "
                    + ("identical to it" if same else "DIFFERENT from it: "
                       f"stored final error {stored.get('final_error') if stored else '?'}"))
    _print_result(data, args.json)
    print(note, file=sys.stderr)
    if save is not None:
        _saved(result, save)
    return 0


#: The parts of a result that a rerun of the same config must reproduce exactly.
_OUTCOME = ("final_error", "final_loss", "best_error", "best_iteration", "curve", "loss_curve",
            "diagnostics")


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _saved(result: Any, path: Any) -> None:
    written = result.save_model(path)
    print(f"model saved to {written} (torch.load(..., weights_only=True) or "
          "fedpoison.load_model)", file=sys.stderr)


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    """A run's result JSON as one JSON line or the human summary (and diagnostics line)."""
    if as_json:
        print(json.dumps(result))
        return
    t = result.get("timings") or {}
    phases = ", ".join(f"{p} {t.get(p, 0.0):.2f}" for p in
                       ("train", "attack", "defense", "aggregate", "evaluate"))
    print(
        f"final error {result['final_error']:.4f} | best {result['best_error']:.4f} "
        f"(iteration {result['best_iteration']}) | {result['seconds']:.2f} s "
        f"[{phases}] | config {result['config_hash']}"
    )
    if result.get("final_asr") is not None:
        print(f"attack success rate {result['final_asr']:.4f} (highest "
              f"{result['max_asr']:.4f}): non-target test examples with the trigger "
              "classified as the target")
    line = diagnostics_line(result.get("diagnostics") or {})
    if line:
        print(line)


#: Diagnostics the simulation itself records (components declare theirs in their specs):
#: name → (meaning, kind), kind "flag" (0/1 per iteration), "share" (a fraction per
#: iteration, shown as its mean) or "value" (shown as its median).
RUN_DIAGNOSTICS = {
    "selected_crafted": ("the rule selected a crafted model", "flag"),
    "against_mean_direction": ("share of parameters the global model moved against the local "
                               "models' mean direction", "share"),
}


def diagnostics_line(diagnostics: dict[str, dict[str, float]]) -> str:
    """One human-readable line from ``RunResult.diagnostics`` ('' when there are none).

    Flags read 'meaning: held/iterations'; values 'meaning: median (mean for shares)'.
    Meanings come from the components' specs and :data:`RUN_DIAGNOSTICS`.
    """
    from fedpoison import registry

    meanings = dict(RUN_DIAGNOSTICS)
    for spec in registry.specs():
        for d in spec.diagnostics:
            meanings.setdefault(d.name, (d.meaning, "flag" if d.flag else "value"))
    parts = []
    for name, st in diagnostics.items():
        meaning, kind = meanings.get(name, (name, "value"))
        if name == "detection":
            parts.append(f"removed {int(st['tp'])} of {int(st['tp'] + st['fn'])} compromised "
                         f"and {int(st['fp'])} of {int(st['fp'] + st['tn'])} benign models "
                         f"(TPR {st['tpr']:.2f}, FPR {st['fpr']:.2f}, over {int(st['n'])} "
                         "iterations)")
            continue
        if "mean" not in st:
            parts.append(f"{meaning}: no finite value")
        elif kind == "flag":
            parts.append(f"{meaning}: {round(st['mean'] * st['n'])}/{int(st['n'])} iterations")
        elif kind == "share":
            parts.append(f"{meaning}: {st['mean']:.1%} (mean over iterations)")
        else:
            parts.append(f"{meaning}: median {st['median']:.3g}")
    return "; ".join(parts)


def _cmd_demo(args: argparse.Namespace) -> int:
    from fedpoison.demo import main as demo

    return demo()


def add_run_commands(sub: Any) -> None:
    """``run`` and ``demo``."""
    p_run = sub.add_parser("run", help="simulate one federated-learning run",
                           description="Simulate one federated-learning run under attack.")
    add_config_options(p_run)
    p_run.add_argument("--json", action="store_true", help="print one JSON object")
    keep = p_run.add_argument_group("keeping the run")
    keep.add_argument("--log", action="append", default=[], metavar="TARGET",
                      help="log every evaluation (error, loss, diagnostics) to TARGET: "
                           "tensorboard:DIR, mlflow (MLflow's default tracking URI) or "
                           "mlflow:URI (repeatable; pip install 'fedpoison[tracking]')")
    keep.add_argument("--store", default=None, metavar="PATH",
                      help="store the result in this results store (SQLite, created if "
                           "missing) under its run key, as a sweep does; a run already "
                           "stored there is shown from the store, not run again")
    keep.add_argument("--force", action="store_true",
                      help="with --store: run even if stored (the store keeps its first row; "
                           "the output says whether the numbers are identical)")
    keep.add_argument("--save-model", default=None, metavar="PATH",
                      help="write the final global model (named tensors + the result as "
                           "metadata; torch.load(PATH, weights_only=True) reads it); a stored "
                           "run is run again to get its model")
    p_run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p_run.set_defaults(func=_cmd_run)

    p_demo = sub.add_parser("demo", help="the main job on an embedded default dataset")
    p_demo.set_defaults(func=_cmd_demo)
