"""The ``fedpoison`` command.

    fedpoison run --dataset mnist --model lr --rule krum --attack krum --knowledge partial
    fedpoison reproduce table2a --trials 3
    fedpoison list rules

Invalid values print one line that names the option and its allowed range and exit with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fedpoison.cli.common import EXIT_USAGE, Parser, number

#: Every sub-command with its one-line meaning (bare ``fedpoison`` prints them).
COMMANDS = {
    "run": "simulate one federated-learning run",
    "reproduce": "run a table or figure of the paper, ours beside the paper's",
    "sweep": "run every config of a sweep spec into the results store",
    "report": "tables and plots from a results store",
    "list": "the registered rules, attacks, defenses, datasets, models and splits with their "
            "options",
    "demo": "the main job on an embedded default dataset",
}

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a process killed by it



def _global_options(parser: argparse.ArgumentParser) -> None:
    from fedpoison import __version__

    parser.add_argument("--version", action="version", version=f"fedpoison {__version__}")
    parser.add_argument(
        "--threads", type=number(int, "--threads"), default=None, metavar="N",
        help=f"torch CPU threads, 1..{max_threads()} (4 per usable core; default: torch's "
        "choice). LR results do not depend on it (CNN weights may differ in the last bits: "
        "docs/choices.md); on a busy machine 1 thread can be several times faster for LR runs",
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


def max_threads() -> int:
    """The largest ``--threads`` accepted: 4 per core this process may run on.

    More threads than that only oversubscribe the cores, and a count in the thousands makes
    the OpenMP runtime abort (or the process crash) while it creates them.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return 4 * max(1, cores)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; every expected failure is one line on stderr, never a traceback.

    Exit status: 0 success, 1 a run or data error, 2 a usage or config error, 130 interrupted,
    141 stdout closed early (``fedpoison report ... --json | head``).
    """
    from fedpoison.errors import ConfigError, DataError, ProvenanceError
    from fedpoison.threads import limit_openmp_spinning

    limit_openmp_spinning()  # before torch loads: OpenMP reads it then (fedpoison.threads)
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
    try:
        if args.threads is not None:
            limit = max_threads()
            if not 1 <= args.threads <= limit:
                print(f"fedpoison: error: --threads: must be in 1..{limit} (4 per usable core), "
                      f"got {args.threads}", file=sys.stderr)
                return EXIT_USAGE
            import torch

            torch.set_num_threads(args.threads)
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
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
    except BrokenPipeError:
        # The reader went away (``| head``): not an error of ours. Point stdout at /dev/null
        # so the interpreter's final flush does not complain, and exit like ``yes | head``.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("fedpoison: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout has no file descriptor (tests): nothing to flush
        pass


if __name__ == "__main__":
    sys.exit(main())
