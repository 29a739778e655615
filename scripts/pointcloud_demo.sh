#!/usr/bin/env bash
# CPU demo of the LeReS point-cloud module (README, "Point-cloud module"), no download:
#   procedural scenes (training, and held-out ones with another seed) -> the focal model ->
#   the shift model -> evaluation on the held-out scenes (60-degree start, shifts drawn in
#   [-0.25, 0.8]) -> the before/after figure.
# Training took 924 s on an idle 2-core AMD EPYC Zen 4 (focal 728 s, shift 196 s); the
# scenes about 4 minutes more:
#   bash scripts/pointcloud_demo.sh
# Progress bars and warnings go to $OUT/stderr.log; its tail is shown if a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/pointcloud_demo}
DATA=${DATA:-data/pointclouds}
TRAIN_SCENES=${TRAIN_SCENES:-2000}
TEST_SCENES=${TEST_SCENES:-200}
FIGURE=${FIGURE:-$OUT/pointcloud_before_after.png}
PYTHON=${PYTHON:-python}
EXTRA=${EXTRA:-}  # more train_3d.py overrides, e.g. "train.max_steps=10" for a smoke run
mkdir -p "$OUT"
LOG="$OUT/stderr.log"
: > "$LOG"
trap 'echo "pointcloud_demo: a step failed; last lines of $LOG:" >&2; tail -n 5 "$LOG" >&2' ERR
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

stamp "procedural scenes: $TRAIN_SCENES for training (seed 0), $TEST_SCENES held out (seed 1)"
$PYTHON data_gen.py pointclouds --procedural "$TRAIN_SCENES" --size 96,128 --seed 0 \
    --out "$DATA/train" 2>>"$LOG" | tail -n 1
$PYTHON data_gen.py pointclouds --procedural "$TEST_SCENES" --size 96,128 --seed 1 \
    --out "$DATA/test" 2>>"$LOG" | tail -n 1
train_start=$(date +%s)
for target in focal shift; do
    stamp "training the $target model (configs/pointcloud_$target.yaml)"
    $PYTHON train_3d.py "configs/pointcloud_$target.yaml" --exp "pointcloud_$target" \
        --logdir "$OUT/logs" --overwrite "data.root=$DATA/train" $EXTRA 2>>"$LOG" | tail -n 1
done
stamp "training both models took $(( $(date +%s) - train_start )) s"
stamp "evaluating on the $TEST_SCENES held-out scenes"
$PYTHON evaluation.py pointcloud \
    --focal-model "$OUT/logs/pointcloud_focal/checkpoints/best.pt" \
    --shift-model "$OUT/logs/pointcloud_shift/checkpoints/best.pt" \
    --depth "$DATA/test" --distort-shift=-0.25,0.8 --seed 0 --out "$OUT/eval" \
    2>>"$LOG" | tail -n 11
$PYTHON scripts/pointcloud_figure.py --data "$DATA/test" --eval "$OUT/eval" \
    --out "$FIGURE" 2>>"$LOG"
stamp "done"
