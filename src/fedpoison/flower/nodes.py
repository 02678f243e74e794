"""Which fedpoison worker each Flower node is.

Flower names nodes by random 64-bit ids; fedpoison's split, sampling, batch draw and
compromised workers are over worker ids 0..m-1. A node declares its worker id in its node
config (``partition-id``, which Flower's simulation engine sets and a real SuperNode gets
from ``--node-config``); :func:`discover_workers` asks every node for it once, before the
first round, and :func:`answer_worker_query` is the ClientApp's side.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

WORKER_KEY = "worker-id"
"""Key of the worker id in a node's reply to the worker query."""


def node_worker_id(node_config: Mapping[str, object], key: str = "partition-id") -> int:
    """The worker id a node declares in its node config (``--node-config partition-id=3``)."""
    if key not in node_config:
        raise ValueError(f"this node's config has no {key!r}; start it with "
                         f"--node-config \"{key}=<worker id>\"")
    return int(node_config[key])  # type: ignore[call-overload]


def answer_worker_query(message: Message, context: Context, key: str = "partition-id"
                        ) -> Message:
    """The ClientApp's reply to :func:`discover_workers`: its worker id."""
    worker = node_worker_id(context.node_config, key)
    return Message(RecordDict({"metrics": MetricRecord({WORKER_KEY: worker})}),
                   reply_to=message)


def discover_workers(grid: Grid, *, min_nodes: int, timeout: float = 120.0
                     ) -> dict[int, int]:
    """Node id → worker id of every connected node, once ``min_nodes`` are connected.

    Each node answers a query message with its worker id (:func:`answer_worker_query`). A
    node that does not answer, or two nodes claiming one worker id, is an error: the mapping
    is the federation's identity, fixed before the first round.
    """
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < min_nodes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"discover_workers: {len(nodes)} of {min_nodes} nodes "
                               f"connected after {timeout:.0f} s")
        time.sleep(0.5)
    content = RecordDict({"config": ConfigRecord({"fedpoison": "worker-id"})})
    messages = [Message(content=content, dst_node_id=n, message_type=MessageType.QUERY)
                for n in nodes]
    out: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise RuntimeError(f"discover_workers: node {node} answered with an error: "
                               f"{reply.error.reason}")
        metrics = [r for r in reply.content.metric_records.values() if WORKER_KEY in r]
        if not metrics:
            raise RuntimeError(f"discover_workers: node {node} sent no {WORKER_KEY!r}")
        out[node] = int(metrics[0][WORKER_KEY])  # type: ignore[call-overload]
    missing = sorted(set(nodes) - set(out))
    if missing:
        raise RuntimeError(f"discover_workers: no answer from node {missing[0]} "
                           f"({len(missing)} of {len(nodes)} silent)")
    if len(set(out.values())) != len(out):
        raise RuntimeError("discover_workers: two nodes claim the same worker id")
    return out
