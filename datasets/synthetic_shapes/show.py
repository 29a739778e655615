"""Synthetic Shapes: ``python -m datasets.synthetic_shapes --show``, a grid of samples with their
keypoints, to check the data by eye.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np

from datasets.synthetic_shapes.dataset import SyntheticShapes
from datasets.synthetic_shapes.raster import SPLITS, Array
from utils.arguments import ArgumentParser
from utils.errors import UserError, run_cli


def render_grid(
    dataset: SyntheticShapes, per_primitive: int = 4, scale: int = 2
) -> Array:
    """Grid of samples (one row per primitive) with keypoints drawn as red circles.

    Returns:
        uint8 ``(rows * H * scale, cols * W * scale, 3)`` BGR image.
    """
    h, w = dataset.image_size
    rows = []
    for p, _ in enumerate(dataset.primitives):
        tiles = []
        for k in range(per_primitive):
            sample = dataset[p * dataset.split_size + k % dataset.split_size]
            image = (sample["image"][0].numpy() * 255).round().astype(np.uint8)
            tile = cv2.cvtColor(
                cv2.resize(
                    image, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST
                ),
                cv2.COLOR_GRAY2BGR,
            )
            for x, y in sample["keypoints"].numpy():
                centre = (
                    int(round((x + 0.5) * scale - 0.5)),
                    int(round((y + 0.5) * scale - 0.5)),
                )
                cv2.circle(tile, centre, 3, (0, 0, 255), 1, cv2.LINE_AA)
            cv2.rectangle(tile, (0, 0), (w * scale - 1, h * scale - 1), (80, 80, 80), 1)
            tiles.append(tile)
        row = np.concatenate(tiles, 1)
        draw_label(row, sample["primitive"])
        rows.append(row)
    return np.concatenate(rows, 0)


def draw_label(image: Array, text: str, origin: tuple[int, int] = (2, 2)) -> None:
    """Write ``text`` in place at the top-left of a BGR ``(H, W, 3)`` uint8 image.

    The text sits on a black strip, so it reads on any background (the backgrounds of
    Synthetic Shapes run from black to white).
    """
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    (width, height), baseline = cv2.getTextSize(text, font, scale, thickness)
    x, y = origin
    cv2.rectangle(
        image, (x, y), (x + width + 4, y + height + baseline + 3), (0, 0, 0), -1
    )
    cv2.putText(
        image,
        text,
        (x + 2, y + height + 2),
        font,
        scale,
        (0, 255, 255),
        thickness,
        cv2.LINE_AA,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m datasets.synthetic_shapes --show``: write a PNG grid of samples."""
    parser = ArgumentParser(
        prog="python -m datasets.synthetic_shapes",
        description="Show Synthetic Shapes samples (one row per primitive).",
    )
    parser.add_argument("--show", action="store_true", help="write the sample grid")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("synthetic_shapes.png"),
        help="PNG file of the grid",
    )
    parser.add_argument(
        "--split", default="val", choices=SPLITS, help="split drawn from"
    )
    parser.add_argument(
        "--per-primitive", type=int, default=4, help="samples per row (primitive)"
    )
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        default=[120, 160],
        metavar=("H", "W"),
        help="image height and width in pixels",
    )
    parser.add_argument("--augment", action="store_true", help="enable augmentation")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed of the dataset"
    )
    args = parser.parse_args(argv)

    def run() -> int:
        if not args.show:
            parser.print_help()
            return 0
        enable = {"enable": args.augment}
        conf = {
            "image_size": args.size,
            "seed": args.seed,
            "split_sizes": {args.split: max(args.per_primitive, 1)},
            "augmentation": {
                "splits": [args.split],
                "photometric": enable,
                "homographic": enable,
            },
        }
        grid = render_grid(SyntheticShapes(conf, args.split), args.per_primitive)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp.png")
        if not cv2.imwrite(str(tmp), grid):
            raise UserError(f"could not write {args.out}")
        os.replace(tmp, args.out)
        print(f"wrote {args.out}")
        return 0

    return run_cli(run, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
