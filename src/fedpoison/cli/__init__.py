"""The ``fedpoison`` command.

    fedpoison run --dataset mnist --model lr --rule krum --attack krum --knowledge partial
    fedpoison reproduce table2a --trials 3
    fedpoison list rules

Invalid values print one line that names the option and its allowed range and exit with 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedpoison.cli.common import EXIT_USAGE, Parser, number

#: Every sub-command with its one-line meaning (bare ``fedpoison`` prints them).
COMMANDS = {
    "run": "simulate one federated-learning run",
    "reproduce": "run a table or figure of the paper, ours beside the paper's",
    "sweep": "run every config of a sweep spec into the results store",
    "report": "tables and plots from a results store",
    "list": "the registered rules, attacks, defenses, datasets and models with their options",
    "demo": "the main job on an embedded default dataset",
}


def _global_options(parser: argparse.ArgumentParser) -> None:
    from fedpoison import __version__

    parser.add_argument("--version", action="version", version=f"fedpoison {__version__}")
    parser.add_argument(
        "--threads", type=number(int, "--threads"), default=None, metavar="N",
        help="torch CPU threads (default: torch's choice). On a busy machine 1 thread can be "
        "several times faster for LR runs; docs/choices.md says which results are identical "
        "across thread counts",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full parser (loads the component registry for the run options' help)."""
    parser = Parser(prog="fedpoison", description=__doc__.split("\n\n")[0])
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    from fedpoison.cli.experiments import add_commands
    from fedpoison.cli.listing import add_list_command
    from fedpoison.cli.run import add_run_commands

    add_run_commands(sub)
    add_commands(sub)
    add_list_command(sub)
    return parser


def _commands_text() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: fedpoison [--threads N] COMMAND ...", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "fedpoison COMMAND --help shows a command's options; fedpoison --version"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from fedpoison.errors import ConfigError, DataError, ProvenanceError

    argv = list(sys.argv[1:] if argv is None else argv)
    # A light first pass: --version and a bare `fedpoison` answer without building the full
    # parser (which imports torch to list the registered components).
    pre = Parser(prog="fedpoison", add_help=False)
    _global_options(pre)
    pre.add_argument("-h", "--help", action="store_true")
    known, rest = pre.parse_known_args(argv)
    if not rest and not known.help:
        print(_commands_text())
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            print("fedpoison: error: --threads: must be >= 1", file=sys.stderr)
            return EXIT_USAGE
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args))
    except ConfigError as e:
        flag = e.field.replace("_", "-")
        print(f"fedpoison: error: --{flag}: {e.message}", file=sys.stderr)
        return EXIT_USAGE
    except DataError as e:
        print(f"fedpoison: data error: {e}", file=sys.stderr)
        return 1
    except ProvenanceError as e:
        print(f"fedpoison: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fedpoison: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
