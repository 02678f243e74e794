"""The ``fedpoison`` command.

    fedpoison run --dataset mnist --model lr --rule krum --attack krum --knowledge partial
    fedpoison reproduce table2a --trials 3

Invalid values print one line that names the option and its allowed range and exit with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fedpoison.cli.common import EXIT_USAGE, Parser, number

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a process killed by it


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fedpoison", description=__doc__.split("\n\n")[0])
    from fedpoison import __version__

    parser.add_argument("--version", action="version", version=f"fedpoison {__version__}")
    parser.add_argument(
        "--threads", type=number(int, "--threads"), default=None,
        help=f"torch CPU threads, 1..{max_threads()} (4 per usable core; default: torch's "
        "choice). LR results do not depend on it (CNN weights may differ in the last bits: "
        "docs/choices.md); on a busy machine 1 thread can be several times faster for LR runs",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    from fedpoison.cli.experiments import add_commands
    from fedpoison.cli.run import add_run_commands

    add_run_commands(sub)
    add_commands(sub)
    return parser


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
        print(f"fedpoison: error: --{e.field.replace('_', '-')}: {e.message}", file=sys.stderr)
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
