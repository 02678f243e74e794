"""``fedpoison list [KIND ...] [--json]``: every registered component with its paper and options."""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

#: Plural names accepted on the command line → registry kinds.
PLURALS = {"rules": "rule", "preaggregators": "preaggregator", "attacks": "attack",
           "defenses": "defense", "datasets": "dataset", "models": "model", "splits": "split"}


def format_catalog(kinds: list[str]) -> str:
    """The human-readable listing of ``kinds``."""
    from fedpoison import registry

    out: list[str] = []
    for kind in kinds:
        plural = next(p for p, k in PLURALS.items() if k == kind)
        specs = sorted(registry.specs(kind), key=lambda s: s.name)
        out.append(f"{plural} ({len(specs)}):")
        if not specs:
            out.append("  (none registered)")
        for spec in specs:
            out.append(f"  {spec.name} — {spec.summary}")
            if spec.reference:
                out.extend(textwrap.wrap(spec.reference, 96, initial_indent="      ",
                                         subsequent_indent="      "))
            extra = {k: v for k, v in spec.requirements().items() if v not in ((), [], "", None,
                                                                               False, {})}
            if extra:
                shown = "; ".join(f"{k}: {_short(v)}" for k, v in extra.items())
                out.extend(textwrap.wrap(shown, 96, initial_indent="      ",
                                         subsequent_indent="      "))
            for o in spec.options:
                alias = f" (alias --{o.alias.replace('_', '-')})" if o.alias else ""
                if o.previous is not None:
                    alias += f" [default was {o.previous}: --choices legacy]"
                out.extend(textwrap.wrap(f"{o.describe()}{alias}", 96,
                                         initial_indent="      · ",
                                         subsequent_indent="        "))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _short(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)


def _cmd_list(args: argparse.Namespace) -> int:
    from fedpoison import registry
    from fedpoison.errors import ConfigError

    kinds = []
    for word in args.kinds or list(PLURALS):
        kind = PLURALS.get(word, word if word in registry.KINDS else None)
        if kind is None:
            raise ConfigError("kinds", f"got {word!r}; allowed: {', '.join(PLURALS)}")
        kinds.append(kind)
    if args.json:
        catalog = registry.catalog(kinds)
        print(json.dumps({next(p for p, k in PLURALS.items() if k == kind): catalog[kind]
                          for kind in kinds}, default=str))
    else:
        print(format_catalog(kinds), end="")
    return 0


def add_list_command(sub: Any) -> None:
    p = sub.add_parser("list", help="the registered components with their options",
                       description="Every registered component (built-in, registered in "
                                   "Python, or from an installed plugin) with the paper it "
                                   "implements and its options.")
    p.add_argument("kinds", nargs="*", metavar="KIND",
                   help=f"what to list: {', '.join(PLURALS)} (default: all)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object with one key per kind, each a list of "
                        "{name, reference, options: [{name, default, ...}]}")
    p.set_defaults(func=_cmd_list)
