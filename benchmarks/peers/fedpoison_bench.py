"""``fedpoison ARGS`` (the CLI, in this process) for the peers table: runs ``fedpoison --threads
N run ... --json`` and prints the same RESULT line as the peers' scripts (the loop's time is
the run's time less its set-up).

    python fedpoison_bench.py --threads 2 run --iterations 500 --rule mean --json
"""

from __future__ import annotations

import time

T0 = time.time()

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

from fedpoison.cli import main  # noqa: E402


def run() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(sys.argv[1:])
    if code:
        sys.exit(code)
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    cfg = result["config"]
    loop = result["seconds"] - result["timings"]["setup"]
    rounds, clients = cfg["iterations"], cfg["sample"] or cfg["workers"]
    import torch

    print("RESULT " + json.dumps({
        "peer": "fedpoison", "model": cfg["model"], "rounds": rounds, "clients": clients,
        "loop_seconds": loop, "process_seconds": time.time() - T0,
        "rounds_per_s": rounds / loop, "clients_per_s": rounds * clients / loop,
        "final_test_accuracy": 1 - result["final_error"],
        "peak_rss_mib_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "rule": cfg["rule"],
        "timings": result["timings"], "python": sys.version.split()[0]}), flush=True)


if __name__ == "__main__":
    run()
