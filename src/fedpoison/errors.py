"""The typed errors fedpoison raises; each carries enough context to tell the user what to fix.

``FedpoisonError`` is the root, so a caller can catch everything of ours in one clause. The
CLI turns ``ConfigError`` into one line and exit code 2, ``DataError`` and
``ProvenanceError`` into one line and exit code 1; nothing else is expected.
"""

from __future__ import annotations


class FedpoisonError(Exception):
    """Root of every error fedpoison raises on purpose."""


class ConfigError(FedpoisonError, ValueError):
    """An invalid configuration value.

    ``field`` names the option (as the user spells it) and the message states the allowed
    range, so the CLI can print one line without a traceback.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RegistryError(FedpoisonError, ValueError):
    """A component was registered wrongly (duplicate name, malformed option, unknown kind)."""


class DataError(FedpoisonError, RuntimeError):
    """A dataset is missing, corrupt or cannot be downloaded; the message says what to do."""


class ProvenanceError(FedpoisonError, RuntimeError):
    """A result was computed by other code than the one that planned it (e.g. the package
    source changed while a sweep ran, or a Ray node runs another version)."""
