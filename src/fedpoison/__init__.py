"""fedpoison: federated learning under local model poisoning attacks.

A faithful and fast reproduction of Fang, Cao, Jia and Gong, "Local Model Poisoning Attacks
to Byzantine-Robust Federated Learning" (USENIX Security 2020), and an open core: every
aggregation rule, pre-aggregator, attack, defense, dataset, model and data split is a
registered component, and users add theirs with the ``register_*`` functions
(docs/extending.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fedpoison.config import RunConfig
    from fedpoison.data.custom import register_dataset
    from fedpoison.errors import (
        ConfigError,
        DataError,
        FedpoisonError,
        ProvenanceError,
        RegistryError,
    )
    from fedpoison.modelfile import load_model
    from fedpoison.registry import (
        Diagnostic,
        Option,
        register_attack,
        register_defense,
        register_model,
        register_preaggregator,
        register_rule,
        register_split,
    )
    from fedpoison.simulation import RunResult, prepare, run

_LAZY = {
    "RunConfig": "fedpoison.config",
    "run": "fedpoison.simulation",
    "RunResult": "fedpoison.simulation",
    "prepare": "fedpoison.simulation",
    "load_model": "fedpoison.modelfile",
    "Option": "fedpoison.registry",
    "Diagnostic": "fedpoison.registry",
    "register_rule": "fedpoison.registry",
    "register_preaggregator": "fedpoison.registry",
    "register_attack": "fedpoison.registry",
    "register_defense": "fedpoison.registry",
    "register_dataset": "fedpoison.data.custom",
    "register_model": "fedpoison.registry",
    "register_split": "fedpoison.registry",
    "FedpoisonError": "fedpoison.errors",
    "ConfigError": "fedpoison.errors",
    "DataError": "fedpoison.errors",
    "ProvenanceError": "fedpoison.errors",
    "RegistryError": "fedpoison.errors",
}

__all__ = [
    "ConfigError",
    "DataError",
    "Diagnostic",
    "FedpoisonError",
    "Option",
    "ProvenanceError",
    "RegistryError",
    "RunConfig",
    "RunResult",
    "__version__",
    "load_model",
    "prepare",
    "register_attack",
    "register_dataset",
    "register_defense",
    "register_model",
    "register_preaggregator",
    "register_rule",
    "register_split",
    "run",
]


def __getattr__(name: str) -> Any:
    # Lazy so that `import fedpoison` (and `fedpoison --version`) does not pay for torch.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedpoison' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
