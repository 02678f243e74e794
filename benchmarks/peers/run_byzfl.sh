#!/usr/bin/env bash
# ByzFL 0.0.11 on the common scenario (common.py), in its own virtual environment.
#   benchmarks/peers/run_byzfl.sh [RUNS=3] [MODEL=lr] [ROUNDS=500]
# Environment: FEDPOISON_DATA (a folder holding mnist/*.gz), THREADS (torch threads, 2),
# PEERS_VENV, PYTHON, TORCH_PIP_ARGS (see _venv.sh). Results: results/byzfl-MODEL-*.
set -euo pipefail
. "$(dirname "$0")/_venv.sh"
runs=${1:-3} model=${2:-lr} rounds=${3:-500}
make_venv byzfl byzfl==0.0.11
timed "byzfl-$model" "$runs" "$venv/bin/python" "$here/byzfl_bench.py" --model "$model" \
  --rounds "$rounds" --threads "${THREADS:-2}"
"$venv/bin/python" "$here/summarize.py" "$here"/results/byzfl-"$model"-*.json
