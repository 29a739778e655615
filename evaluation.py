"""Evaluate detectors and descriptors: ``python evaluation.py COMMAND --help``.

python evaluation.py synthetic_shapes --checkpoint logs/magicpoint/checkpoints/best.pt
python evaluation.py hpatches --preset superpoint --features sift
python evaluation.py pointcloud --focal-model F.pt --shift-model S.pt --depth data/pc_test
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
}


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("evaluation.py", __doc__.split("\n")[0], COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
