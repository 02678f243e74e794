"""The ServerApp: fedpoison's rule (and red team) aggregating the SuperNodes' models.

It asks every node for its worker id, then runs Flower's training loop with
:class:`fedpoison.flower.FedpoisonStrategy` built from the same fedpoison config as the
simulator (rule, attack, f, compromised count, seed), sends each node the simulator's batch
draw, and evaluates the global model on the test set on the server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedpoison.flower import (
    BatchSchedule,
    FedpoisonStrategy,
    discover_workers,
    from_record,
    to_record,
)
from fedpoison_app.task import settings, setup


def make_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """The ServerApp, with settings ``overrides`` on top of the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        s = settings(context.run_config, overrides)
        run = setup(s)
        cfg = run.config
        assert cfg.iterations is not None and cfg.batch_size is not None
        workers = discover_workers(grid, min_nodes=cfg.workers, timeout=float(s["timeout"]))
        schedule = None
        if s["batch-source"] == "server":
            schedule = BatchSchedule(run.task.partition, cfg.batch_size, cfg.local_rounds,
                                     seed=cfg.seed)
        strategy = FedpoisonStrategy.from_config(cfg, workers=workers, node_records=schedule)
        curve: list[tuple[int, float]] = []

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0 or (server_round % cfg.eval_every
                                     and server_round != cfg.iterations):
                return None  # as the simulator: every eval_every rounds and the last
            ev = run.task.evaluate(from_record(arrays))
            curve.append((server_round, ev.error))
            return MetricRecord({"error": ev.error, "loss": ev.loss})

        tic = time.perf_counter()
        result = strategy.start(grid=grid, initial_arrays=to_record(run.w0),
                                num_rounds=cfg.iterations, evaluate_fn=evaluate,
                                timeout=float(s["timeout"]))
        seconds = time.perf_counter() - tic
        if s["output"]:
            out = Path(s["output"])
            out.mkdir(parents=True, exist_ok=True)
            np.save(out / "final.npy", from_record(result.arrays).numpy())
            (out / "result.json").write_text(json.dumps({
                "settings": s, "curve": curve, "final_error": curve[-1][1],
                "seconds": seconds, "rounds_per_second": cfg.iterations / seconds,
                "compromised_nodes": strategy.compromised_nodes(),
                "diagnostics": strategy.diagnostics()}, indent=1))

    return app


app = make_server_app()
