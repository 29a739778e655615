"""HPatches evaluation: every published protocol as a named preset, from cached features.

Modules: ``presets`` (the protocols), ``features`` (reading feature files), ``metrics`` (pure
metric functions), ``scoring`` (one pair under a preset), ``summary``, ``caches`` (D2-Net result
files), ``outputs`` (table, JSON, plots) and ``driver`` (extraction, the loop and the command).

``evaluation.py hpatches --data DIR --preset NAME --features TAG`` scores features already
written next to the images (``<seq>/<k>.ppm.<TAG>``, see ``extract.py``); with
``--model sift|orb|CKPT`` the features are first extracted with the preset's image
preprocessing into ``<TAG> = <model>-<preset>`` files (``<model>`` names a checkpoint's
run, e.g. ``<run>-best``). A file is reused only when its provenance record (weights hash,
options, preset, image size; see ``datasets.features``) matches, so re-scoring never
re-extracts and another model's files are never scored by mistake. Presets (see
:data:`PRESETS`; ``--list-presets``):

- ``superpoint``: the SuperPoint paper / pytorch-superpoint protocol. All sequences,
  gray images cropped to the 3:4 aspect ratio (top-left) and resized to 240x320,
  top 1000 keypoints; repeatability@3px and MLE, homography accuracy at 1/3/5 px
  (cross-check matching, OpenCV RANSAC, mean error of the 4 warped corners), NN mAP
  (two-way NN, descriptor distance < 1.2), matching score.
- ``superpoint480``: the same at 480x640 with NMS 8.
- ``d2net``: D2-Net/R2D2. 108 sequences (8 high-resolution ones dropped), full
  resolution, the method's own keypoints; MMA at 1..10 px of mutual-NN matches overall,
  on i and on v; mean #features and #matches.
- ``gluefactory``: glue-factory. 108 sequences, short side 480, 1024 keypoints, mutual
  NN; homography AUC at 1/3/5 px (weighted DLT and robust estimation) and precision at
  1/3 px.

Choices made where the references are ambiguous or need a library we do not use are
recorded in each preset (``labels``, ``ransac_*``) and in the output JSON; a ``key=value``
override changes a field and renames the preset (``superpoint[labels=ransac]``), so a
number always names its protocol. Outputs (``--out``): ``pairs.json`` (every metric of
every pair), ``summary.json`` (overall, i and v, with the full preset), ``results.md``
(markdown table), PNG plots, and for ``d2net`` a D2-Net-format ``<tag>.npy`` cache;
``--compare NAME=FILE.npy`` adds published D2-Net caches to the MMA plot and table.
"""

from evaluators.hpatches.caches import read_d2net_cache, write_d2net_cache
from evaluators.hpatches.driver import EvalResult, evaluate, main
from evaluators.hpatches.presets import PRESETS, Preset, apply_overrides

__all__ = [
    "PRESETS",
    "EvalResult",
    "Preset",
    "apply_overrides",
    "evaluate",
    "main",
    "read_d2net_cache",
    "write_d2net_cache",
]
