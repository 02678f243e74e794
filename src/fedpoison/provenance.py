"""Which code and data produced a result: fingerprints that are part of every run's key.

The code fingerprint covers the package's own source and the module of every user
component a run uses (a rule, attack, model, ... registered from outside the package or
through a plugin). Sources are compared as syntax trees without docstrings, so editing a
comment or a docstring keeps every stored run, while any change to what the code does makes
a store recompute. A user dataset's content hash is added likewise.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import marshal
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

PACKAGE = "fedpoison"


def normalized_source(source: str) -> str:
    """The syntax tree of ``source`` without docstrings, as text (comments vanish too)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


CACHE_FILE = "provenance-v1.json"
"""Normalized digests by raw-content digest, in the cache folder: parsing every file of the
package costs ~0.3 s per process, hashing its bytes ~5 ms."""


def _normalized_digests(sources: dict[str, bytes]) -> dict[str, str]:
    """raw SHA-256 → normalized digest for every source, through the on-disk cache."""
    import json
    import os
    import tempfile

    from fedpoison.paths import cache_home

    raw = {name: hashlib.sha256(data).hexdigest() for name, data in sources.items()}
    path = cache_home() / CACHE_FILE
    try:
        cached = json.loads(path.read_text())
        if not isinstance(cached, dict):
            cached = {}
    except (OSError, ValueError):
        cached = {}
    out: dict[str, str] = {}
    missing = False
    for name, data in sources.items():
        digest = cached.get(raw[name])
        if not isinstance(digest, str):
            digest = _digest(normalized_source(data.decode("utf-8")))
            cached[raw[name]] = digest
            missing = True
        out[name] = digest
    if missing:  # best effort: a cache we cannot write only costs time
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            keep = {raw[n]: out[n] for n in sources}  # this source tree's entries only
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump(keep, fh)
            os.replace(tmp, path)
        except OSError:
            pass
    return out


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 (hex, 12 chars) of every ``.py`` file of the package, normalized (each file's
    syntax tree without docstrings; cached by the file's raw content digest)."""
    root = Path(__file__).resolve().parent
    paths = sorted(root.rglob("*.py"))
    sources = {path.relative_to(root).as_posix(): path.read_bytes() for path in paths}
    digests = _normalized_digests(sources)
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(name.encode())
        h.update(b"\0")
        h.update(digests[name].encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


@lru_cache(maxsize=256)
def _module_fingerprint(module: str) -> str | None:
    mod = sys.modules.get(module)
    if mod is None:
        return None
    try:
        return _digest(normalized_source(inspect.getsource(mod)))
    except (OSError, TypeError, SyntaxError):
        return None


def component_fingerprint(impl: Any) -> str:
    """The fingerprint of the code that defines ``impl``: its module's normalized source,
    else the function's own source, else its compiled code (interactive sessions)."""
    module = getattr(impl, "__module__", "") or ""
    if module and module != "__main__":
        fp = _module_fingerprint(module)
        if fp is not None:
            return fp
    try:
        return _digest(normalized_source(_dedent(inspect.getsource(impl))))
    except (OSError, TypeError, SyntaxError):
        pass
    code = getattr(impl, "__code__", None)
    if code is not None:
        return hashlib.sha256(marshal.dumps(code)).hexdigest()
    return _digest(repr(impl))


def _dedent(source: str) -> str:
    import textwrap

    return textwrap.dedent(source)


def _outside_package(impl: Any) -> bool:
    module = getattr(impl, "__module__", "") or ""
    return not (module == PACKAGE or module.startswith(PACKAGE + "."))


def run_fingerprint(cfg: Any) -> dict[str, Any]:
    """``{"code": ..., ["data": ...]}`` for a resolved config (see the module docstring)."""
    from fedpoison import registry

    used = [registry.get("dataset", cfg.dataset), registry.get("model", cfg.model),
            registry.get("rule", cfg.rule)]
    used += [registry.get("preaggregator", name) for name, _ in cfg.preaggregators]
    if cfg.attack != "none":
        used.append(registry.get("attack", cfg.attack))
    if cfg.defense != "none":
        used.append(registry.get("defense", cfg.defense))
    extra = sorted({f"{s.kind}:{s.name}:{component_fingerprint(s.impl)}"
                    for s in used if _outside_package(s.impl)})
    code = code_fingerprint()
    if extra:
        code = hashlib.sha256("\n".join([code, *extra]).encode()).hexdigest()[:12]
    out: dict[str, Any] = {"code": code}
    data = used[0].fingerprint
    if data:
        out["data"] = data
    return out
