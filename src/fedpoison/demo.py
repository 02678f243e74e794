"""``fedpoison demo``: the main job on an embedded default.

LR on MNIST with Krum when the data home holds it (paper Table 2a's setting), otherwise LR
on Breast Cancer Wisconsin (it ships inside scikit-learn) with median. It runs the rule
without attack and under the paper's full-knowledge attack crafted for it and prints both,
so a new user sees the point of the library in one command.
"""

from __future__ import annotations

import sys

from fedpoison.config import RunConfig
from fedpoison.data.home import data_home
from fedpoison.data.mnist import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS

MNIST_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


def mnist_available() -> bool:
    """True when all four MNIST files are in the data home (no download attempted)."""
    folder = data_home() / "mnist"
    return all((folder / name).is_file() for name in MNIST_FILES)


def attack_for(rule: str) -> str:
    """The paper's full-knowledge model attack crafted for ``rule`` (the attack registered
    under the rule's name, or an alias of it), else label flipping."""
    from fedpoison import registry
    from fedpoison.errors import ConfigError

    try:
        spec = registry.get("attack", rule)
    except ConfigError:
        return "label-flip"
    return "label-flip" if spec.data else rule


def main(iterations: int = 500) -> int:
    """Run the demo (``iterations`` per run: 500, as the paper; tests pass fewer)."""
    from fedpoison.simulation import run

    if mnist_available():
        base = RunConfig(dataset="mnist", model="lr", rule="krum", iterations=iterations)
        why = f"MNIST found in the data home ({data_home()})"
    else:
        # With ~4.5 examples per worker, Krum is already noisy here; median shows the attack.
        base = RunConfig(dataset="breast-cancer", model="lr", rule="median",
                         iterations=iterations)
        why = (f"MNIST not in the data home ({data_home()}; set FEDPOISON_DATA), "
               "using Breast Cancer from scikit-learn")
    print(f"fedpoison demo: {why}", file=sys.stderr)
    attack = attack_for(base.rule)
    runs = [("no attack", base), (f"{attack} attack (full knowledge)",
                                  RunConfig(**{**base.to_dict(), "attack": attack}))]
    for label, cfg in runs:
        r = run(cfg, progress=True)
        print(f"{cfg.dataset}/{cfg.model}, rule {cfg.rule}, m={cfg.workers}, "
              f"c={cfg.compromised}, {label}: test error {r.final_error:.4f} "
              f"({r.seconds:.1f} s)")
    return 0
