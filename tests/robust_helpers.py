"""Shared helpers for the robustness tests (issue 15): unreadable files, process trees."""

from __future__ import annotations

import builtins
import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest


def make_unreadable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Take every read permission off ``path`` (a regular file, not a symlink).

    Root reads such a file anyway, so under root the permission check is emulated: opening a
    file with no read bit raises ``PermissionError`` as it would for any other user.
    """
    assert not path.is_symlink(), "chmod follows symlinks: never use it on shared data"
    path.chmod(0)
    if os.geteuid() != 0:
        return
    real_open = builtins.open

    def guarded(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | bytes | os.PathLike):
            try:
                mode = os.stat(file).st_mode
            except OSError:
                mode = None
            if mode is not None and stat.S_ISREG(mode) and not mode & 0o444:
                raise PermissionError(13, "Permission denied", os.fsdecode(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)


def process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` from /proc (``Z`` for a zombie), or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out
