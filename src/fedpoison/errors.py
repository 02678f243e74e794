"""Exceptions that carry enough context to tell the user what to fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration value.

    ``field`` names the option (as the user spells it) and the message states the allowed
    range, so the CLI can print one line without a traceback.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class DataError(RuntimeError):
    """A dataset is missing, corrupt or cannot be downloaded; the message says what to do."""


class ProvenanceError(RuntimeError):
    """A result was computed by other code than the one that planned it (e.g. the package
    source changed while a sweep ran, or a Ray node runs another version)."""
