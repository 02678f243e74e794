#!/bin/bash
# One pass of the GPU checks on a machine with a CUDA GPU and many CPU cores, within a time
# budget: the CUDA tests, iteration throughput on the GPU, then Table 2(b) at paper scale on
# the GPU; meanwhile the CPU cores run LR sweeps (Table 2(a) with 10 trials, then the attack
# matrix with 3). Every sweep writes to a results store as it goes, so a pass cut short by
# the budget keeps what finished, and a second pass resumes.
#
#   FEDPOISON_DATA=... benchmarks/gpu_check.sh OUTDIR [SECONDS] [CPU_JOBS] [GPU_JOBS]
#
# Run from the repository root with fedpoison importable (PYTHONPATH=src or installed).
set -u
OUT=${1:?usage: gpu_check.sh OUTDIR [SECONDS] [CPU_JOBS] [GPU_JOBS]}
BUDGET=${2:-540}
CPU_JOBS=${3:-11}
GPU_JOBS=${4:-3}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
mkdir -p "$OUT"
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
log() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$OUT/summary.log"; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc; $PY -c "import torch; print(torch.__version__, torch.version.cuda)"; } \
  >> "$OUT/summary.log" 2>&1

log "CPU sweeps start: table2a x10, then attack-matrix x3 ($CPU_JOBS jobs)"
( $PY -m fedpoison reproduce table2a --trials 10 --store "$OUT/lr.sqlite" --yes \
      --executor process --jobs "$CPU_JOBS" --out /tmp/fp_t2a
  $PY -m fedpoison reproduce attack-matrix --store "$OUT/lr.sqlite" --yes \
      --executor process --jobs "$CPU_JOBS" --out /tmp/fp_am ) > "$OUT/cpu_sweeps.log" 2>&1 &
CPU_PID=$!

log "CUDA tests"
timeout 240 $PY -m pytest -q -p no:cacheprovider -x -rs tests/test_cuda.py \
    tests/test_models.py tests/test_attack_misc.py -k "cuda" > "$OUT/cuda_tests.log" 2>&1
log "CUDA tests rc=$? $(tail -1 "$OUT/cuda_tests.log")"

log "throughput"
timeout 120 $PY benchmarks/bench_device.py --device cuda --repeats 20 \
    >> "$OUT/summary.log" 2>&1
log "throughput rc=$?"

budget=$(($(left) - 25))
log "table2b at paper scale on the GPU ($GPU_JOBS jobs, ${budget} s)"
timeout "$budget" $PY -m fedpoison reproduce table2b --trials 1 --choices device=cuda \
    --store "$OUT/gpu.sqlite" --yes --executor process --jobs "$GPU_JOBS" \
    --out /tmp/fp_t2b > "$OUT/table2b.log" 2>&1
log "table2b rc=$?"

kill "$CPU_PID" 2>/dev/null; pkill -f "fedpoison reproduce" 2>/dev/null; sleep 2
pkill -9 -f "fedpoison reproduce" 2>/dev/null; sleep 1
for db in "$OUT"/*.sqlite; do
  $PY -c "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.close()" "$db"
done
rm -f "$OUT"/*.sqlite-wal "$OUT"/*.sqlite-shm
log "done"
