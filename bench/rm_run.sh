#!/usr/bin/env bash
# Reward-model training throughput, ours vs TRL's RewardTrainer, side by side
# on the same shape and batch (CPU, float32, single thread by default).
#   bash bench/rm_run.sh [pairs] [seq] [steps]      (THREADS=1, PYTHON=.venv/bin/python)
# TRL and its dependencies go into target-rm/trl-deps (ignored by git), pinned,
# without touching the shared venv's torch/transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
THREADS=${THREADS:-1}
DEPS=target-rm/trl-deps
if ! PYTHONPATH=$DEPS "$PY" -c "import trl" 2>/dev/null; then
  "$PY" -m pip install -q --target "$DEPS" --no-deps trl==1.16.0 accelerate==1.15.0 datasets==5.2.0 \
    pyarrow==24.0.0 dill==0.4.1 xxhash==4.1.0 multiprocess==0.70.19 pandas==3.1.1 fsspec==2026.9.0 \
    pytz==2026.6 tzdata==2026.6 python-dateutil==4.0.0 psutil==7.2.2
fi
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-rm} cargo build -q --release -p reward-model --example rm_bench
RAYON_NUM_THREADS=$THREADS "${CARGO_TARGET_DIR:-target-rm}/release/examples/rm_bench" "$@"
PYTHONPATH=$DEPS OMP_NUM_THREADS=$THREADS BENCH_THREADS=$THREADS "$PY" bench/rm_bench.py "$@" 2>/dev/null
