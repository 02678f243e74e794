"""What every sub-command shares: one-line usage errors and typed option parsers."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump, no traceback)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def number(kind: type, option: str) -> Any:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            word = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{option} must be {word}, got {text!r}") from None

    return parse
