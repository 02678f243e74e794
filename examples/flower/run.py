"""Run the app with Flower's simulation engine: ``python run.py [key=value ...]``.

Settings (see fedpoison_app/task.py): e.g. ``python run.py attack=none output=out/clean``.
``flwr run .`` runs the same app (pyproject.toml); this script passes settings without a
run config. Each ClientApp actor gets ``FLOWER_CLIENT_CPUS`` CPUs (default 1), so Ray runs
as many actors as the machine has cores.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
# Flower's engine runs the ClientApps in Ray worker processes: they import fedpoison_app
# from here.
HERE = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [HERE, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])

from fedpoison_app.client_app import make_client_app  # noqa: E402
from fedpoison_app.server_app import make_server_app  # noqa: E402
from fedpoison_app.task import DEFAULTS, settings  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402


def parse(args: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq or key not in DEFAULTS:
            raise SystemExit(f"run.py: expected key=value with a key of {', '.join(DEFAULTS)}; "
                             f"got {arg!r}")
        default = DEFAULTS[key]
        out[key] = type(default)(value) if not isinstance(default, str) else value
    return out


if __name__ == "__main__":
    overrides = parse(sys.argv[1:])
    s = settings({}, overrides)
    cpus = int(os.environ.get("FLOWER_CLIENT_CPUS", "1"))
    run_simulation(server_app=make_server_app(overrides), client_app=make_client_app(overrides),
                   num_supernodes=int(s["workers"]),
                   backend_config={"client_resources": {"num_cpus": cpus, "num_gpus": 0.0}})
