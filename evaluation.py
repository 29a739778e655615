"""Evaluate detectors and descriptors: ``python evaluation.py COMMAND --help``.

python evaluation.py synthetic_shapes --checkpoint logs/magicpoint/checkpoints/best.pt
python evaluation.py hpatches --preset superpoint --features sift
python evaluation.py pointcloud --focal-model F.pt --shift-model S.pt --depth data/pc_test
python evaluation.py inversion --checkpoint logs/inv/checkpoints/best.pt --images builtin \
    --model sift --out outputs/inversion --keep 0.05 0.1 0.25 0.5 1.0
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from utils.dispatch import dispatch

COMMANDS = {
    "synthetic_shapes": (
        "evaluators.synthetic_shapes:main",
        "precision-recall, mAP and localisation error on Synthetic Shapes",
    ),
    "hpatches": (
        "evaluators.hpatches:main",
        "HPatches sequences under a named published protocol (preset)",
    ),
    "pointcloud": (
        "evaluators.pointcloud:main",
        "recover focal length and depth shift of depth maps (LeReS); score and write .ply",
    ),
    "inversion": (
        "evaluators.inversion:main",
        "feature inversion: MAE/PSNR/SSIM against mean-image and interpolation baselines",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("evaluation.py", __doc__.split("\n")[0], COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
