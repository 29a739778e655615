#!/usr/bin/env bash
# The README's main job: MagicPoint trained on Synthetic Shapes, then evaluated against
# OpenCV's Harris, Shi-Tomasi and FAST on the clean and noisy test sets.
# The recipe follows the machine (scripts/main_job_recipe.py says which and why): the
# reference recipe on a CUDA GPU; on a CPU, bf16 where it is native (AMX, or AVX512-BF16
# without AMX) and fp32 elsewhere, each sized to finish within an hour on 2 cores.
# CONFIG=... chooses another. Steps:
#   1. draw the training and validation shapes once into a cache (DATA; skipped when there),
#   2. train from it, augmenting every epoch anew (a second run resumes where it stopped),
#   3. evaluate best.pt on the clean and noisy test sets with the three baselines.
#   bash scripts/main_job.sh
#   DATA=/tmp/shapes EXTRA="train.max_steps=4 data.split_sizes.train=64" \
#       EVAL_EXTRA="--num-images 5" bash scripts/main_job.sh  # smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
LOGS=${LOGS:-logs}
EXTRA=${EXTRA:-}            # train_superpoint.py overrides (data.* ones also shape the cache)
EVAL_EXTRA=${EVAL_EXTRA:-}  # evaluation.py options, e.g. "--num-images 20"
EVAL_WORKERS=${EVAL_WORKERS:-2}  # processes drawing test images and scoring the baselines
"$PYTHON" -c "from engine.devices import cpu_line; print(cpu_line())"
# shellcheck disable=SC2086
choice=$("$PYTHON" scripts/main_job_recipe.py ${CONFIG:+--config "$CONFIG"} $EXTRA)
IFS=$'\t' read -r CONFIG why cache data_args <<< "$choice"
DATA=${DATA:-$cache}
EXP=$(basename "$CONFIG" .yaml)
OUT=${OUT:-outputs/eval_$EXP}
echo "main job: $CONFIG (run folder $LOGS/$EXP, evaluation in $OUT, shapes in $DATA)"
echo "main job: why: $why"
start=$(date +%s)
# shellcheck disable=SC2086
"$PYTHON" data_gen.py synthetic_shapes --out "$DATA" $data_args
drawn=$(date +%s)
RESUME=""
if ls "$LOGS/$EXP/checkpoints"/last_*.pt >/dev/null 2>&1; then RESUME=--resume; fi
# shellcheck disable=SC2086
"$PYTHON" train_superpoint.py "$CONFIG" --logdir "$LOGS" $RESUME "data.cache_dir=$DATA" $EXTRA
trained=$(date +%s)
# shellcheck disable=SC2086
"$PYTHON" evaluation.py synthetic_shapes --checkpoint "$LOGS/$EXP/checkpoints/best.pt" \
    --methods harris shi fast --out "$OUT" --workers "$EVAL_WORKERS" $EVAL_EXTRA
done_at=$(date +%s)
echo "main job: shapes $((drawn - start)) s, training $((trained - drawn)) s," \
    "evaluation $((done_at - trained)) s, total $((done_at - start)) s"
