#!/usr/bin/env bash
# DPO training step and PPO iteration throughput, ours vs TRL, side by side on
# the same `small` policy shape and workload (CPU, float32).
#   bash bench/trainer_run.sh dpo [pairs prompt_len response_len steps]
#   bash bench/trainer_run.sh ppo [prompts prompt_len response_len iterations [ppo_epochs]]
#   (ppo_epochs, default 1, can also be given as PPO_EPOCHS=4)
# Environment: THREADS (default 2: RAYON_NUM_THREADS for ours, OMP_NUM_THREADS
# and BENCH_THREADS=torch.set_num_threads for TRL), PYTHON (default
# .venv/bin/python, which must have torch and transformers), SKIP_OURS=1 to run
# only the TRL side, CARGO_TARGET_DIR (default target).
# TRL and its dependencies are installed pinned with --no-deps, apart from the
# venv's torch/transformers: TRL 1.16.0 (DPO) into target-trainer/trl-deps and
# TRL 1.12.0 (PPO; the newest release that still ships
# trl.experimental.ppo, removed in 1.13.0) into target-trainer/trl-ppo-deps.
# Both folders are ignored by git. The venv itself was made with
#   python3 -m venv .venv && .venv/bin/pip install torch==2.15.0 transformers==5.24.0 numpy
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: bash bench/trainer_run.sh dpo|ppo [sizes...]}
shift
PY=${PYTHON:-.venv/bin/python}
THREADS=${THREADS:-2}
TARGET=${CARGO_TARGET_DIR:-target}
COMMON_DEPS="accelerate==1.15.0 datasets==5.2.0 pyarrow==24.0.0 dill==0.4.1 xxhash==4.1.0 multiprocess==0.70.19
  pandas==3.1.1 fsspec==2026.9.0 pytz==2026.6 tzdata==2026.6 python-dateutil==4.0.0 psutil==7.2.2"
case "$what" in
  dpo) DEPS=target-trainer/trl-deps; TRL=1.16.0 ;;
  ppo) DEPS=target-trainer/trl-ppo-deps; TRL=1.12.0 ;;
  *) echo "unknown bench '$what' (dpo or ppo)" >&2; exit 2 ;;
esac

if ! "$PY" -c "import torch, transformers" 2>/dev/null; then
  "$PY" -m pip install -q torch==2.15.0 transformers==5.24.0 numpy
fi
if [ "$(PYTHONPATH=$DEPS "$PY" -c 'import trl; print(trl.__version__)' 2>/dev/null)" != "$TRL" ]; then
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --target "$DEPS" --no-deps --upgrade "trl==$TRL" $COMMON_DEPS
fi

# ours reads the PPO epoch count from PPO_EPOCHS only; pass a 5th ppo argument that way to both
if [ "$what" = ppo ] && [ $# -ge 5 ]; then
  export PPO_EPOCHS=$5
  set -- "${@:1:4}"
fi

if [ "${SKIP_OURS:-0}" = 1 ]; then
  echo "ours: skipped (SKIP_OURS=1)" >&2
elif CARGO_TARGET_DIR=$TARGET cargo build -q --release -p trainer --example dpo_bench --example ppo_bench; then
  RAYON_NUM_THREADS=$THREADS "$TARGET/release/examples/${what}_bench" "$@"
else
  echo "ours: build of the trainer's dpo_bench/ppo_bench examples failed; skipping our side" \
    "(set SKIP_OURS=1 to not try)" >&2
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
PYTHONPATH=$DEPS OMP_NUM_THREADS=$THREADS BENCH_THREADS=$THREADS "$PY" "bench/${what}_bench.py" "$@" 2>/dev/null
