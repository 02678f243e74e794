"""Progress bars for long work, pluggable so that sweeps, notebooks and estimates share them.

A *bar factory* is called as ``factory(desc=..., total=..., unit=...)`` and returns a bar
with tqdm's ``update(n)``, ``set_postfix_str(text, refresh=False)`` and ``close()``:
``tqdm.auto.tqdm`` itself is one (a widget in a notebook, text on stderr elsewhere). Every
function that takes ``progress`` accepts ``True`` (tqdm.auto bars), ``False`` (none) or a
factory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Bar(Protocol):
    """The part of tqdm's interface fedpoison uses."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> Any: ...

    def close(self) -> Any: ...


BarFactory = Callable[..., Bar]
Progress = bool | BarFactory


class NullBar:
    """A bar that shows nothing."""

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None

    def close(self) -> None:
        return None


def null_bar(**_: Any) -> NullBar:
    return NullBar()


def tqdm_bar(**kwargs: Any) -> Bar:
    """A ``tqdm.auto`` bar that disappears when done (``leave=False``) unless told otherwise."""
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(**kwargs)


def bar_factory(progress: Progress) -> BarFactory:
    """The factory for ``progress``: tqdm.auto for True, nothing for False, else itself."""
    if progress is True:
        return tqdm_bar
    if progress is False or progress is None:
        return null_bar
    if callable(progress):
        return progress
    raise TypeError(f"progress must be True, False or a bar factory, got {progress!r}")
