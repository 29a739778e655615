#!/usr/bin/env bash
# The CUDA path, checked on a real GPU (see benchmarks/gpu_check.py for what runs):
# MagicPoint, SuperPoint and R2D2 training in bf16/fp16, DDP with NCCL when 2+ GPUs are
# visible, homographic adaptation throughput (240x320, 100 homographies) with the projected
# time for COCO train2014, and SuperPoint / R2D2 extraction speed. Writes OUT/gpu_check.md.
#   bash scripts/gpu_check.sh                       # on a GPU machine
#   bash scripts/gpu_check.sh --device cpu --tiny   # checks the script itself on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m benchmarks.gpu_check "$@"
