"""fedpoison: federated learning under local model poisoning attacks.

A faithful and fast reproduction of Fang, Cao, Jia and Gong, "Local Model Poisoning Attacks
to Byzantine-Robust Federated Learning" (USENIX Security 2020).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fedpoison.config import RunConfig
    from fedpoison.simulation import RunResult, run

__all__ = ["RunConfig", "RunResult", "__version__", "run"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import fedpoison` (and the CLI's --help) does not pay for torch.
    if name == "RunConfig":
        from fedpoison.config import RunConfig

        return RunConfig
    if name in ("run", "RunResult"):
        from fedpoison import simulation

        return getattr(simulation, name)
    raise AttributeError(name)
