"""fedpoison inside Flower: robust aggregation and red-teaming for a Flower app.

Needs the ``flower`` extra (``pip install 'fedpoison[flower]'``); the rest of fedpoison
never imports Flower. :class:`FedpoisonStrategy` aggregates a Flower app's replies with any
registered fedpoison rule, pre-aggregators and defense; :class:`RedTeam` replaces the
compromised nodes' replies with any registered model attack's crafted models;
:class:`BatchSchedule` and :func:`train_on_positions` make a ClientApp train batch for batch
as fedpoison's simulator does. See docs/flower.md and examples/flower/.
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised without the extra only
    raise ImportError("fedpoison.flower needs Flower: pip install 'fedpoison[flower]'") from e

from fedpoison.flower.adversary import RedTeam
from fedpoison.flower.arrays import BadReply, Layout, from_record, to_record
from fedpoison.flower.batches import (
    BATCHES,
    BatchSchedule,
    client_generator,
    read_positions,
    train_on_positions,
    train_own_batches,
)
from fedpoison.flower.nodes import (
    WORKER_KEY,
    answer_worker_query,
    discover_workers,
    node_worker_id,
)
from fedpoison.flower.strategy import FedpoisonStrategy

__all__ = [
    "BATCHES",
    "WORKER_KEY",
    "BadReply",
    "BatchSchedule",
    "FedpoisonStrategy",
    "Layout",
    "RedTeam",
    "answer_worker_query",
    "client_generator",
    "discover_workers",
    "from_record",
    "node_worker_id",
    "read_positions",
    "to_record",
    "train_on_positions",
    "train_own_batches",
]
