"""``fedpoison demo`` (README's first command): it runs, on MNIST when the data home holds
it and on Breast Cancer otherwise, each rule without attack and under the attack crafted
for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedpoison.cli import main as cli
from fedpoison.demo import attack_for, main


def test_the_attack_is_the_one_crafted_for_the_rule() -> None:
    assert attack_for("krum") == "krum"
    assert attack_for("median") == "median"  # an alias of the trimmed-mean attack
    assert attack_for("trimmed-mean") == "trimmed-mean"
    assert attack_for("mean") == "label-flip"  # no model attack of that name
    assert attack_for("bga") == "label-flip"  # a data attack


def test_the_command_runs_on_breast_cancer_without_mnist(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FEDPOISON_DATA", str(tmp_path))  # an empty data home
    assert cli(["demo"]) == 0
    out, err = capsys.readouterr()
    assert "MNIST not in the data home" in err
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert "breast-cancer/lr, rule median" in lines[0] and "no attack" in lines[0]
    assert "median attack (full knowledge)" in lines[1]
    assert all("test error" in line for line in lines)


def test_the_demo_runs_on_mnist(capsys: pytest.CaptureFixture[str]) -> None:
    home = os.environ.get("FEDPOISON_DATA")
    if not home or not (Path(home) / "mnist").is_dir():
        pytest.skip("needs FEDPOISON_DATA with MNIST (CI: ../shared/datasets)")
    assert main(iterations=5) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [("rule krum" in x, "krum attack" in x) for x in lines] == [(True, False),
                                                                     (True, True)]
