"""A real validation frame with no download: Middlebury 2014 Motorcycle from scikit-image.

``skimage.data.stereo_motorcycle()`` bundles the left and right images of the Middlebury
2014 stereo scene *Motorcycle* (Scharstein et al., GCPR 2014) and the ground-truth
disparity of the left image, downscaled by block means. Its depth and intrinsics follow
from the scene's published calibration (``calib.txt`` of Motorcycle, full resolution
2964 x 2000): ``cam0 = [3979.911 0 1244.772; 0 3979.911 1019.507; 0 0 1]``,
``doffs = 124.343`` px (the difference of the two principal points), ``baseline =
193.001`` mm, disparities between ``vmin = 23`` and ``vmax = 245`` px.

The bundled arrays are checked against it before use: the image must be the full size
divided by one integer factor on both sides (741 x 500: factor 4), and the valid
disparities must lie in ``[vmin, vmax] / factor`` (they span 7.2-59.9 px, so they are
downscaled too; at full scale they would fall below ``vmin``). With that factor ``s``,
``f = 3979.911 / s`` (994.98 px), the principal point maps as a block mean maps pixel
centres, ``c' = (c - (s - 1) / 2) / s`` (310.82, 254.50), ``doffs / s`` and the
disparity are in the same pixels, and ``depth = baseline * f / (disparity + doffs /
s)``: 2.11-5.02 m, a vertical field of view of 28.2 degrees. Pixels without ground truth
(non-finite disparity, 7.3%) are invalid (0).

The frame is for validation only: ``data_gen.py pointclouds --motorcycle`` writes it as
a one-sample folder for ``evaluation.py pointcloud``, and training refuses such a folder.

    python -m datasets.middlebury --show --out motorcycle.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from geometry.camera import focal_to_fov, intrinsics_matrix
from utils.arguments import ArgumentParser
from utils.errors import UserError, run_cli

# calib.txt of Middlebury 2014 "Motorcycle" (full resolution).
MOTORCYCLE_CALIBRATION = {
    "focal": 3979.911,
    "cx": 1244.772,
    "cy": 1019.507,
    "doffs": 124.343,
    "baseline_mm": 193.001,
    "width": 2964,
    "height": 2000,
    "vmin": 23.0,
    "vmax": 245.0,
}


def downscale_factor(height: int, width: int, calibration: dict) -> int:
    """The integer factor the full-resolution frame was divided by to ``height x width``."""
    factor = calibration["width"] / width
    if (
        abs(factor - round(factor)) > 1e-9
        or abs(calibration["height"] / height - factor) > 1e-9
    ):
        raise UserError(
            f"bundled Motorcycle frame is {width}x{height}, not the calibrated "
            f"{calibration['width']}x{calibration['height']} divided by one integer"
        )
    return int(round(factor))


def disparity_to_frame(
    disparity: np.ndarray, calibration: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Depth (metres) and intrinsics of a left-image disparity map at a downscaled size.

    Args:
        disparity: ``(H, W)`` disparity in pixels of this size (non-finite: unknown).
        calibration: full-resolution calibration (keys of :data:`MOTORCYCLE_CALIBRATION`).

    Returns:
        ``depth (H, W)`` float32 metres (0 where unknown) and ``K (3, 3)``.
    """
    height, width = disparity.shape
    factor = downscale_factor(height, width, calibration)
    valid = np.isfinite(disparity)
    low, high = calibration["vmin"] / factor, calibration["vmax"] / factor
    values = disparity[valid]
    if values.size == 0 or values.min() < 0.9 * low or values.max() > 1.1 * high:
        raise UserError(
            f"bundled Motorcycle disparities span {values.min():.1f}-{values.max():.1f} "
            f"px, outside the calibrated {low:.1f}-{high:.1f} px at 1/{factor} scale"
        )
    focal = calibration["focal"] / factor
    # A block mean of `factor` pixels puts the new pixel centre at the old block's centre.
    shift = (factor - 1) / 2.0
    cx = (calibration["cx"] - shift) / factor
    cy = (calibration["cy"] - shift) / factor
    doffs = calibration["doffs"] / factor
    depth = np.zeros(disparity.shape, np.float32)
    depth[valid] = calibration["baseline_mm"] * focal / (values + doffs) / 1000.0
    return depth, intrinsics_matrix(focal, focal, cx, cy)


def motorcycle_frame() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Motorcycle validation frame: ``depth (500, 741)`` float32 metres (0: no
    ground truth), ``K (3, 3)`` and the left ``rgb (500, 741, 3)`` uint8."""
    from skimage.data import stereo_motorcycle

    left, _, disparity = stereo_motorcycle()
    depth, K = disparity_to_frame(
        np.asarray(disparity, np.float64), MOTORCYCLE_CALIBRATION
    )
    return depth, K, np.ascontiguousarray(left)


def main(argv: list[str] | None = None) -> int:
    """``python -m datasets.middlebury --show``: the frame beside its depth."""
    parser = ArgumentParser(
        prog="python -m datasets.middlebury",
        description="Show the Middlebury 2014 Motorcycle validation frame (RGB | depth, "
        "no ground truth black) with its intrinsics.",
    )
    parser.add_argument("--show", action="store_true", help="write the picture")
    parser.add_argument(
        "--out", type=Path, default=Path("motorcycle.png"), help="PNG to write"
    )
    args = parser.parse_args(argv)

    def run() -> int:
        if not args.show:
            parser.print_help()
            return 0
        from utils.io import atomic_write_image

        depth, K, rgb = motorcycle_frame()
        valid = depth > 0
        low, high = float(depth[valid].min()), float(depth[valid].max())
        scaled = ((depth - low) / (high - low) * 255).clip(0, 255).astype(np.uint8)
        colored = cv2.applyColorMap(scaled, cv2.COLORMAP_MAGMA)
        colored[~valid] = 0
        fov = float(focal_to_fov(K[1, 1], depth.shape[0]))
        text = (
            f"fy {K[1, 1]:.1f} px, vertical FOV {fov:.1f} deg, {low:.2f}-{high:.2f} m"
        )
        cv2.putText(colored, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255,) * 3)
        grid = np.concatenate([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), colored], axis=1)
        atomic_write_image(args.out, grid)
        print(f"wrote {args.out} ({text})")
        return 0

    return run_cli(run, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
