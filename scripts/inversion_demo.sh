#!/usr/bin/env bash
# Feature inversion on the photographs bundled with scikit-image (no download, CPU):
#   1. the photographs as PNGs: training ones and the held-out ones
#      (datasets.inversion_sources.BUILTIN_HELD_OUT) in separate folders;
#   2. the repository's own model: Fast-R2D2 trained briefly on the training photographs
#      (train_r2d2.py, configs/r2d2_demo_builtin.yaml);
#   3. SIFT and R2D2 features of every photograph into extract.py files;
#   4. for each feature type: the coarse network (train_reconstruct.py,
#      configs/inversion_demo.yaml), then the GAN refiner over it (train_refine.py,
#      configs/refine_demo.yaml);
#   5. evaluation.py inversion on the held-out photographs for every kept fraction in KEEP,
#      against the mean-image and colour-interpolation baselines; the tables are printed.
# Every step resumes or skips what is done (training continues from its last checkpoint,
# finished feature files are kept). Scale with the variables, e.g.
#   COARSE_STEPS=5000 REFINE_STEPS=2000 bash scripts/inversion_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
DATA=${DATA:-data/inversion_demo}
LOGS=${LOGS:-logs}
OUT=${OUT:-outputs/inversion_demo}
PREFIX=${PREFIX:-invdemo}
FEATURES=${FEATURES:-"sift r2d2"}   # r2d2 = the Fast-R2D2 of step 2
R2D2_STEPS=${R2D2_STEPS:-60}         # Fast-R2D2 training steps (crop 64, batch 4)
COARSE_STEPS=${COARSE_STEPS:-1000}
REFINE_STEPS=${REFINE_STEPS:-300}
MAX_SIZE=${MAX_SIZE:-640}            # features extracted with the long side <= MAX_SIZE
TOP_K=${TOP_K:-2000}                 # keypoints per feature file
KEEP=${KEEP:-"0.05 0.1 0.25 0.5 1.0"}
FIGURE=${FIGURE:-}                   # e.g. outputs/inversion_demo/grid.png: a small figure of
FIGURE_KEEP=${FIGURE_KEEP:-0.25}     # the FIGURE_FEATURES grid at this kept fraction
FIGURE_FEATURES=${FIGURE_FEATURES:-sift}
PRECISION=${PRECISION:-auto}
DEVICE=${DEVICE:-cpu}
# Extra key=value overrides of the two inversion trainings (tests shrink the networks).
COARSE_EXTRA=${COARSE_EXTRA:-}
REFINE_EXTRA=${REFINE_EXTRA:-}

last_ckpt() { ls "$LOGS/$1/checkpoints"/last_*.pt 2>/dev/null | tail -n 1; }
resume() { if [ -n "$(last_ckpt "$1")" ]; then echo --resume; fi; }
PHOTOS=$DATA/photos

# 1. The photographs, split by name.
$PYTHON -m datasets.inversion --export-builtin "$PHOTOS"

# 2. Fast-R2D2 on synthetic pairs of the training photographs (each listed 25 times).
ls "$PHOTOS/train" | grep '\.png$' | awk '{for (i = 0; i < 25; i++) print}' \
  > "$PHOTOS/train/r2d2_pairs.txt"
R2D2_EXP=${PREFIX}_r2d2_net
# shellcheck disable=SC2046
$PYTHON train_r2d2.py configs/r2d2_demo_builtin.yaml \
  data.sources.photos.root="$PHOTOS/train" \
  data.sources.photos.list="$PHOTOS/train/r2d2_pairs.txt" \
  data.crop=64 train.batch_size=4 train.max_steps="$R2D2_STEPS" \
  train.save_every="$R2D2_STEPS" train.val_every="$R2D2_STEPS" \
  train.precision=fp32 train.device="$DEVICE" \
  --logdir "$LOGS" --exp "$R2D2_EXP" $(resume "$R2D2_EXP")
R2D2_CKPT=$(last_ckpt "$R2D2_EXP")

# 3. Features of every photograph (train and test), long side <= MAX_SIZE. A briefly
#    trained R2D2 is not confident yet: its detection thresholds are relaxed to 0.
$PYTHON extract.py --model sift --images "$PHOTOS" --max-size "$MAX_SIZE" \
  --top-k "$TOP_K" --tag sift
$PYTHON extract.py --model "$R2D2_CKPT" --images "$PHOTOS" --max-size "$MAX_SIZE" \
  --top-k "$TOP_K" --tag r2d2 --device "$DEVICE" \
  reliability_thr=0 repeatability_thr=0

# 4-5. Coarse network, refiner and evaluation per feature type.
for tag in $FEATURES; do
  coarse=${PREFIX}_${tag}_coarse
  refine=${PREFIX}_${tag}_refine
  common=(data.images="$PHOTOS/train" data.features="$tag"
          train.precision="$PRECISION" train.device="$DEVICE")
  # shellcheck disable=SC2046,SC2086
  $PYTHON train_reconstruct.py configs/inversion_demo.yaml "${common[@]}" \
    train.max_steps="$COARSE_STEPS" $COARSE_EXTRA \
    --logdir "$LOGS" --exp "$coarse" $(resume "$coarse")
  coarse_ckpt=$(last_ckpt "$coarse")
  # shellcheck disable=SC2046,SC2086
  $PYTHON train_refine.py configs/refine_demo.yaml "${common[@]}" \
    model.coarse_checkpoint="$coarse_ckpt" train.max_steps="$REFINE_STEPS" $REFINE_EXTRA \
    --logdir "$LOGS" --exp "$refine" $(resume "$refine")
  # shellcheck disable=SC2086
  $PYTHON evaluation.py inversion --checkpoint "$coarse_ckpt" \
    --refiner "$(last_ckpt "$refine")" --images "$PHOTOS/test" --features "$tag" \
    --train-images "$PHOTOS/train" --keep $KEEP --out "$OUT/$tag" --device "$DEVICE"
done

if [ -n "$FIGURE" ]; then
  $PYTHON - "$OUT/$FIGURE_FEATURES/grid_keep${FIGURE_KEEP}.png" "$FIGURE" <<'EOF'
import os, sys
import cv2
grid = cv2.imread(sys.argv[1])
# Header strip plus the first three of the five test images, 640 px wide (< 200 KB).
rows = grid[: 22 + 3 * (grid.shape[0] - 22) // 5]
small = cv2.resize(rows, (640, round(rows.shape[0] * 640 / rows.shape[1])),
                   interpolation=cv2.INTER_AREA)
os.makedirs(os.path.dirname(sys.argv[2]) or ".", exist_ok=True)
cv2.imwrite(sys.argv[2], small, [cv2.IMWRITE_PNG_COMPRESSION, 9])
print(f"wrote {sys.argv[2]} ({os.path.getsize(sys.argv[2]) // 1024} KB)")
EOF
fi

for tag in $FEATURES; do
  echo
  echo "### $tag features"
  cat "$OUT/$tag/results.md"
done
