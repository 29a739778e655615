"""Generate datasets: ``python data_gen.py COMMAND --help``.

python data_gen.py synthetic_shapes --out data/synthetic_shapes
python data_gen.py hpatches_demo --images builtin --out data/hpatches_demo
python data_gen.py pointclouds --procedural 2000 --size 96,128 --out data/pointclouds
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from utils.dispatch import dispatch

COMMANDS = {
    "synthetic_shapes": (
        "datasets.synthetic_shapes:generate_main",
        "render and cache the Synthetic Shapes dataset (parallel, deterministic)",
    ),
    "hpatches_demo": (
        "datasets.hpatches_demo:main",
        "write HPatches-format sequences from any images (or the built-in photos)",
    ),
    "pointclouds": (
        "datasets.pointcloud_gen:main",
        "depth maps with exact intrinsics for the point-cloud module (datasets, procedural)",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("data_gen.py", __doc__.split("\n")[0], COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
