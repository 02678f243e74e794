"""Bad invocations end in one line on stderr and an exit status, never a traceback (issue 15).

Table-driven: each case builds its files under tmp_path and gives the argv, the exit status
(2: a usage/config error naming the option; 1: a data error) and the start of the line.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedpoison.cli import main, max_threads
from fedpoison.data import mnist
from robust_helpers import make_unreadable

Setup = Callable[[Path, pytest.MonkeyPatch], list[str]]
MNIST_FILES = (mnist.TRAIN_IMAGES, mnist.TRAIN_LABELS, mnist.TEST_IMAGES, mnist.TEST_LABELS)
RUN = ["run", "--workers", "10", "--compromised", "2", "--iterations", "1", "--no-progress"]
LEVELS = "abcdefg"  # a: 10 strings; each next level: 10 aliases of the previous one
BOMB = (  # a valid spec whose description expands to 10^7 strings from 7 short lines
    "name: bomb\nbase: {dataset: breast-cancer, workers: 10, compromised: 2, iterations: 1}\n"
    "grid: {rule: [mean]}\ndescription:\n  a: &a [" + ", ".join(['"x"'] * 10) + "]\n"
    + "".join(f"  {b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n"
              for a, b in itertools.pairwise(LEVELS)))


@dataclass(frozen=True)
class Case:
    name: str
    setup: Setup
    code: int
    starts: str  # the one line on stderr starts with this
    contains: str = ""


def _write(path: Path, data: bytes | str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def _spec(t: Path) -> str:
    return _write(t / "ok.yaml", json.dumps({
        "name": "ok", "grid": {"rule": ["mean"]},
        "base": {"dataset": "breast-cancer", "workers": 10, "compromised": 2, "iterations": 1}}))


def _sweep(spec: Callable[[Path], str]) -> Setup:
    return lambda t, mp: ["sweep", spec(t), "--store", str(t / "s.sqlite")]


def _store_at(store: Callable[[Path], str], command: str = "sweep") -> Setup:
    def setup(t: Path, mp: pytest.MonkeyPatch) -> list[str]:
        if command == "reproduce":
            return ["reproduce", "table2a", "--quick", "--store", store(t)]
        return ["sweep", _spec(t), "--store", store(t)]

    return setup


def _report(store: Callable[[Path], str]) -> Setup:
    return lambda t, mp: ["report", store(t), "--out", str(t / "out")]


def _foreign(t: Path) -> str:
    import sqlite3

    path = t / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (x)")
    db.commit()
    db.close()
    return str(path)


def _truncated_store(t: Path) -> str:
    from fedpoison.experiments.store import ResultStore

    ResultStore(t / "full.sqlite").close()
    return _write(t / "cut.sqlite", (t / "full.sqlite").read_bytes()[:1000])


def _unreadable_spec(t: Path, mp: pytest.MonkeyPatch) -> list[str]:
    spec = Path(_spec(t))
    make_unreadable(spec, mp)
    return ["sweep", str(spec), "--store", str(t / "s.sqlite")]


def _threads(value: str) -> Setup:
    return lambda t, mp: ["--threads", value, *RUN, "--dataset", "breast-cancer"]


def _shared_mnist() -> Path:
    value = os.environ.get("FEDPOISON_DATA")
    if not value or not (Path(value) / "mnist" / mnist.TEST_LABELS).is_file():
        pytest.skip("needs FEDPOISON_DATA with MNIST (CI: ../shared/datasets)")
    return Path(value) / "mnist"


def _mnist_home(t: Path, mp: pytest.MonkeyPatch, *, deep: bool = False,
                unreadable: bool = False, files: tuple[str, ...] = MNIST_FILES) -> list[str]:
    shared = _shared_mnist()
    home = t / "home"
    folder = home / "mnist"
    folder.mkdir(parents=True)
    for name in files:
        if unreadable and name == mnist.TEST_LABELS:
            (folder / name).write_bytes((shared / name).read_bytes())
            make_unreadable(folder / name, mp)
        else:
            (folder / name).symlink_to(shared / name)
    mp.setenv("FEDPOISON_DATA", str(folder if deep else home))
    mp.delenv("FEDPOISON_MIRROR", raising=False)
    mp.setattr(mnist, "MNIST_MIRRORS", ("http://127.0.0.1:9/",))  # never the internet
    return [*RUN, "--dataset", "mnist"]


CASES = [
    # sweep specs (class 3)
    Case("spec-not-utf8", _sweep(lambda t: _write(t / "s.yaml", b"name: x\nbase: {}\n\xff\xfe\n")),
         2, "fedpoison: error: --spec:", "not UTF-8"),
    Case("spec-alias-bomb", _sweep(lambda t: _write(t / "bomb.yaml", BOMB)), 2,
         "fedpoison: error: --spec:", "once its YAML aliases (*name) are resolved"),
    Case("spec-recursive-alias", _sweep(lambda t: _write(t / "r.yaml", "a: &a [1, *a]\n")), 2,
         "fedpoison: error: --spec:", "recursive"),
    Case("spec-nested-too-deep",
         _sweep(lambda t: _write(t / "d.yaml", "[" * 5000 + "]" * 5000)), 2,
         "fedpoison: error: --spec:", "nested too deeply"),
    Case("spec-too-large",
         _sweep(lambda t: _write(t / "big.yaml", "#" * (1 << 20) + "\nname: x\n")), 2,
         "fedpoison: error: --spec:", "larger than"),
    Case("spec-unreadable", _unreadable_spec, 2, "fedpoison: error: --spec:",
         "Permission denied"),
    Case("report-table-not-utf8", lambda t, mp: [
        "report", _store_made(t), "--table", _write(t / "s.yaml", b"\xff"), "--out",
        str(t / "out")], 2, "fedpoison: error: --spec:", "not UTF-8"),
    # store paths (classes 3 and 4)
    Case("store-parent-is-a-file",
         _store_at(lambda t: _write(t / "f", "") + "/sub/s.sqlite"), 2,
         "fedpoison: error: --store:", "Not a directory"),
    Case("reproduce-store-parent-is-a-file",
         _store_at(lambda t: _write(t / "f", "") + "/s.sqlite", "reproduce"), 2,
         "fedpoison: error: --store:", "Not a directory"),
    Case("store-is-a-directory", _store_at(lambda t: str(t)), 2, "fedpoison: error: --store:",
         "a directory"),
    Case("store-is-foreign", _store_at(_foreign), 2, "fedpoison: error: --store:",
         "not a fedpoison results store"),
    Case("report-on-foreign", _report(_foreign), 2, "fedpoison: error: --store:",
         "not a fedpoison results store"),
    Case("report-on-empty-file", _report(lambda t: _write(t / "e.sqlite", b"")), 2,
         "fedpoison: error: --store:", "an empty file"),
    Case("report-on-truncated", _report(_truncated_store), 2, "fedpoison: error: --store:",
         "truncated"),
    # --threads (class 3)
    Case("threads-billions", _threads("3000000000"), 2, "fedpoison: error: --threads:",
         f"1..{max_threads()}"),
    Case("threads-beyond-int64", _threads("1" + "0" * 30), 2, "fedpoison: error: --threads:"),
    Case("threads-just-too-many", _threads(str(max_threads() + 1)), 2,
         "fedpoison: error: --threads:"),
    Case("threads-zero", _threads("0"), 2, "fedpoison: error: --threads:",
         f"must be in 1..{max_threads()}"),
    # run configuration (class 3; validated once, before anything is loaded)
    Case("workers-billions", lambda t, mp: ["run", "--workers", "3000000000"], 2,
         "fedpoison: error: --workers:", "an integer in [1, 10000000]"),
    Case("workers-beyond-int64", lambda t, mp: ["run", "--workers", "9" * 30], 2,
         "fedpoison: error: --workers:", "an integer in [1, 10000000]"),
    Case("fewer-workers-than-classes", lambda t, mp: ["run", "--workers", "8",
                                                      "--compromised", "1"], 2,
         "fedpoison: error: --workers:", "at least one worker per class"),
    Case("cnn-on-tabular-data", lambda t, mp: ["run", "--model", "cnn", "--dataset",
                                               "breast-cancer"], 2,
         "fedpoison: error: --model:", "takes image inputs"),
    Case("option-the-component-lacks", lambda t, mp: [*RUN, "--rule", "median",
                                                      "--rule-opt", "beta=3"], 2,
         "fedpoison: error: --rule-opt:", "rule median has no option 'beta'"),
    Case("option-out-of-range", lambda t, mp: [*RUN, "--rule", "trimmed-mean", "--beta", "-1"],
         2, "fedpoison: error: --rule-opt:", "option beta: must be an integer ≥ 0, got -1"),
    Case("option-malformed", lambda t, mp: [*RUN, "--attack-opt", "epsilon"], 2,
         "fedpoison: error: --attack-opt:", "KEY=VALUE"),
    Case("attack-target-needs-server-data",
         lambda t, mp: [*RUN, "--rule", "fltrust", "--validation-size", "20", "--attack",
                        "trimmed-mean", "--knowledge", "full"], 2,
         "fedpoison: error: --attack-opt:", "needs the server's own data"),
    Case("unknown-rule", lambda t, mp: [*RUN, "--rule", "trimmed_mean"], 2,
         "fedpoison: error: --rule:", "did you mean 'trimmed-mean'"),
    # data (classes 3, 7 and 8; data errors exit 1)
    Case("data-file-unreadable", lambda t, mp: _mnist_home(t, mp, unreadable=True), 1,
         "fedpoison: data error: cannot read", "Permission denied"),
    Case("data-missing", lambda t, mp: _mnist_home(t, mp, files=MNIST_FILES[:1]), 1,
         "fedpoison: data error: mnist is missing", ", ".join(MNIST_FILES[1:])),
    Case("data-home-one-level-too-deep", lambda t, mp: _mnist_home(t, mp, deep=True), 1,
         "fedpoison: data error:", "FEDPOISON_DATA="),
]


def _store_made(t: Path) -> str:
    from fedpoison.experiments.store import ResultStore

    ResultStore(t / "made.sqlite").close()
    return str(t / "made.sqlite")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_invocation_is_one_line_without_traceback(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    argv = case.setup(tmp_path, monkeypatch)
    capsys.readouterr()
    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == case.code, err
    assert out == ""
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(case.starts), lines[0]
    assert case.contains in lines[0], lines[0]
    assert seconds < 10, f"took {seconds:.1f} s"  # the alias bomb used to run for 48 s


def test_store_parent_not_created_leaves_nothing(tmp_path: Path) -> None:
    """A refused store path creates no file or folder on the way."""
    blocker = Path(_write(tmp_path / "f", ""))
    assert main(["sweep", _spec(tmp_path), "--store", f"{blocker}/a/b/s.sqlite"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "ok.yaml"]


class _ClosedPipe(io.StringIO):
    """A stdout whose reader has gone away."""

    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no file descriptor")


def test_report_json_into_a_closed_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``fedpoison report STORE --json | head``: exit 141 quietly (was a BrokenPipeError)."""
    store = _store_made(tmp_path)
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    code = main(["report", store, "--table", _spec(tmp_path), "--json", "--out",
                 str(tmp_path / "out")])
    assert code == 141
    err = capsys.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_run_json_into_a_closed_pipe_in_a_real_process(tmp_path: Path) -> None:
    """``fedpoison run --json | head -c1``: no traceback, not even at interpreter exit."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.Popen(
        [sys.executable, "-m", "fedpoison.cli", *RUN, "--dataset", "breast-cancer", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    assert child.stdout is not None
    child.stdout.close()  # the reader goes away before anything is written
    _, err = child.communicate(timeout=120)
    assert child.returncode == 141, err.decode()
    assert b"Traceback" not in err and b"Exception ignored" not in err, err.decode()
