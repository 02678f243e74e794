"""A plain batched-torch script for the LR-MNIST scenario: the yardstick of issue 16.

What a researcher would write in one file to run the paper's LR-MNIST setting without
fedpoison: m = 100 workers, the non-IID split (p = 0.5), one local SGD step (batch 32,
learning rate 0.1) per worker per iteration from the global model, all workers in one
batched computation, the server's mean or Krum (float32 ``torch.cdist``, no exactness
guarantees), test error every 10 iterations. No attack, no diagnostics, no store. It decodes
the IDX files each time it starts (fedpoison keeps a decoded copy in its cache).

    FEDPOISON_DATA=/path/to/datasets python benchmarks/plain_lr.py [--rule mean|krum]
        [--iterations 500] [--threads 2]

Compared with ``fedpoison run --rule R --iterations 500 --no-progress`` as whole processes
(docs/design.md, "Whole process").
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import numpy as np
import torch


def idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as a NumPy array."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(home: Path) -> tuple[torch.Tensor, ...]:
    def images(name: str) -> torch.Tensor:
        return torch.from_numpy(idx(home / "mnist" / name).reshape(-1, 784) / np.float32(255))

    def labels(name: str) -> torch.Tensor:
        return torch.from_numpy(idx(home / "mnist" / name).astype(np.int64))

    return (images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz"),
            images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz"))


def noniid(y: torch.Tensor, m: int, p: float, g: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's split: label l goes to group l with probability p, else to another group;
    a uniform worker within the group. Returns a padded index table [m, width] and counts."""
    n, L = y.numel(), 10
    probs = torch.full((n, L), (1 - p) / (L - 1))
    probs[torch.arange(n), y] = p
    group = torch.multinomial(probs, 1, generator=g).squeeze(1)
    per = m // L
    owner = group * per + torch.randint(per, (n,), generator=g)
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=m)
    width = int(counts.max())
    table = torch.zeros(m, width, dtype=torch.long)
    start = torch.cumsum(counts, 0) - counts
    pos = torch.arange(n) - start[owner[order]]
    table[owner[order], pos] = order
    return table, counts


def krum(W: torch.Tensor, f: int) -> torch.Tensor:
    D = torch.cdist(W, W) ** 2
    D.fill_diagonal_(float("inf"))
    scores = torch.topk(D, W.shape[0] - f - 2, dim=1, largest=False).values.sum(1)
    return W[int(torch.argmin(scores))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rule", choices=["mean", "krum"], default="mean")
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y, xt, yt = load(Path(os.environ["FEDPOISON_DATA"]))
    g = torch.Generator().manual_seed(0)
    m, B, lr, f, L, F = 100, 32, 0.1, 20, 10, 784
    table, counts = noniid(y, m, 0.5, g)
    w = torch.zeros(L * F + L)
    rows = torch.arange(m)[:, None]
    for t in range(1, args.iterations + 1):
        # one batch per worker without replacement: the B smallest random keys of its examples
        keys = torch.rand(table.shape, generator=g)
        keys[torch.arange(table.shape[1])[None, :] >= counts[:, None]] = 2.0
        pick = torch.topk(keys, B, dim=1, largest=False).indices
        ids = table[rows, pick]
        xb, yb = x[ids], y[ids]  # [m, B, F], [m, B]
        A, b = w[: L * F].view(L, F), w[L * F:]
        z = xb @ A.t() + b  # [m, B, L]
        delta = torch.softmax(z, dim=2)
        delta[rows, torch.arange(B)[None, :], yb] -= 1.0
        delta /= B
        gA = delta.transpose(1, 2) @ xb  # [m, L, F]
        W = torch.cat([(A - lr * gA).reshape(m, -1), b - lr * delta.sum(1)], 1)
        w = W.mean(0) if args.rule == "mean" else krum(W, f)
        if t % 10 == 0 or t == args.iterations:
            logits = xt @ w[: L * F].view(L, F).t() + w[L * F:]
            err = float((logits.argmax(1) != yt).float().mean())
    print(f"plain {args.rule}: {args.iterations} iterations, test error {err:.4f}")


if __name__ == "__main__":
    main()
