"""Tests of homographic and photometric augmentation (datasets/augmentation.py, photometric.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datasets.augmentation import homographic_augment, keypoint_map
from datasets.photometric import AUGMENTATIONS, photometric_augment
from datasets.synthetic_shapes import MAGICPOINT_HOMOGRAPHY
from geometry.homography import warp_image
from utils.errors import UserError

STRONG = {
    "params": {
        "patch_ratio": 0.8,
        "scaling_amplitude": 0.2,
        "perspective_amplitude_x": 0.2,
        "perspective_amplitude_y": 0.2,
        "allow_artifacts": True,
        "translation_overflow": 0.05,
    },
    "valid_border_margin": 2,
}


def _dots(shape, points) -> np.ndarray:
    image = np.zeros(shape, np.float32)
    for x, y in np.rint(points).astype(int):
        image[y, x] = 255.0
    return cv2.GaussianBlur(image, (0, 0), 1.5)


def test_warped_keypoints_land_on_the_warped_dots():
    rng = np.random.default_rng(0)
    shape = (90, 120)
    points = np.rint(rng.uniform([10, 10], [110, 80], size=(12, 2)))
    image = _dots(shape, points)
    for seed in range(3):
        warped, moved, mask, H = homographic_augment(
            image, points, np.random.default_rng(seed), STRONG
        )
        assert warped.shape == shape and mask.shape == shape and mask.dtype == bool
        assert len(moved) > 0
        for x, y in moved:
            xi, yi = int(round(x)), int(round(y))
            if not (3 <= xi < shape[1] - 3 and 3 <= yi < shape[0] - 3):
                continue
            window = warped[yi - 3 : yi + 4, xi - 3 : xi + 4].astype(np.float64)
            ys, xs = np.mgrid[yi - 3 : yi + 4, xi - 3 : xi + 4]
            centre = np.array([(window * xs).sum(), (window * ys).sum()]) / window.sum()
            # Dots can shrink by up to ~1.5x, so the window holds the blob's bulk.
            assert np.linalg.norm(centre - [x, y]) < 0.6


def test_keypoints_stay_inside_image_and_valid_mask():
    rng = np.random.default_rng(1)
    points = rng.uniform([-0.5, -0.5], [79.4, 59.4], size=(200, 2))
    for seed in range(5):
        image = np.full((60, 80), 100, np.uint8)
        _, moved, mask, _ = homographic_augment(
            image, points, np.random.default_rng(seed), STRONG
        )
        pixels = np.rint(moved).astype(int)
        assert moved.dtype == np.float32
        assert (pixels >= 0).all() and (pixels[:, 0] < 80).all()
        assert (pixels[:, 1] < 60).all()
        assert mask[pixels[:, 1], pixels[:, 0]].all()


def test_valid_mask_matches_warped_content():
    image = np.full((60, 80), 255, np.uint8)
    conf = {**STRONG, "valid_border_margin": 0}
    partial = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        _, _, mask, H = homographic_augment(image, np.zeros((0, 2)), rng, conf)
        content = warp_image(np.ones((60, 80), np.float32), H) > 0.5
        assert (mask == content).mean() > 0.98
        partial += not mask.all()
    assert partial > 0  # artifacts are allowed, so some warps leave empty borders


def test_magicpoint_homographies_can_be_sampled():
    """The reference MagicPoint warp (artifacts allowed, scaling 0.2) never crashes.

    Regression: the translation range ``[-t_min, t_max]`` can be reversed once the
    patch leaves the unit square, which ``Generator.uniform`` rejected (13% of draws).
    """
    conf = {"params": MAGICPOINT_HOMOGRAPHY, "valid_border_margin": 2}
    image = np.zeros((120, 160), np.uint8)
    for seed in range(100):
        homographic_augment(image, np.zeros((0, 2)), np.random.default_rng(seed), conf)


def test_homographic_conf_errors():
    with pytest.raises(UserError, match="valid_border_margins"):
        homographic_augment(
            np.zeros((8, 8)), np.zeros((0, 2)), np.random.default_rng(0),
            {"valid_border_margins": 1},
        )  # fmt: skip
    with pytest.raises(UserError, match="patch_ratios"):
        homographic_augment(
            np.zeros((8, 8)), np.zeros((0, 2)), np.random.default_rng(0),
            {"params": {"patch_ratios": 0.5}},
        )  # fmt: skip


def test_keypoint_map_marks_rounded_pixels():
    points = np.array([[0.4, 0.6], [3.5001, 2.2], [7.4, 5.49]])
    out = keypoint_map(points, (6, 8))
    expected = np.zeros((6, 8), np.float32)
    expected[1, 0] = expected[2, 4] = expected[5, 7] = 1
    np.testing.assert_array_equal(out, expected)
    assert keypoint_map(np.zeros((0, 2)), (3, 3)).sum() == 0


def _photo(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.uniform(60, 190, (60, 80)), (0, 0), 2)
    return np.rint(image).astype(np.uint8)


def test_photometric_names_are_validated():
    with pytest.raises(UserError, match="random_brightness.*motion_blur"):
        photometric_augment(_photo(), np.random.default_rng(0), ["gamma"])
    with pytest.raises(UserError, match="max_abs_change"):
        photometric_augment(
            _photo(), np.random.default_rng(0), "all",
            {"random_brightness": {"max_change": 3}},
        )  # fmt: skip


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_photometric_primitive_changes_the_image_deterministically(name):
    image = _photo()
    params = {"motion_blur": {"max_kernel_size": 7}}
    outs = [
        photometric_augment(image, np.random.default_rng(s), [name], params)
        for s in (0, 0, 1, 2, 3)
    ]
    assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outs)
    assert np.array_equal(outs[0], outs[1])
    assert any(not np.array_equal(o, image) for o in outs)


def test_photometric_value_ranges():
    image = _photo()
    rng = np.random.default_rng(0)
    for _ in range(10):
        out = photometric_augment(image, rng, ["random_brightness"])
        delta = out.astype(int) - image.astype(int)
        assert np.abs(delta).max() <= 75 and delta.std() < 0.6  # one global offset
        out = photometric_augment(image, rng, ["random_contrast"])
        assert abs(out.mean() - image.mean()) < 1.5
        out = photometric_augment(image, rng, ["additive_speckle_noise"])
        assert ((out == 0) | (out == 255)).mean() <= 0.01
    flat = np.full((40, 40), 90, np.uint8)
    assert np.array_equal(photometric_augment(flat, rng, ["motion_blur"]), flat)


def test_photometric_float_images_stay_in_unit_range():
    image = _photo().astype(np.float32) / 255
    out = photometric_augment(image, np.random.default_rng(0))
    assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    ref = photometric_augment(_photo(), np.random.default_rng(0))
    assert np.abs(out * 255 - ref).max() <= 1.0
