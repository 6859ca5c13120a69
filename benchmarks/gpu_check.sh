#!/usr/bin/env bash
# The GPU check, ready for a lent GPU machine (the device tool runs it in the repository root):
#   bash benchmarks/gpu_check.sh            # writes $OUT/gpu-check.json (or ./gpu-check.json) and the log
# Installs the locked environment with the CUDA build of torch when .venv is missing, then runs
# benchmarks/gpu_check.py (training and sampling on CUDA in fp32, fp16 and bf16 against the CPU
# path at fixed seeds; tolerances in its docstring). A few minutes on one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q "torch==$(grep -m1 -oP 'torch==\K[0-9.]+' Makefile)"  # the CUDA wheel from PyPI
  .venv/bin/pip install -q -e '.[test,bench]' --constraint requirements.lock
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
.venv/bin/python benchmarks/gpu_check.py --out "$OUT"/gpu-check.json "$@" 2>&1 | tee "$OUT"/gpu-check.log
exit "${PIPESTATUS[0]}"
