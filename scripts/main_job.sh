#!/usr/bin/env bash
# The README's main job: MagicPoint trained on Synthetic Shapes generated on the fly, then
# evaluated against OpenCV's Harris, Shi-Tomasi and FAST on the clean and noisy test sets.
# The recipe follows the CPU: configs/magicpoint_shapes_cpu.yaml (bf16, half width) where bf16
# runs on AMX tiles, configs/magicpoint_shapes_avx2.yaml (fp32, quarter width) elsewhere,
# including AVX512-BF16 without AMX (AMD Zen 4), where the half-width bf16 step is 1.35x
# slower than on AMX and would take the job past an hour; CONFIG=... chooses another. Both
# take under an hour on 2 cores (README, "Main job"). A second run resumes the training
# where it stopped and re-evaluates.
#   bash scripts/main_job.sh
#   EXTRA="train.max_steps=4" EVAL_EXTRA="--num-images 5" bash scripts/main_job.sh  # smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
LOGS=${LOGS:-logs}
EXTRA=${EXTRA:-}            # train_superpoint.py overrides
EVAL_EXTRA=${EVAL_EXTRA:-}  # evaluation.py options, e.g. "--num-images 20"
if [ -z "${CONFIG:-}" ]; then
  if "$PYTHON" -c "from engine.devices import cpu_has_amx_bf16 as a; raise SystemExit(not a())"; then
    CONFIG=configs/magicpoint_shapes_cpu.yaml
  else
    CONFIG=configs/magicpoint_shapes_avx2.yaml
  fi
fi
EXP=$(basename "$CONFIG" .yaml)
OUT=${OUT:-outputs/eval_$EXP}
"$PYTHON" -c "from engine.devices import cpu_line; print(cpu_line())"
echo "main job: $CONFIG (run folder $LOGS/$EXP, evaluation in $OUT)"
RESUME=""
if ls "$LOGS/$EXP/checkpoints"/last_*.pt >/dev/null 2>&1; then RESUME=--resume; fi
start=$(date +%s)
# shellcheck disable=SC2086
"$PYTHON" train_superpoint.py "$CONFIG" --logdir "$LOGS" $RESUME $EXTRA
trained=$(date +%s)
# shellcheck disable=SC2086
"$PYTHON" evaluation.py synthetic_shapes --checkpoint "$LOGS/$EXP/checkpoints/best.pt" \
    --methods harris shi fast --out "$OUT" $EVAL_EXTRA
done_at=$(date +%s)
echo "main job: training $((trained - start)) s, evaluation $((done_at - trained)) s"
