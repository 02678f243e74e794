"""The scenario every peer benchmark runs, in plain NumPy/PyTorch (no fedpoison import: each
peer runs in its own virtual environment).

Scenario (fedpoison's defaults, paper Table 1): MNIST, m = 100 clients, the paper's non-IID
split with p = 0.5, batch 32, one local SGD step per client per round from the global model
(learning rate 0.1), the server averages; test accuracy on the 10,000 test images every 10
rounds. Models: multinomial logistic regression (``lr``, d = 7,850) and the paper's CNN
(``cnn``, Table 7a, d = 266,060), both as ``torch.nn.Module``.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def data_folder() -> Path:
    """``$FEDPOISON_DATA/mnist`` (the layout of fedpoison's data home), else the user cache."""
    home = os.environ.get("FEDPOISON_DATA") or str(Path.home() / ".cache" / "fedpoison")
    return Path(home) / "mnist"


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist() -> dict[str, torch.Tensor]:
    """Images float32 [n, 1, 28, 28] = uint8 / 255 and int64 labels, as fedpoison loads them."""
    folder = data_folder()
    out = {}
    for key, name in FILES.items():
        a = _idx(folder / name)
        out[key] = (torch.from_numpy(a.astype(np.float32) / 255).unsqueeze(1) if key[0] == "x"
                    else torch.from_numpy(a.astype(np.int64)))
    return out


def noniid_split(labels: np.ndarray, m: int, p: float = 0.5, classes: int = 10,
                 seed: int = 0) -> list[np.ndarray]:
    """The paper's split (Section 4.1): clients in 10 equal groups; an example of label l goes
    to group l with probability p, to each other group with (1 − p)/9, then to a uniformly
    random client of its group. Returns each client's example ids."""
    rng = np.random.default_rng(seed)
    n = labels.shape[0]
    probs = np.full((n, classes), (1 - p) / (classes - 1))
    probs[np.arange(n), labels] = p
    group = (rng.random(n)[:, None] > np.cumsum(probs, 1)).sum(1)
    groups = np.arange(m) * classes // m
    size = np.bincount(groups, minlength=classes)
    start = np.cumsum(size) - size
    owner = start[group] + np.minimum((rng.random(n) * size[group]).astype(int), size[group] - 1)
    order = np.argsort(owner, kind="stable")
    return np.split(order, np.cumsum(np.bincount(owner, minlength=m))[:-1])


_PROCESS_CACHE: dict[int, tuple[dict[str, torch.Tensor], list[np.ndarray]]] = {}


def data_and_split(clients: int) -> tuple[dict[str, torch.Tensor], list[np.ndarray]]:
    """MNIST and its split over ``clients``, loaded once per process (a module-level cache:
    a simulator that ships its client function to worker processes by value must still
    find it there, so it lives here, in an importable module)."""
    if clients not in _PROCESS_CACHE:
        data = load_mnist()
        _PROCESS_CACHE[clients] = (data, noniid_split(data["y_train"].numpy(), clients))
    return _PROCESS_CACHE[clients]


class LR(nn.Module):
    """Multinomial logistic regression: logits = x Aᵀ + b (d = 7,850 on MNIST)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(x.shape[0], -1))


class CNN(nn.Module):
    """The paper's CNN (Table 7a): conv 3×3×30, pool, conv 3×3×50, pool, FC 200, FC 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 30, 3)
        self.conv2 = nn.Conv2d(30, 50, 3)
        self.fc1 = nn.Linear(1250, 200)
        self.fc2 = nn.Linear(200, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(nn.functional.relu(self.conv1(x)), 2)
        h = nn.functional.max_pool2d(nn.functional.relu(self.conv2(h)), 2)
        return self.fc2(nn.functional.relu(self.fc1(h.flatten(1))))


MODELS = {"lr": LR, "cnn": CNN}


def test_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        correct = sum(int((model(x[s : s + 2000]).argmax(1) == y[s : s + 2000]).sum())
                      for s in range(0, x.shape[0], 2000))
    return correct / x.shape[0]


def report(peer: str, model: str, rounds: int, clients: int, loop_seconds: float,
           t_process_start: float, accuracy: float, extra: dict | None = None) -> None:
    """One JSON line on stdout: the simulation loop's time and the process's up to here."""
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "peer": peer, "model": model, "rounds": rounds, "clients": clients,
        "loop_seconds": loop_seconds, "process_seconds": time.time() - t_process_start,
        "rounds_per_s": rounds / loop_seconds, "clients_per_s": rounds * clients / loop_seconds,
        "final_test_accuracy": accuracy, "peak_rss_mib_self": peak_kb / 1024,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "python": sys.version.split()[0], **(extra or {}),
    }
    print("RESULT " + json.dumps(out), flush=True)
