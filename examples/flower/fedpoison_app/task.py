"""What the ServerApp and the ClientApps share: the run's settings and fedpoison's setup.

Both sides build the simulator's own setup (``fedpoison.simulation.prepare``) from the same
settings: the dataset, the paper's non-IID split over the workers, the model, its learning
rate and batch size. A node keeps it for the life of its process.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from fedpoison import RunConfig
from fedpoison.simulation import Setup, prepare

DEFAULTS: dict[str, Any] = {
    "num-server-rounds": 20,
    "dataset": "mnist",
    "model": "lr",
    "workers": 20,
    "compromised": 4,
    "noniid": 0.5,
    "rule": "krum",
    "attack": "krum",  # "none" for a run without attack
    "knowledge": "full",
    "seed": 0,
    "eval-every": 10,
    "batch-source": "server",  # "server": the simulator's batches; "client": nodes draw
    "timeout": 600.0,  # seconds the server waits for a round's replies
    "output": "",  # a folder for final.npy and result.json ("" writes nothing)
}


def settings(run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
             ) -> dict[str, Any]:
    """The defaults, then the run config (``flwr run --run-config``), then ``overrides``."""
    out = {**DEFAULTS, **dict(run_config), **dict(overrides or {})}
    unknown = sorted(set(out) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}; known: {', '.join(DEFAULTS)}")
    if out["batch-source"] not in ("server", "client"):
        raise ValueError(f"batch-source: 'server' or 'client', got {out['batch-source']!r}")
    return out


def run_config(s: Mapping[str, Any]) -> RunConfig:
    """The simulator's config for these settings (the same run, in fedpoison)."""
    return RunConfig(dataset=s["dataset"], model=s["model"], workers=int(s["workers"]),
                     compromised=int(s["compromised"]), noniid=float(s["noniid"]),
                     iterations=int(s["num-server-rounds"]), rule=s["rule"],
                     attack=s["attack"], knowledge=s["knowledge"] if s["attack"] != "none"
                     else "full", seed=int(s["seed"]), eval_every=int(s["eval-every"]))


@lru_cache(maxsize=4)
def _setup(key: tuple[tuple[str, Any], ...]) -> Setup:
    return prepare(run_config(dict(key)))


def setup(s: Mapping[str, Any]) -> Setup:
    """fedpoison's setup for these settings, built once per process."""
    keep = ("dataset", "model", "workers", "compromised", "noniid", "num-server-rounds",
            "rule", "attack", "knowledge", "seed", "eval-every")
    return _setup(tuple((k, s[k]) for k in keep))
