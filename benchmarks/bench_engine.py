"""Overhead of the sweep engine per run, against the run itself.

Measures, per run: planning (config validation + hash), the store write (one committed
transaction, WAL, synchronous=FULL), and the executor's scheduling overhead (a sweep of
runs that return a canned result at once, so that only the engine's time remains); then one
real 500-iteration LR run on MNIST for comparison. Prints a table and, with --json, one JSON
object.

    python benchmarks/bench_engine.py [--runs 200] [--executors local,process,ray] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from fedpoison.config import RunConfig
from fedpoison.data import Dataset
from fedpoison.experiments.executors import Executor, Job, Outcome, make_executor
from fedpoison.experiments.spec import parse_spec
from fedpoison.experiments.store import ResultStore
from fedpoison.experiments.sweep import run_sweep
from fedpoison.experiments.worker import synthetic_result


def null_loader(name: str, seed: int) -> Dataset:
    x = torch.zeros(4, 2)
    y = torch.zeros(4, dtype=torch.long)
    return Dataset(name, x, y, x, y, 2)


def null_runner(config: dict[str, Any], ds: Dataset) -> dict[str, Any]:
    """No training: a canned result, so the sweep's time is the engine's."""
    return synthetic_result(config, 0.5)


def spec_for(runs: int, tag: str) -> Any:
    # distinct configs: one trial per seed, tagged so that each executor gets fresh keys
    return parse_spec({"name": f"bench-{tag}", "trials": runs,
                       "base": {"dataset": "mnist", "iterations": 500,
                                "validation_size": 100 + len(tag)}}).effective()


def bench_plan(runs: int) -> float:
    spec = spec_for(runs, "plan")
    tic = time.perf_counter()
    spec.plan()
    return (time.perf_counter() - tic) / runs


def bench_store(runs: int, folder: Path) -> list[float]:
    out = []
    with ResultStore(folder / "store.sqlite") as store:
        for seed in range(runs):
            cfg = {"iterations": 500, "seed": seed}
            result = synthetic_result(cfg, 0.5)
            tic = time.perf_counter()
            store.put(RunConfig.from_dict(cfg).config_hash(), result)
            out.append(time.perf_counter() - tic)
    return out


class Timed(Executor):
    """Wraps an executor and records when each outcome reaches the driver."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.name = inner.name
        self.arrivals: list[float] = []

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        for out in self.inner.run(jobs):
            self.arrivals.append(time.perf_counter())
            yield out

    def close(self) -> None:
        self.inner.close()


def bench_executor(name: str, runs: int, folder: Path) -> dict[str, float]:
    """Start-up (until the first result) and the steady-state time per run after it."""
    spec = spec_for(runs, name)
    jobs = 2 if name in ("process", "ray") else None
    ex = Timed(make_executor(name, jobs=jobs, runner=null_runner, loader=null_loader))
    with ResultStore(folder / f"{name}.sqlite") as store:
        tic = time.perf_counter()
        out = run_sweep(spec, store, ex, progress=False, record=False)
    assert out.stored == runs, out.failed[:1]
    gaps = [b - a for a, b in zip(ex.arrivals, ex.arrivals[1:], strict=False)]
    return {"startup_s": ex.arrivals[0] - tic,
            "per_run_ms": 1e3 * (ex.arrivals[-1] - ex.arrivals[0]) / max(1, runs - 1),
            "gap_median_ms": 1e3 * statistics.median(gaps),
            "store_write_median_ms": 1e3 * statistics.median(out.store_seconds)}


def bench_real_run(iterations: int) -> float:
    from fedpoison.data import load
    from fedpoison.simulation import run

    ds = load("mnist", progress=False)
    tic = time.perf_counter()
    run(RunConfig(iterations=iterations, rule="median"), dataset=ds)
    return time.perf_counter() - tic


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200, help="runs per measurement (default 200)")
    p.add_argument("--executors", default="local,process,ray")
    p.add_argument("--iterations", type=int, default=500,
                   help="iterations of the real LR run to compare with (0: skip)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    res: dict[str, Any] = {"runs": args.runs, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        res["plan_per_run_ms"] = 1e3 * bench_plan(args.runs)
        writes = bench_store(args.runs, folder)
        res["store_write_median_ms"] = 1e3 * statistics.median(writes)
        res["store_write_p90_ms"] = 1e3 * sorted(writes)[int(0.9 * len(writes))]
        res["executors"] = {}
        for name in [e for e in args.executors.split(",") if e]:
            print(f"executor {name} ...", file=sys.stderr)
            res["executors"][name] = bench_executor(name, args.runs, folder)
    if args.iterations:
        print(f"one {args.iterations}-iteration LR run on MNIST ...", file=sys.stderr)
        res["lr_run_s"] = bench_real_run(args.iterations)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"planning (validate + hash): {res['plan_per_run_ms']:.3f} ms/run")
    print(f"store write (commit, WAL, synchronous=FULL): median "
          f"{res['store_write_median_ms']:.2f} ms, p90 {res['store_write_p90_ms']:.2f} ms")
    for name, r in res["executors"].items():
        print(f"{name:8s} engine overhead {r['per_run_ms']:.2f} ms/run, median gap "
              f"{r['gap_median_ms']:.2f} ms (incl. store write median "
              f"{r['store_write_median_ms']:.2f} ms); start-up {r['startup_s']:.1f} s")
    if "lr_run_s" in res:
        lr = res["lr_run_s"]
        print(f"{args.iterations}-iteration LR run: {lr:.1f} s")
        for name, r in res["executors"].items():
            print(f"  {name}: median overhead = {100 * r['gap_median_ms'] / 1e3 / lr:.4f}% "
                  "of the run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
