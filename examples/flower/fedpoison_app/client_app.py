"""The ClientApp: one worker's local SGD, with fedpoison's own training step.

A node knows its worker id from its node config (``partition-id``) and holds that worker's
examples of the split. It trains on the batches the server sends (the simulator's draw, so
that the run can equal the simulator's), or on batches it draws itself when the app runs
with ``batch-source = "client"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedpoison.flower import (
    BATCHES,
    answer_worker_query,
    from_record,
    node_worker_id,
    read_positions,
    to_record,
    train_on_positions,
    train_own_batches,
)
from fedpoison_app.task import settings, setup


def make_client_app(overrides: Mapping[str, Any] | None = None) -> ClientApp:
    """The ClientApp, with settings ``overrides`` on top of the run config."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return answer_worker_query(msg, context)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        s = settings(context.run_config, overrides)
        run = setup(s)
        worker = node_worker_id(context.node_config)
        w = from_record(msg.content["arrays"])
        if BATCHES in msg.content.array_records:
            local = train_on_positions(run.task, worker, w, read_positions(msg),
                                       run.labels_clean)
        elif s["batch-source"] == "client":
            server_round = int(msg.content["config"]["server-round"])
            local = train_own_batches(run.task, worker, w, run.config.local_rounds,
                                      int(s["seed"]), server_round, run.labels_clean)
        else:
            raise ValueError("the server sent no batch schedule but batch-source is 'server'")
        examples = int(run.task.partition.counts[worker])
        return Message(RecordDict({"arrays": to_record(local),
                                   "metrics": MetricRecord({"num-examples": examples})}),
                       reply_to=msg)

    return app


app = make_client_app()
