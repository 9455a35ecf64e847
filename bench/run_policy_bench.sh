#!/usr/bin/env bash
# Runs the policy benchmark (ours and PyTorch/transformers) side by side on 2 threads.
#   bash bench/run_policy_bench.sh            (PYTHON defaults to .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build -q --release -p policy --example policy_bench
uptime
for what in train generate; do
  RAYON_NUM_THREADS=2 "$TARGET"/release/examples/policy_bench "$what"
  OMP_NUM_THREADS=2 BENCH_THREADS=2 "$PY" bench/policy_bench.py "$what" 2>/dev/null
done
