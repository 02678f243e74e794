"""The ``fedpoison`` command.

    fedpoison run --dataset mnist --model lr --rule krum --attack krum --knowledge partial
    fedpoison reproduce table2a --trials 3

Invalid values print one line that names the option and its allowed range and exit with 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedpoison.cli.common import EXIT_USAGE, Parser, number


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fedpoison", description=__doc__.split("\n\n")[0])
    from fedpoison import __version__

    parser.add_argument("--version", action="version", version=f"fedpoison {__version__}")
    parser.add_argument(
        "--threads", type=number(int, "--threads"), default=None,
        help="torch CPU threads (default: torch's choice). Results do not depend on it; on a "
        "busy machine 1 thread can be several times faster for LR runs",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    from fedpoison.cli.experiments import add_commands
    from fedpoison.cli.run import add_run_commands

    add_run_commands(sub)
    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from fedpoison.errors import ConfigError, DataError, ProvenanceError

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
        print(f"fedpoison: error: --{e.field.replace('_', '-')}: {e.message}", file=sys.stderr)
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
