"""The fast paths of the main job's data equal their plain versions.

The valid mask of a warp (every pixel's pre-image inside the source) against a loop over
pixels; training from the shape cache against drawing on the fly; drawing without torch.
"""

from pathlib import Path

import numpy as np
import torch

from datasets.synthetic_shapes import MAGICPOINT_HOMOGRAPHY, SyntheticShapes
from engine.data import collate
from geometry.homography import (
    HOMOGRAPHY_PRESETS,
    draw_homography,
    points_inside,
    valid_mask,
    warp_points,
)

ROOT = Path(__file__).resolve().parents[1]


def plain_valid_mask(src_shape, H, out_shape):
    """Pixel by pixel: is the pre-image of the pixel centre inside the source image?"""
    H_inv = np.linalg.inv(H)
    mask = np.zeros(out_shape, bool)
    for y in range(out_shape[0]):
        for x in range(out_shape[1]):
            src = warp_points(np.array([[x, y]], np.float64), H_inv)
            mask[y, x] = bool(points_inside(src, src_shape)[0])
    return mask


def test_valid_mask_equals_the_pixel_loop():
    rng = np.random.default_rng(0)
    cases = [
        (np.eye(3), (12, 16), (12, 16)),
        (np.diag([2.0, 1.5, 1.0]), (12, 16), (20, 30)),
    ]
    for preset in (MAGICPOINT_HOMOGRAPHY, HOMOGRAPHY_PRESETS["coco"]):
        for _ in range(4):
            cases.append((draw_homography((24, 32), rng, preset), (24, 32), (24, 32)))
    for H, src_shape, out_shape in cases:
        expected = plain_valid_mask(src_shape, H, out_shape)
        assert np.array_equal(valid_mask(src_shape, H, out_shape), expected)
        # the torch path (batched warps) agrees away from the float32 boundary cases
        torch_mask = valid_mask(src_shape, torch.from_numpy(H)[None], out_shape)[0]
        assert (torch_mask.numpy() != expected).mean() < 0.02
    assert not plain_valid_mask((24, 32), cases[-1][0], (24, 32)).all()


def shapes(cache_dir=None) -> SyntheticShapes:
    conf = {
        "image_size": [64, 96],
        "split_sizes": {"train": 3, "val": 2, "test": 1},
        "cache_dir": cache_dir,
        "augmentation": {
            "photometric": {"enable": True},
            "homographic": {"enable": True},
        },
    }
    return SyntheticShapes(conf, "train")


def test_cached_shapes_train_exactly_as_drawn_ones(tmp_path):
    from datasets.synthetic_shapes import generate_main

    args = ["--out", str(tmp_path), "--size", "64", "96", "--splits", "train"]
    args += ["--split-sizes", "train=3", "--shard-size", "2", "--workers", "1"]
    assert generate_main(args) == 0
    drawn, cached = shapes(), shapes(str(tmp_path))
    for epoch in (0, 1):
        drawn.set_epoch(epoch)
        cached.set_epoch(epoch)
        a = collate([drawn[i] for i in range(len(drawn))])
        b = collate([cached[i] for i in range(len(cached))])
        for key in ("image", "keypoint_map", "valid_mask"):
            assert torch.equal(a[key], b[key]), key
        assert all(torch.equal(p, q) for p, q in zip(a["keypoints"], b["keypoints"]))
    assert not torch.equal(a["image"], collate([drawn[i] for i in range(3)])["image"])


def test_drawing_shapes_starts_without_torch():
    """data_gen.py synthetic_shapes's start-up is part of its speed: no torch import."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from datasets.synthetic_shapes import PRIMITIVES, content_rng, generate_main\n"
        "from datasets.synthetic_shapes import generate_sample\n"
        "import data_gen\n"
        "generate_sample('draw_cube', content_rng(0, 'draw_cube', 'train', 0), (32, 48))\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-500:]
