#!/usr/bin/env bash
# CPU demo of the LeReS point-cloud module (docs/pointcloud.md), no download:
#   procedural interiors (training; held-out test and validation ones with other seeds;
#   clutter, sensor effects, FOV prior of real cameras) and the real Middlebury Motorcycle frame that
#   scikit-image ships (validation only) -> the focal model -> the shift model ->
#   evaluation on the held-out scenes and on the real frame (60-degree start, shifts drawn
#   in [-0.25, 0.8]) -> before/after figures of both.
#   bash scripts/pointcloud_demo.sh
# Each step prints its wall time; progress bars and warnings go to $OUT/stderr.log, whose
# tail is shown if a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/pointcloud_demo}
DATA=${DATA:-data/pointclouds}
TRAIN_SCENES=${TRAIN_SCENES:-2000}
TEST_SCENES=${TEST_SCENES:-200}
VAL_SCENES=${VAL_SCENES:-100}  # seed 2, for scripts/pointcloud_study.py (not used here)
FIGURE=${FIGURE:-$OUT/pointcloud_before_after.png}
PYTHON=${PYTHON:-python}
EXTRA=${EXTRA:-}  # more train_3d.py overrides, e.g. "train.max_steps=10" for a smoke run
mkdir -p "$OUT"
LOG="$OUT/stderr.log"
: > "$LOG"
trap 'echo "pointcloud_demo: a step failed; last lines of $LOG:" >&2; tail -n 5 "$LOG" >&2' ERR
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

stamp "procedural scenes: $TRAIN_SCENES for training (seed 0), $TEST_SCENES held out (seed 1)," \
    "$VAL_SCENES for validation (seed 2)"
$PYTHON data_gen.py pointclouds --procedural "$TRAIN_SCENES" --size 96,128 --seed 0 \
    --out "$DATA/train" 2>>"$LOG" | tail -n 1
$PYTHON data_gen.py pointclouds --procedural "$TEST_SCENES" --size 96,128 --seed 1 \
    --out "$DATA/test" 2>>"$LOG" | tail -n 1
$PYTHON data_gen.py pointclouds --procedural "$VAL_SCENES" --size 96,128 --seed 2 \
    --out "$DATA/val" 2>>"$LOG" | tail -n 1
$PYTHON data_gen.py pointclouds --motorcycle --out "$DATA/motorcycle" 2>>"$LOG" | tail -n 1
train_start=$(date +%s)
for target in focal shift; do
    stamp "training the $target model (configs/pointcloud_$target.yaml)"
    $PYTHON train_3d.py "configs/pointcloud_$target.yaml" --exp "pointcloud_$target" \
        --logdir "$OUT/logs" --overwrite "data.root=$DATA/train" $EXTRA 2>>"$LOG" | tail -n 1
done
stamp "training both models took $(( $(date +%s) - train_start )) s"
for set in test motorcycle; do
    stamp "evaluating on $DATA/$set"
    $PYTHON evaluation.py pointcloud \
        --focal-model "$OUT/logs/pointcloud_focal/checkpoints/best.pt" \
        --shift-model "$OUT/logs/pointcloud_shift/checkpoints/best.pt" \
        --depth "$DATA/$set" --distort-shift=-0.25,0.8 --seed 0 --out "$OUT/eval_$set" \
        2>>"$LOG" | sed -n '/^| metric/,/^$/p'
done
$PYTHON scripts/pointcloud_figure.py --data "$DATA/test" --eval "$OUT/eval_test" \
    --out "$FIGURE" 2>>"$LOG"
$PYTHON scripts/pointcloud_figure.py --data "$DATA/motorcycle" \
    --eval "$OUT/eval_motorcycle" --out "${FIGURE%.png}_motorcycle.png" 2>>"$LOG"
stamp "done"
