"""The common scenario (common.py) with Flower's Simulation Engine (``flwr.simulation.
run_simulation``, Message API, Ray backend): 100 virtual SuperNodes, each ``ClientApp``
call loads the global model, takes one SGD step (0.1) on one batch of 32 of its partition
and returns its model; the ``ServerApp`` runs ``FedAvg`` over all 100 nodes every round
(no client-side evaluation) and evaluates the global model centrally on the 10,000 test
images every 10 rounds. Each client's batch is drawn from its partition with a NumPy
generator seeded by (client, round). The first round, which starts Ray's worker processes
(each imports torch and loads MNIST), is timed apart: rounds/s counts rounds 2..R.

Peak memory: the largest resident set of this process (``ru_maxrss``), and, sampled every
0.5 s, the summed proportional set size of this process and all its descendants (Ray's
raylet, GCS and worker processes; shared memory counted once).

    python flower_bench.py [--model lr|cnn] [--rounds 500] [--threads 2] [--cpus 2]
"""

from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import MODELS, data_and_split, load_mnist, report, test_accuracy  # noqa: E402
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

ARGS = argparse.Namespace()


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    data, split = data_and_split(ARGS.clients)  # once per Ray worker process
    cid = int(context.node_config["partition-id"])
    rnd = int(msg.content["config"]["server-round"])
    model = MODELS[ARGS.model]()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    mine = split[cid]
    rng = np.random.default_rng([cid, rnd])
    batch = torch.from_numpy(mine[rng.permutation(len(mine))[:32]])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(data["x_train"][batch]),
                                             data["y_train"][batch])
    loss.backward()
    optimizer.step()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": len(batch)})})
    return Message(content=content, reply_to=msg)


server_app = ServerApp()
RESULT: dict[str, float] = {}


@server_app.main()
def main_server(grid: Grid, context: Context) -> None:
    data = load_mnist()
    model = MODELS[ARGS.model]()
    torch.manual_seed(0)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            RESULT["first"] = time.perf_counter()
        if server_round == 1:  # the first round starts Ray's workers: timed apart
            RESULT["start"] = time.perf_counter()
        if server_round <= 1:
            return None
        if server_round % ARGS.eval_every and server_round != ARGS.rounds:
            return None
        model.load_state_dict(arrays.to_torch_state_dict())
        RESULT["accuracy"] = test_accuracy(model, data["x_test"], data["y_test"])
        RESULT["end"] = time.perf_counter()
        return MetricRecord({"accuracy": RESULT["accuracy"]})

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=ARGS.clients,
                      min_available_nodes=ARGS.clients)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                   num_rounds=ARGS.rounds, evaluate_fn=evaluate)


def _tree_pss() -> int:
    """Proportional set size (shared pages split between their users, so Ray's shared object
    store is counted once) of this process and all its descendants, in bytes (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", choices=tuple(MODELS), default="lr")
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs given to Ray")
    ap.parse_args(namespace=ARGS)
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], _tree_pss())

    threading.Thread(target=sample, daemon=True).start()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=ARGS.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": ARGS.cpus}})
    done.set()
    loop = RESULT["end"] - RESULT["start"]
    report("flower", ARGS.model, ARGS.rounds - 1, ARGS.clients, loop, T0, RESULT["accuracy"],
           {"peak_pss_mib_tree": peak[0] / 2**20, "ray_cpus": ARGS.cpus,
            "first_round_seconds": RESULT["start"] - RESULT["first"]})


if __name__ == "__main__":
    main()
