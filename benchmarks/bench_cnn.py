"""Local training of CNN-MNIST (paper Table 7a; m = 100 workers, batch 32): time per iteration.

One iteration's local training is one SGD round of every worker: the per-worker gradients
[m, d] of the mean cross-entropy over each worker's batch. Three ways to compute them:

* ``batched``  — ``CNN.batched_grad``: all workers in one computation (fedpoison's path);
* ``loop``     — a Python loop over workers, plain autograd through ``nn.Module`` layers;
* ``vmap``     — naive ``torch.func.vmap(grad(...))`` over per-worker parameters;
* ``adapter``  — the generic ``nn.Module`` adapter (``fedpoison.models.functional``) on the
  same network: what a user's own module gets.

They are timed interleaved (one of each per repeat, so that a change in machine load hits all
of them alike) and reported as medians with IQR, beside the FLOP floor: the iteration's
counted FLOPs (forward + weight gradients + input gradients of all layers but the first) over
this machine's fp32 matmul rate (a 2048² product), measured interleaved with them. Peak memory
of each method is the growth of the peak resident set (VmHWM) of a fresh subprocess that runs
it once. The load average and each method's process CPU time are printed: on a shared
machine read ratios, and single-threaded CPU times (``--threads 1``), not wall seconds.

    PYTHONPATH=src python benchmarks/bench_cnn.py [--repeats 7] [--threads N] [--diverged]
        [--block EXAMPLES] [--methods batched,loop,vmap] [--no-memory] [--no-tune]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from fedpoison.memory import tune_cpu_allocator
from fedpoison.models.batched import naive_vmap_grad, reference_batched_grad
from fedpoison.models.cnn import CNN
from fedpoison.models.functional import ModuleModel

METHODS = ("batched", "loop", "vmap", "adapter")


def setup(
    m: int, batch: int, diverged: bool, block: int | None = None
) -> tuple[CNN, dict[str, Callable[[], object]]]:
    """The model, random MNIST-shaped inputs and one callable per method."""
    g = torch.Generator().manual_seed(0)
    model = CNN((1, 28, 28), 10)
    if block is not None:
        model.cpu_block_examples = block or None
    W = model.init(g).expand(m, -1).clone()
    if diverged:  # several local rounds: every worker's weights differ
        W += 0.01 * torch.randn(W.shape, generator=g)
    x = torch.rand(m, batch, 1, 28, 28, generator=g)
    y = torch.randint(10, (m, batch), generator=g)
    mask = torch.ones(m, batch, dtype=torch.bool)
    adapter = ModuleModel(model.torch_module, 10)
    fns: dict[str, Callable[[], object]] = {
        "batched": lambda: model.batched_grad(W, x, y, mask),
        "adapter": lambda: adapter.batched_grad(W, x, y, mask),
        "loop": lambda: reference_batched_grad(model, W, x, y, mask),
        "vmap": lambda: naive_vmap_grad(model.reference_logits, W, x, y),
    }
    return model, fns


def matmul_gflops() -> tuple[float, float]:
    """fp32 GFLOP/s of a 2048² matrix product (median of 3): by wall time, and by process
    CPU time per thread (what one idle core would do; robust to other processes' load)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    walls, cpus = [], []
    for _ in range(3):
        c, t = time.process_time(), time.perf_counter()
        a @ b
        walls.append(time.perf_counter() - t)
        cpus.append((time.process_time() - c) / torch.get_num_threads())
    flop = 2 * 2048**3
    return flop / statistics.median(walls) / 1e9, flop / statistics.median(cpus) / 1e9


def iteration_flops(model: CNN, examples: int) -> float:
    """Forward + weight-gradient + input-gradient FLOPs (no input gradient for conv1)."""
    C, H, W = model.input_shape
    conv1 = 2 * model.C1 * 9 * C * (H - 2) * (W - 2)
    return examples * (3 * model.flops_per_example - conv1)


def peak_memory(method: str, args: argparse.Namespace) -> float:
    """MiB by which one call of ``method`` grows the peak RSS of a fresh process."""
    cmd = [sys.executable, __file__, "--memory-probe", method, "--workers", str(args.workers),
           "--batch", str(args.batch), "--threads", str(args.threads)]
    if args.block is not None:
        cmd += ["--block", str(args.block)]
    if args.diverged:
        cmd.append("--diverged")
    if args.no_tune:
        cmd.append("--no-tune")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


def _peak_rss_mib() -> float:
    """Peak resident set of this process image: VmHWM (Linux; reset by exec, unlike
    getrusage's maxrss, which a child inherits from its parent), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_probe(args: argparse.Namespace) -> None:
    if not args.no_tune:
        tune_cpu_allocator()
    _, fns = setup(args.workers, args.batch, args.diverged, args.block)
    before = _peak_rss_mib()
    fns[args.memory_probe]()
    print(json.dumps({"peak_mib": _peak_rss_mib() - before}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--workers", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--diverged", action="store_true", help="rows of W differ (shared=False)")
    ap.add_argument("--block", type=int, default=None,
                    help="CPU block size in examples (0 = one block; default: the model's)")
    ap.add_argument("--no-tune", action="store_true", help="skip tune_cpu_allocator()")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-probe", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        memory_probe(args)
        return
    if not args.no_tune:
        tune_cpu_allocator()
    methods = [m for m in args.methods.split(",") if m]
    model, fns = setup(args.workers, args.batch, args.diverged, args.block)
    flops = iteration_flops(model, args.workers * args.batch)
    load0 = os.getloadavg()
    for name in methods:  # warm-up (oneDNN primitive creation, page faults)
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    rates: list[tuple[float, float]] = []
    for _ in range(args.repeats):
        rates.append(matmul_gflops())
        for name in methods:
            c, t = time.process_time(), time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    load1 = os.getloadavg()

    def med_iqr(ts: list[float]) -> tuple[float, float]:
        if len(ts) < 2:
            return ts[0], 0.0
        q = statistics.quantiles(ts, n=4)
        return statistics.median(ts), q[2] - q[0]

    threads = torch.get_num_threads()
    rate_wall = statistics.median(r[0] for r in rates)
    rate_cpu = statistics.median(r[1] for r in rates)
    floor_wall = flops / (rate_wall * 1e9)
    # CPU time is a clean measure only single-threaded (idle threads spin or wait otherwise)
    floor_cpu = flops / (rate_cpu * 1e9) if threads == 1 else float("nan")
    print(f"CNN-MNIST local training, m={args.workers}, batch {args.batch}, "
          f"{'diverged' if args.diverged else 'shared'} weights, d={model.dim}, "
          f"CPU blocks of {model.cpu_block_examples} examples")
    print(f"torch {torch.__version__}, {threads} threads, "
          f"{os.cpu_count()} cores, allocator tuned: {not args.no_tune}")
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} (1-min)")
    print(f"FLOPs per iteration {flops / 1e9:.1f} GFLOP; fp32 matmul {rate_wall:.0f} GFLOP/s "
          f"by wall time, {rate_cpu:.0f} GFLOP/s per thread by CPU time; floor "
          f"{floor_wall:.3f} s (wall), {floor_cpu:.3f} s (CPU time / threads)")
    loop_w = statistics.median(times["loop"]) if "loop" in times else float("nan")
    loop_c = statistics.median(cpu["loop"]) if "loop" in cpu else float("nan")
    print(f"{'method':8} {'wall s':>7} {'IQR':>6} {'×floor':>7} {'loop÷':>6} | "
          f"{'CPU s':>6} {'IQR':>6} {'×floor':>7} {'loop÷':>6} | {'peak MiB':>8}")
    for name in methods:
        w, wi = med_iqr(times[name])
        c, ci = med_iqr(cpu[name])
        mem = float("nan") if args.no_memory else peak_memory(name, args)
        print(f"{name:8} {w:7.3f} {wi:6.3f} {w / floor_wall:7.2f} {loop_w / w:6.2f} | "
              f"{c:6.3f} {ci:6.3f} {c / floor_cpu:7.2f} {loop_c / c:6.2f} | "
              f"{mem:8.0f}")
    print("wall: perf_counter; CPU: process CPU time of all threads. Single-threaded, CPU time "
          "is what an idle core would take: other processes' load disturbs it far less.")
    print(f"repeats: {args.repeats}; raw wall seconds: "
          + json.dumps({k: [round(t, 3) for t in v] for k, v in times.items()}))


if __name__ == "__main__":
    main()
