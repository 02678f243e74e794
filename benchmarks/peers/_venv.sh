# Sourced by run_*.sh: make_venv NAME PACKAGE... creates $PEERS_VENV/NAME once (default
# benchmarks/peers/.venv/NAME) with torch 2.13 installed first, then the packages, pinned by
# constraints.txt. Set TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" to
# take the CPU build of torch from PyTorch's index instead of PyPI's default (CUDA) build.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
make_venv() {
  local name=$1; shift
  venv=${PEERS_VENV:-$here/.venv}/$name
  if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install -q ${TORCH_PIP_ARGS:-} torch==2.13.0
    "$venv/bin/python" -m pip install -q -c "$here/constraints.txt" "$@"
  fi
}
# timed LABEL RUNS CMD...: runs CMD RUNS times under /usr/bin/time -v, keeping its RESULT line
# and the time report in results/LABEL-i.{json,time}.
timed() {
  local label=$1 runs=$2; shift 2
  mkdir -p "$here/results"
  for i in $(seq "$runs"); do
    /usr/bin/time -v -o "$here/results/$label-$i.time" "$@" > "$here/results/$label-$i.log" 2>&1
    grep '^RESULT ' "$here/results/$label-$i.log" | sed 's/^RESULT //' > "$here/results/$label-$i.json"
    echo "$label run $i: $(tail -c 300 "$here/results/$label-$i.json")"
  done
}
