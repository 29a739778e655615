"""Before/after picture of one cloud corrected by ``evaluation.py pointcloud``.

Top views (x to the right, depth up) of one evaluated depth map (a held-out procedural
scene, or the real Middlebury frame): the cloud as a depth network's normalised output
unprojected with the 60-degree guess (before), the same depth corrected with the
recovered shift and focal (after), and the ground truth, each divided by its median depth
so the shapes compare. The depth map is the first one of the evaluation whose true
vertical FOV differs from the starting guess by more than ``--min-fov-gap`` degrees (so
the focal correction is visible), not a hand-picked one.

    python scripts/pointcloud_figure.py --data data/pointclouds/test \
        --eval outputs/pointcloud_demo/eval --out docs/pointcloud_before_after.png
    python scripts/pointcloud_figure.py --data data/pointclouds/motorcycle \
        --eval outputs/pointcloud_demo/eval_motorcycle --out motorcycle_before_after.png
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.pointcloud import load_generated  # noqa: E402
from geometry.camera import (  # noqa: E402
    affine_depth_with_shift,
    depth_to_points,
    fov_to_focal,
    intrinsics_matrix,
    normalize_depth,
    valid_depth_mask,
)
from utils.arguments import ArgumentParser  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import atomic_write  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--data", required=True, help="data_gen.py pointclouds folder")
    parser.add_argument("--eval", required=True, help="evaluation.py pointcloud --out")
    parser.add_argument("--min-fov-gap", type=float, default=15.0, help="degrees")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)

    def run() -> int:
        import cv2
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        summary = json.loads((Path(args.eval) / "summary.json").read_text())
        rows = json.loads((Path(args.eval) / "predictions.json").read_text())
        fov_init = summary["fov_init"]
        row = next(
            (r for r in rows if abs(r["true_fov"] - fov_init) > args.min_fov_gap), None
        )
        if row is None:
            raise UserError(
                f"no scene's FOV differs from {fov_init} by {args.min_fov_gap}"
            )
        depth, K = load_generated(Path(args.data) / "depths" / f"{row['name']}.npz")
        rgb_path = Path(args.data) / "rgb" / f"{row['name']}.jpg"
        rgb = cv2.cvtColor(cv2.imread(str(rgb_path)), cv2.COLOR_BGR2RGB)
        valid = valid_depth_mask(depth)
        height, width = depth.shape
        affine, _ = affine_depth_with_shift(depth, valid, row["true_shift"])
        normalised = normalize_depth(affine, valid).astype(np.float64)
        centre = ((width - 1) / 2, (height - 1) / 2)
        f0 = fov_to_focal(fov_init, height)
        clouds = [
            (
                f"before: {fov_init:g} deg, no shift\n"
                f"(FOV error {row['baseline_fov_error']:.1f} deg, "
                f"shift error {row['baseline_shift_error']:.2f})",
                depth_to_points(normalised, intrinsics_matrix(f0, f0, *centre)),
            ),
            (
                f"after: FOV {row['fov']:.1f} deg, shift {row['shift']:+.2f}\n"
                f"(FOV error {row['fov_error']:.1f} deg, "
                f"shift error {row['shift_error']:.2f})",
                depth_to_points(
                    normalised - row["shift"],
                    intrinsics_matrix(row["focal"], row["focal"], *centre),
                ),
            ),
            (
                f"ground truth: FOV {row['true_fov']:.1f} deg\n"
                f"(true shift {row['true_shift']:+.2f})",
                depth_to_points(depth.astype(np.float64), K),
            ),
        ]
        # At most 40k points per panel (a real frame has hundreds of thousands).
        keep = np.flatnonzero(valid)
        keep = keep[:: max(1, len(keep) // 40000)]
        colors = rgb.reshape(-1, 3)[keep] / 255.0
        figure, axes = plt.subplots(1, 3, figsize=(9, 3.4))
        for axis, (title, points) in zip(axes, clouds):
            points = points.reshape(-1, 3)[keep]
            points = points / np.median(points[:, 2])
            axis.scatter(points[:, 0], points[:, 2], s=0.3, c=colors, linewidths=0)
            axis.set_title(title, fontsize=8)
            axis.set_aspect("equal")
            axis.set_xlabel("x / median depth", fontsize=7)
            axis.tick_params(labelsize=6)
        axes[0].set_ylabel("depth / median depth", fontsize=7)
        figure.suptitle(
            f"{Path(args.data).name}/{row['name']} seen from above", fontsize=9
        )
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=72)
        plt.close(figure)
        atomic_write(args.out, lambda f: f.write(buffer.getvalue()))
        print(
            f"wrote {args.out} ({len(buffer.getvalue()) // 1024} KB, scene {row['name']})"
        )
        return 0

    return run_cli(run, "pointcloud_figure.py")


if __name__ == "__main__":
    sys.exit(main())
