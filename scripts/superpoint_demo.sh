#!/usr/bin/env bash
# The whole SuperPoint recipe on the photos bundled with scikit-image (no download):
#   MagicPoint on Synthetic Shapes -> homographic adaptation (HA) of the photos ->
#   MagicPoint on the HA labels -> HA again -> SuperPoint joint training (each round starting
#   from the previous round's weights) ->
#   HPatches-format demo evaluation (superpoint preset), numbers printed.
# Every step resumes: a re-run continues training runs from their last checkpoint and the
# HA export skips images already labelled. The real-image step counts below are demo-sized
# (the published recipe is in configs/*_coco*.yaml); scale them with the variables, e.g.
#   MP_STEPS=1000 SP_STEPS=1000 NUM_H=100 bash scripts/superpoint_demo.sh
# Step 0 trains MagicPoint on Synthetic Shapes with SHAPES_CONFIG (default
# configs/magicpoint_shapes_cpu.yaml, the main job's recipe for CPUs with AMX, sized for
# about an hour on 2 cores; scripts/main_job_recipe.py names the one that suits this
# machine); MAGICPOINT=path/to/checkpoint.pt starts from an already trained MagicPoint
# instead (e.g. logs/magicpoint_shapes_cpu/checkpoints/best.pt) and skips it.
set -euo pipefail
cd "$(dirname "$0")/.."

SHAPES_CONFIG=${SHAPES_CONFIG:-configs/magicpoint_shapes_cpu.yaml}  # MagicPoint, synthetic
MP_STEPS=${MP_STEPS:-200}            # MagicPoint on HA labels (one round, fine-tuning)
SP_STEPS=${SP_STEPS:-300}            # SuperPoint joint training
NUM_H=${NUM_H:-100}                  # homographies per image in HA
HP_SEQUENCES=${HP_SEQUENCES:-}       # demo HPatches sequences per kind (default: all 18)
DEVICE=${DEVICE:-auto}
PYTHON=${PYTHON:-python}               # interpreter (e.g. a virtualenv's)
LOGS=${LOGS:-logs}
DATA=${DATA:-data/superpoint_demo}
PREFIX=${PREFIX:-demo}

mkdir -p "$DATA"
last_ckpt() { ls "$LOGS/$1/checkpoints"/last_*.pt 2>/dev/null | tail -n 1; }
resume() { if [ -n "$(last_ckpt "$1")" ]; then echo --resume; fi; }

# 0. MagicPoint on Synthetic Shapes, as long as its config says: a detector trained for only
#    a few hundred steps still predicts "no keypoint" everywhere and HA would find nothing.
EXP0=${PREFIX}_magicpoint_shapes
MAGICPOINT=${MAGICPOINT:-}
if [ -z "$MAGICPOINT" ]; then
  "$PYTHON" train_superpoint.py "$SHAPES_CONFIG" train.device="$DEVICE" \
    --logdir "$LOGS" --exp "$EXP0" $(resume "$EXP0")
  MAGICPOINT="$LOGS/$EXP0/checkpoints/best.pt"
fi

# The real-image rounds fine-tune from the previous detector (train.init_weights), so they
# keep its network shape (e.g. the half-width CPU MagicPoint of the main job).
ARCH=$("$PYTHON" -m models.weights "$MAGICPOINT")

# 1. HA labels of the built-in photos with the synthetic MagicPoint.
"$PYTHON" export.py homography_adaptation configs/magicpoint_coco_export.yaml \
  data.layout=folder export.num_homographies="$NUM_H" export.device="$DEVICE" \
  --images builtin --checkpoint "$MAGICPOINT" --out "$DATA/ha_round1"

# 2. MagicPoint trained on those labels (augmented real images).
EXP1=${PREFIX}_magicpoint_round1
"$PYTHON" train_superpoint.py configs/magicpoint_coco_train.yaml \
  data.root=builtin data.layout=folder data.labels_dir="$DATA/ha_round1" \
  train.max_steps="$MP_STEPS" train.batch_size=8 train.num_workers=2 \
  train.val_every=100 train.save_every=100 train.val_batches=2 train.device="$DEVICE" \
  train.init_weights="$MAGICPOINT" $ARCH \
  --logdir "$LOGS" --exp "$EXP1" $(resume "$EXP1")

# 3. HA labels again, with the round-1 MagicPoint.
"$PYTHON" export.py homography_adaptation configs/magicpoint_coco_export.yaml \
  data.layout=folder export.num_homographies="$NUM_H" export.device="$DEVICE" \
  --images builtin --checkpoint "$(last_ckpt "$EXP1")" --out "$DATA/ha_round2"

# 4. SuperPoint joint training on warped pairs with the round-2 labels.
EXP2=${PREFIX}_superpoint
"$PYTHON" train_superpoint.py configs/superpoint_coco.yaml \
  data.root=builtin data.layout=folder data.labels_dir="$DATA/ha_round2" \
  train.max_steps="$SP_STEPS" train.batch_size=4 train.num_workers=2 \
  train.val_every=100 train.save_every=100 train.val_batches=2 train.device="$DEVICE" \
  train.init_weights="$(last_ckpt "$EXP1")" $ARCH \
  --logdir "$LOGS" --exp "$EXP2" $(resume "$EXP2")

# 5. HPatches-format demo sequences from the same photos, then the superpoint protocol.
if [ ! -d "$DATA/hpatches_demo" ]; then
  "$PYTHON" data_gen.py hpatches_demo --images builtin --out "$DATA/hpatches_demo" \
    ${HP_SEQUENCES:+--num-sequences "$HP_SEQUENCES"}
fi
"$PYTHON" evaluation.py hpatches --preset superpoint --data "$DATA/hpatches_demo" \
  --model "$(last_ckpt "$EXP2")" --tag "${PREFIX}_superpoint" \
  --out "$DATA/eval_superpoint" --device "$DEVICE"
