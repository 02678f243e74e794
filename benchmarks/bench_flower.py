"""The Flower example against the simulator: equivalence, test error, rounds per second.

For each configuration (Krum under the full-knowledge Krum attack; the mean without attack;
Krum without attack on request; MNIST LR, m = 20, c = 4, non-IID 0.5) and each repeat, runs
``rounds`` rounds of

- the simulator (``fedpoison.run``; its loop time, without setup),
- the example app on Flower's simulation engine (``examples/flower/run.py``, Ray, 20
  SuperNodes; the time of the strategy's loop, without the engine's start),
- the example app in one process (``InProcessGrid``: the strategy and ClientApp code
  without transport),

and prints the max abs difference of the final models, the final test errors and the
median rounds per second. Needs the ``flower`` extra and Ray.

    python benchmarks/bench_flower.py [--rounds 20] [--repeats 3] [--no-engine] [--config NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import fedpoison

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flower"
sys.path.insert(0, str(EXAMPLE))

from fedpoison_app.task import run_config, settings  # noqa: E402

CONFIGS = {"krum+krum-attack": {"rule": "krum", "attack": "krum"},
           "mean, no attack": {"rule": "mean", "attack": "none"},
           "krum, no attack": {"rule": "krum", "attack": "none"}}


def simulator(s: dict) -> tuple[np.ndarray, float, float]:
    """Final model, final error, loop seconds."""
    from fedpoison.simulation import prepare

    cfg = run_config(s)
    setup = prepare(cfg)
    w, notes = setup.w0, {}
    tic = time.perf_counter()
    for t in range(1, cfg.iterations + 1):
        w = setup.step(w, t, notes)
        if t % cfg.eval_every == 0 or t == cfg.iterations:
            err = setup.task.evaluate(w).error
    return w.numpy(), err, time.perf_counter() - tic


def engine(s: dict, out: Path) -> tuple[np.ndarray, float, float, float]:
    """Final model, final error, strategy-loop seconds, wall seconds (Ray start included)."""
    args = [f"{k}={v}" for k, v in s.items() if k != "output"] + [f"output={out}"]
    tic = time.perf_counter()
    done = subprocess.run([sys.executable, str(EXAMPLE / "run.py"), *args],
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    wall = time.perf_counter() - tic
    if done.returncode != 0 or not (out / "result.json").is_file():
        raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
    result = json.loads((out / "result.json").read_text())
    return np.load(out / "final.npy"), result["final_error"], result["seconds"], wall


def in_process(s: dict, out: Path) -> tuple[np.ndarray, float, float]:
    from fedpoison_app.client_app import make_client_app
    from fedpoison_app.server_app import make_server_app
    from flwr.app import Context, RecordDict

    from fedpoison.flower.testing import InProcessGrid

    ov = {**s, "output": str(out)}
    grid = InProcessGrid([make_client_app(ov)] * int(s["workers"]), seed=1)
    make_server_app(ov)(grid, Context(run_id=1, node_id=0, node_config={},
                                      state=RecordDict(), run_config={}))
    result = json.loads((out / "result.json").read_text())
    return np.load(out / "final.npy"), result["final_error"], result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-engine", action="store_true", help="skip the Ray runs")
    parser.add_argument("--config", action="append", choices=list(CONFIGS),
                        help="configurations to run (default: the first two)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"fedpoison {fedpoison.__version__}, torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    report = {}
    for name in args.config or list(CONFIGS)[:2]:
        over = CONFIGS[name]
        s = settings({}, {**over, "num-server-rounds": args.rounds, "eval-every": 10})
        rows: dict[str, list] = {"sim": [], "engine": [], "inproc": []}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeats):
                rows["sim"].append(simulator(s))
                rows["inproc"].append(in_process(s, Path(tmp) / f"i{r}"))
                if not args.no_engine:
                    rows["engine"].append(engine(s, Path(tmp) / f"e{r}"))
        w_sim, err_sim = rows["sim"][0][0], rows["sim"][0][1]
        line = {"simulator error": err_sim,
                "simulator rounds/s": args.rounds / statistics.median(x[2] for x in rows["sim"])}
        for key, label in (("inproc", "in-process app"), ("engine", "Flower engine app")):
            if not rows[key]:
                continue
            line[f"{label} max abs diff"] = max(float(np.abs(x[0] - w_sim).max())
                                                for x in rows[key])
            line[f"{label} error"] = rows[key][0][1]
            line[f"{label} rounds/s"] = args.rounds / statistics.median(x[2] for x in rows[key])
        if rows["engine"]:
            line["Flower engine wall s (median)"] = statistics.median(x[3] for x in rows["engine"])
        report[name] = line
        print(name)
        for k, v in line.items():
            print(f"  {k:32s} {v:.4g}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
