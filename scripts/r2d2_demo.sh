#!/usr/bin/env bash
# The R2D2 loss study on the photographs bundled with scikit-image (no download):
#   12 photos -> synthetic training pairs; 6 other photos (held out) -> a demo
#   HPatches-format set; for each variant (configs/r2d2_study_*.yaml: the six rows of the
#   study and their HardNet + Dice combination):
#   Fast-R2D2 trained briefly (configs/r2d2_demo_builtin.yaml + the row's loss keys),
#   then evaluation.py hpatches --preset d2net (MMA over mutual-NN matches); finally a
#   markdown table of MMA@3 per variant next to the study's published numbers.
# Every step resumes or skips what is done: a re-run continues training runs from their
# last checkpoint and re-uses extracted features. Demo-sized by default; scale with the
# variables, e.g.  STEPS=2000 CROP=192 BATCH=8 HP_SIZE=640 bash scripts/r2d2_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-100}              # training steps per variant
CROP=${CROP:-96}                 # training crop (reference: 192)
BATCH=${BATCH:-4}                # batch size (reference: 8)
PRECISION=${PRECISION:-fp32}     # fp32 | bf16 (autocast; not faster at these crop sizes)
HP_SIZE=${HP_SIZE:-256}          # longest side of the demo HPatches images
REL_THR=${REL_THR:-0.7}          # extraction thresholds (published: 0.7 and 0.7)
REP_THR=${REP_THR:-0.7}
DEVICE=${DEVICE:-auto}
DATA=${DATA:-data/r2d2_demo}
LOGS=${LOGS:-logs}
PREFIX=${PREFIX:-r2d2demo}
VARIANTS=${VARIANTS:-"original hardnet dice czekanowski jaccard squared_chord hardnet_dice"}

# 1. Built-in photos: 12 for training (listed 25 times each: one epoch = 300 random
#    pairs), 6 held out for the evaluation set.
python - "$DATA" <<'EOF'
import os, sys
import cv2
from datasets.hpatches_demo import load_photos
HELD_OUT = ("astronaut", "camera", "coffee", "grass", "page", "rocket")
root = sys.argv[1]
train, test = os.path.join(root, "train_photos"), os.path.join(root, "test_photos")
os.makedirs(train, exist_ok=True)
os.makedirs(test, exist_ok=True)
names = []
for name, rgb in load_photos("builtin"):
    folder = test if name in HELD_OUT else train
    path = os.path.join(folder, f"{name}.png")
    if not os.path.isfile(path):
        cv2.imwrite(path + ".tmp.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        os.replace(path + ".tmp.png", path)
    if folder == train:
        names.append(f"{name}.png")
with open(os.path.join(train, "list.txt"), "w") as f:
    f.write("".join(f"{n}\n" for n in names * 25))
print(f"{len(names)} training photos, {len(HELD_OUT)} held out")
EOF

# 2. Demo HPatches sequences (i_* and v_*) from the held-out photos only.
HPATCHES=$DATA/hpatches_$HP_SIZE
python data_gen.py hpatches_demo --images "$DATA/test_photos" \
  --out "$HPATCHES" --max-size "$HP_SIZE"

last_ckpt() { ls "$LOGS/$1/checkpoints"/last_*.pt 2>/dev/null | tail -n 1; }
resume() { if [ -n "$(last_ckpt "$1")" ]; then echo --resume; fi; }
loss_keys() {  # the study row's loss variant, as in configs/r2d2_study_<row>.yaml
  case "$1" in
    original) echo "loss.similarity=cosine loss.reliability=ap" ;;
    hardnet) echo "loss.similarity=cosine loss.reliability=hardnet" ;;
    hardnet_dice) echo "loss.similarity=dice loss.reliability=hardnet" ;;
    *) echo "loss.similarity=$1 loss.reliability=ap" ;;
  esac
}

# 3. Train and evaluate every variant.
for variant in $VARIANTS; do
  exp=${PREFIX}_${variant}
  # shellcheck disable=SC2046
  python train_r2d2.py configs/r2d2_demo_builtin.yaml $(loss_keys "$variant") \
    data.sources.photos.root="$DATA/train_photos" \
    data.sources.photos.list="$DATA/train_photos/list.txt" \
    data.crop="$CROP" train.batch_size="$BATCH" train.max_steps="$STEPS" \
    train.precision="$PRECISION" train.device="$DEVICE" \
    train.save_every="$STEPS" train.val_every="$STEPS" \
    --logdir "$LOGS" --exp "$exp" $(resume "$exp")
  ckpt=$(last_ckpt "$exp")
  # The feature tag names the checkpoint and thresholds, so stale features are never
  # re-used after more training.
  tag=${exp}-$(basename "$ckpt" .pt)-thr${REL_THR}_${REP_THR}
  python evaluation.py hpatches --preset d2net --data "$HPATCHES" \
    --model "$ckpt" --tag "$tag" --device "$DEVICE" \
    extractor_conf.reliability_thr="$REL_THR" \
    extractor_conf.repeatability_thr="$REP_THR" --num-match-plots 1 \
    --out "$DATA/eval/$variant" > /dev/null
done

# 4. SIFT on the same set and protocol, for scale.
python evaluation.py hpatches --preset d2net --data "$HPATCHES" --model sift \
  --num-match-plots 0 --out "$DATA/eval/sift" > /dev/null

# 5. The table: measured MMA@3 per variant next to the study's published numbers.
python - "$DATA" "$STEPS" "$CROP" "$BATCH" "$PRECISION" $VARIANTS sift <<'EOF'
import json, sys
root, steps, crop, batch, precision = sys.argv[1:6]
variants = sys.argv[6:]
PUBLISHED = {"original": "0.700", "hardnet": "0.704", "dice": "0.715",
             "czekanowski": "0.709", "jaccard": "0.706", "squared_chord": "0.664",
             "hardnet_dice": "not published", "sift": "-"}
LABELS = {"original": "original (cosine, AP)", "hardnet": "HardNet reliability",
          "dice": "Dice", "czekanowski": "Czekanowski", "jaccard": "Jaccard",
          "squared_chord": "Squared-chord", "hardnet_dice": "HardNet + Dice",
          "sift": "SIFT (OpenCV), for scale"}
rows, preset, counts = [], None, None
for v in variants:
    s = json.load(open(f"{root}/eval/{v}/summary.json"))
    r = s["results"]
    if v != "sift":
        preset = s["preset"]["name"]
    counts = (s["num_sequences"], s["num_pairs"])
    rows.append(f"| {LABELS.get(v, v)} | {r['all']['mma@3']:.3f} | "
                f"{r['i']['mma@3']:.3f} | {r['v']['mma@3']:.3f} | "
                f"{r['all']['num_features']:.0f} | {r['all']['num_matches']:.0f} | "
                f"{PUBLISHED.get(v, '-')} |")
print(f"Protocol: evaluation.py hpatches --preset d2net ({preset}); demo HPatches set of "
      f"{counts[0]} sequences / {counts[1]} pairs from 6 held-out scikit-image photos.")
print(f"Training: Fast-R2D2 from scratch, {steps} steps, crop {crop}, batch {batch}, "
      f"{precision}, synthetic pairs of 12 other photos (train and test photos disjoint).")
print("| variant | MMA@3 (ours) | MMA@3 i | MMA@3 v | #features | #matches | "
      "published MMA@3 (HPatches) |")
print("|---|---|---|---|---|---|---|")
print("\n".join(rows))
EOF
