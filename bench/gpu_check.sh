#!/usr/bin/env bash
# Every CUDA path of prunekit on a machine with a CUDA GPU, in under 8 minutes (bench/gpu_check.py):
# the Triton kernel tests compiled, bench/kernels.py, CoFi with --kernels triton vs torch, fp16 ONNX
# export on ORT CUDA with latency, and 2-process NCCL fine-tuning. Writes bench/results/gpu_check.md.
#   bash bench/gpu_check.sh [--only kernels,cofi] [--cofi-steps N] [--out PREFIX]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || make venv
exec "$PY" bench/gpu_check.py "$@"
