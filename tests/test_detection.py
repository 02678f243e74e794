"""Every defense reports what it removes: the run's diagnostics["detection"] counts the
compromised and benign workers it dropped (defenses) or gave no weight (trust rules)."""

from __future__ import annotations

import pytest

from defense_helpers import toy_run
from fedpoison import registry

ITERATIONS, COMPROMISED = 12, 4
TRUST_RULES = ("fltrust", "foolsgold", "signguard", "flame")
#: Defenses with the options that let them act within a 12-iteration run.
DEFENSE_OPTIONS = {"fldetector": {"warmup": 2, "window": 3}}


def _check_counts(det: dict, dropped_each: tuple[int, int] | None = None) -> None:
    assert det["n"] == ITERATIONS
    assert det["tp"] + det["fn"] == ITERATIONS * COMPROMISED
    assert det["fp"] + det["tn"] == ITERATIONS * (20 - COMPROMISED)
    if dropped_each is not None:
        lo, hi = dropped_each
        assert ITERATIONS * lo <= det["tp"] + det["fp"] <= ITERATIONS * hi
    for key in ("tpr", "fpr", "precision", "recall"):
        assert key in det


@pytest.mark.parametrize("defense", sorted(registry.names("defense")))
def test_every_defense_reports_its_drops(defense: str) -> None:
    r = toy_run(rule="median", defense=defense, attack="krum",
                defense_options=DEFENSE_OPTIONS.get(defense, {}))
    det = r.diagnostics["detection"]
    expected = {"err": (COMPROMISED, COMPROMISED), "lfr": (COMPROMISED, COMPROMISED),
                "union": (COMPROMISED, 2 * COMPROMISED), "dnc": (COMPROMISED, COMPROMISED)}
    _check_counts(det, expected.get(defense))


@pytest.mark.parametrize("rule", TRUST_RULES)
def test_every_trust_rule_reports_zero_weights(rule: str) -> None:
    det = toy_run(rule=rule, attack="trimmed-mean",
                  attack_options={"target_rule": "trimmed-mean"}).diagnostics["detection"]
    _check_counts(det)
    assert det["tp"] > 0


def test_defense_and_trust_rule_reports_combine() -> None:
    """DnC drops ⌈c·f⌉ = 4 rows; FLTrust's zero-trust rows among the rest are mapped back to
    the workers they came from and added."""
    det = toy_run(rule="fltrust", defense="dnc", attack="krum").diagnostics["detection"]
    _check_counts(det, (COMPROMISED, 20))
    assert "detection" not in toy_run(rule="median", attack="krum").diagnostics
