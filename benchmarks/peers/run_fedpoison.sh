#!/usr/bin/env bash
# fedpoison on the same scenario: `fedpoison run` (whole process: interpreter, imports, data,
# 500 iterations), with the Python that has fedpoison installed (default: the repository's
# .venv, else python3 with PYTHONPATH=src).
#   benchmarks/peers/run_fedpoison.sh [RUNS=3] [MODEL=lr] [ROUNDS=500] [RULE=mean]
# Environment: FEDPOISON_DATA, THREADS (2), PYTHON. Results: results/fedpoison-MODEL-RULE-*.
set -euo pipefail
. "$(dirname "$0")/_venv.sh"
root=$(cd "$here/../.." && pwd)
runs=${1:-3} model=${2:-lr} rounds=${3:-500} rule=${4:-mean}
py=${PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=python3
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
timed "fedpoison-$model-$rule" "$runs" "$py" "$here/fedpoison_bench.py" --threads \
  "${THREADS:-2}" run --model "$model" --iterations "$rounds" --rule "$rule" --json
"$py" "$here/summarize.py" "$here"/results/fedpoison-"$model"-"$rule"-*.json
