#!/usr/bin/env bash
# GPU check in two halves, because the GPU machine has no Rust toolchain:
#
#   bash scripts/gpu-check.sh build   # here: build the CUDA test + benchmark binaries into gpu-bin/
#   bash scripts/gpu-check.sh run     # on the NVIDIA machine (gpu-bin/ carried): parity tests + benchmark
#
# `run` prints one short table: parity result, then train/generate throughput on CPU and GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
build)
  eval "$(../shared/tools/cuda-kit.sh)"
  # separate target dir: the CUDA build would otherwise replace the CPU release artifacts
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-gpu}
  cargo build --release -p policy --features cuda --example policy_bench
  cargo test --release -p policy --features cuda --test cuda_parity --no-run 2>&1 | tee /tmp/gpu-build.log
  rm -rf gpu-bin && mkdir -p gpu-bin
  cp "$CARGO_TARGET_DIR"/release/examples/policy_bench gpu-bin/
  cp "$(grep -o "$CARGO_TARGET_DIR/release/deps/cuda_parity-[0-9a-f]*" /tmp/gpu-build.log | head -1)" gpu-bin/cuda_parity
  ls -la gpu-bin
  ;;
run)
  lib=$(dirname "$(find / -name 'libcublas.so.13' 2>/dev/null | head -1)")
  export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  export POLICY_FIXTURES=$PWD/policy/tests/fixtures/model
  if ./gpu-bin/cuda_parity --test-threads 1 >/tmp/parity.log 2>&1; then parity=pass; else parity=FAIL; cat /tmp/parity.log; fi
  printf '%-10s %-8s %s\n' check device result
  printf '%-10s %-8s %s\n' parity cuda "$parity"
  for what in train generate; do
    for d in cpu cuda; do
      printf '%-10s %-8s %s\n' "$what" "$d" "$(RAYON_NUM_THREADS=16 ./gpu-bin/policy_bench "$what" "$d" 2>&1 | tail -1)"
    done
  done
  ;;
*) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
