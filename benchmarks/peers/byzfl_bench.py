"""The common scenario (common.py) with ByzFL's federated framework (``byzfl.Client``,
``byzfl.Server``), in the loop of ByzFL's own benchmark (``byzfl/benchmark/train.py``, DSGD):
each round every honest client computes the gradient of one batch of 32 at the global
model, the server aggregates the gradients (``Average``, or ``--rule``) and takes an SGD
step of 0.1, and the new model is sent to every client. With one local step this is the
paper's model averaging (w − 0.1·mean(g) = mean(w − 0.1·g)). Clients read their data through
ByzFL's expected ``DataLoader`` (shuffled, batch 32) over a preloaded ``TensorDataset``
(faster than torchvision's per-image decoding that ByzFL's own benchmark uses).

    python byzfl_bench.py [--model lr|cnn] [--rounds 500] [--rule Average] [--threads 2]
"""

from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Subset, TensorDataset  # noqa: E402

# ByzFL's experiment runner (byzfl.benchmark, unused here) imports torchvision, whose PyPI
# wheel needs the CUDA build of torch; keep it unimported so that the CPU wheel of torch
# serves (this also spares ByzFL the start-up cost of torchvision, matplotlib and seaborn).
sys.modules.setdefault("byzfl.benchmark", types.ModuleType("byzfl.benchmark"))

import byzfl.fed_framework.models as byzfl_models  # noqa: E402
from byzfl import Client, Server  # noqa: E402
from common import MODELS, load_mnist, noniid_split, report, test_accuracy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", choices=tuple(MODELS), default="lr")
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rule", default="Average", help="ByzFL aggregator (Average, Median, "
                    "TrMean, Krum)")
    ap.add_argument("--f", type=int, default=20, help="f of the robust rules")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)

    # ByzFL builds models by name from its model zoo: register the scenario's model there.
    name = f"fedpoison_bench_{args.model}"
    setattr(byzfl_models, name, MODELS[args.model])
    data = load_mnist()
    train = TensorDataset(data["x_train"], data["y_train"])
    split = noniid_split(data["y_train"].numpy(), args.clients)
    common = {"model_name": name, "device": "cpu", "optimizer_name": "SGD",
              "learning_rate": 0.1, "weight_decay": 0.0, "milestones": [],
              "learning_rate_decay": 1.0}
    clients = [
        Client({**common, "loss_name": "CrossEntropyLoss", "LabelFlipping": False,
                "training_dataloader": DataLoader(Subset(train, part.tolist()), batch_size=32,
                                                  shuffle=True),
                "momentum": 0.0, "nb_labels": 10, "store_per_client_metrics": False})
        for part in split
    ]
    parameters = {} if args.rule == "Average" else {"f": args.f}
    test = DataLoader(TensorDataset(data["x_test"], data["y_test"]), batch_size=2000)
    server = Server({**common, "test_loader": test,
                     "aggregator_info": {"name": args.rule, "parameters": parameters},
                     "pre_agg_list": []})
    model = server.get_dict_parameters()
    for client in clients:
        client.set_model_state(model)

    start = time.perf_counter()
    accuracy = float("nan")
    for step in range(1, args.rounds + 1):
        for client in clients:
            client.compute_gradients()
        gradients = [client.get_flat_gradients_with_momentum() for client in clients]
        server.update_model_with_gradients(gradients)
        model = server.get_dict_parameters()
        for client in clients:
            client.set_model_state(model)
        if step % args.eval_every == 0 or step == args.rounds:
            accuracy = server.compute_test_accuracy()
    loop = time.perf_counter() - start
    check = test_accuracy(server.model, data["x_test"], data["y_test"])
    report("byzfl", args.model, args.rounds, args.clients, loop, T0, accuracy,
           {"rule": args.rule, "check_accuracy": check})


if __name__ == "__main__":
    main()
