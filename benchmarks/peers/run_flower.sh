#!/usr/bin/env bash
# Flower 1.42 (Simulation Engine, Ray backend) on the common scenario (common.py), in its own
# virtual environment.
#   benchmarks/peers/run_flower.sh [RUNS=3] [MODEL=lr] [ROUNDS=500]
# Environment: FEDPOISON_DATA, THREADS (server's torch threads, 2), CPUS (CPUs given to Ray,
# all), PEERS_VENV, PYTHON, TORCH_PIP_ARGS (see _venv.sh). Results: results/flower-MODEL-*.
set -euo pipefail
. "$(dirname "$0")/_venv.sh"
runs=${1:-3} model=${2:-lr} rounds=${3:-500}
make_venv flower "flwr[simulation]==1.42.0"
timed "flower-$model" "$runs" "$venv/bin/python" "$here/flower_bench.py" --model "$model" \
  --rounds "$rounds" --threads "${THREADS:-2}" --cpus "${CPUS:-$(nproc)}"
"$venv/bin/python" "$here/summarize.py" "$here"/results/flower-"$model"-*.json
