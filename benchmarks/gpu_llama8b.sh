#!/usr/bin/env bash
# One short, prepared GPU check: `personafuse bench` on a random-weights Llama-3.1-8B-shaped model (bf16).
# Run from the repo root on a GPU machine with torch + transformers + peft + sentence-transformers installed:
#   SHAPE=path/to/llama3.1-8b-folder ENCODER=minilm-l6 OUT=benchmarks/results/gpu bash benchmarks/gpu_llama8b.sh
# SHAPE holds config.json (Llama-3.1-8B's, see docs/performance.md) and optionally tokenizer files.
set -euo pipefail
SHAPE=${SHAPE:?set SHAPE to a folder with the model config.json}
ENCODER=${ENCODER:-minilm-l6}
OUT=${OUT:-benchmarks/results/gpu}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m personafuse.cli bench --model "random:$SHAPE" --encoder "$ENCODER" --dtype bfloat16 \
  --batch-sizes 1,8 --new-tokens 48 --prompt-tokens 128 --repeats 3 --train-steps 3 --out "$OUT"
