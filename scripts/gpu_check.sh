#!/usr/bin/env bash
# The CUDA path, end to end and strict (benchmarks/gpu_check.py says what runs): every
# train_*.py in bf16 and fp16, --resume, DDP through torchrun, homographic adaptation sharded
# with torchrun, extract.py, tracking, export.py reconstruct and every evaluation.py
# sub-command on the GPU, each step with its own timeout and checks. Writes OUT/gpu_check.json
# and OUT/gpu_check.md (per-step status, time, images/s against the CPU); exits 1 naming the
# failed steps.
#   bash scripts/gpu_check.sh                       # on a GPU machine (~10 minutes)
#   bash scripts/gpu_check.sh --only 'ddp_*'        # some steps and what they need
#   bash scripts/gpu_check.sh --device cpu --tiny   # checks the script itself on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m benchmarks.gpu_check "$@"
