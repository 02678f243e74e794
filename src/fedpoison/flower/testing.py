"""An in-process Flower ``Grid``: a ServerApp's strategy talks to ClientApp callables directly.

For tests and debugging: no SuperLink, no Ray, no serialisation between processes (each
message's arrays still travel as Flower ``Array`` bytes). Each node has its own ``Context``
(node config with ``partition-id`` and ``num-partitions``, like Flower's simulation engine),
and a client may be any callable ``(Message, Context) -> Message | None`` (``None``: the
node does not reply); an exception in a client becomes an error reply, as in Flower.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

Client = Callable[[Message, Context], Message | None]


class InProcessGrid(Grid):
    """``clients[i]`` runs node i (partition-id i); node ids are random 63-bit integers
    drawn from ``seed``, so nothing may rely on a node id equalling its partition, and
    replies come back in a seeded random order, so nothing may rely on their order."""

    def __init__(self, clients: Sequence[Client], *, seed: int = 0,
                 run_config: Mapping[str, object] | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, 2**62, (len(clients),), generator=g).tolist()
        self.clients = dict(zip(ids, clients, strict=True))
        n = len(clients)
        self.contexts = {
            node: Context(run_id=1, node_id=node,
                          node_config={"partition-id": i, "num-partitions": n},
                          state=RecordDict(), run_config=dict(run_config or {}))
            for i, node in enumerate(ids)}
        self._run = Run.create_empty(run_id=1)
        # A ServerApp's messages take their run and sender from the process's task
        # identity, which Flower's runtimes set (as run_simulation does for its thread).
        TaskIdentity.task_id, TaskIdentity.run_id = 1, 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._ids = itertools.count(1)
        self._replies: dict[str, Message] = {}
        self._order = torch.Generator().manual_seed(seed + 1)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.clients)

    def node_of(self, partition: int) -> int:
        """The node id of partition ``partition``."""
        return list(self.clients)[partition]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            node = message.metadata.dst_node_id
            key = f"m{next(self._ids)}"
            try:
                reply = self.clients[node](message, self.contexts[node])
            except Exception as e:
                reply = Message(Error(code=1, reason=f"{type(e).__name__}: {e}"),
                                reply_to=message)
            ids.append(key)
            if reply is not None:
                self._replies[key] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies, in a seeded random order (as a network may deliver them)."""
        replies = [self._replies.pop(i) for i in message_ids if i in self._replies]
        order = torch.randperm(len(replies), generator=self._order).tolist()
        return [replies[i] for i in order]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
