"""Homographic augmentation shared by every keypoint dataset.

:func:`homographic_augment` warps an image by a homography sampled with
:func:`utils.geometry.sample_homography`, moves its keypoints with it, drops those that
leave the image or the valid area, and returns the valid mask (target pixels that have
image content, eroded by ``valid_border_margin`` as in the SuperPoint reference) and the
homography ``H`` (source to augmented pixels). :func:`keypoint_map` rasterises keypoints
into the dense label map that detector losses use. Everything follows the repository's
pixel convention (centre of the top-left pixel at (0, 0)).
"""

from __future__ import annotations

import cv2
import numpy as np

from utils.errors import UserError
from utils.geometry import (
    HomographyConfig,
    points_inside,
    sample_homography,
    valid_mask,
    warp_image,
    warp_points,
)

Array = np.ndarray

HOMOGRAPHIC_KEYS = ("params", "valid_border_margin")


def homography_config(params: dict | HomographyConfig | None) -> HomographyConfig:
    """Build a :class:`HomographyConfig`, turning unknown keys into a :class:`UserError`."""
    if isinstance(params, HomographyConfig):
        return params
    try:
        return HomographyConfig.from_dict(params)
    except (KeyError, TypeError) as err:
        valid = ", ".join(HomographyConfig.__dataclass_fields__)
        raise UserError(
            f"homographic augmentation params: {err}; valid: {valid}"
        ) from err


def homographic_augment(
    image: Array,
    keypoints: Array,
    rng: np.random.Generator,
    conf: dict | None = None,
) -> tuple[Array, Array, Array, Array]:
    """Warp an image and its keypoints by a random homography.

    Args:
        image: ``(H, W[, C])`` NumPy image (any dtype OpenCV warps).
        keypoints: ``(N, 2)`` (x, y) pixels in ``image``.
        rng: random generator (the only source of randomness).
        conf: ``{"params": HomographyConfig fields, "valid_border_margin": int}``;
            missing entries take the :class:`HomographyConfig` defaults and margin 0.

    Returns:
        ``(warped_image, warped_keypoints, valid_mask, H)``: the image warped with
        bilinear interpolation (zeros outside), ``(M, 2)`` float32 keypoints that land
        inside the image and on the valid mask, ``(H, W)`` bool mask of pixels with
        image content eroded by ``valid_border_margin``, and ``H`` ``(3, 3)`` float64
        mapping ``image`` pixels to ``warped_image`` pixels.

    Raises:
        UserError: for unknown keys in ``conf`` or its ``params``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> img, kps, mask, H = homographic_augment(
        ...     np.zeros((60, 80), np.uint8), np.array([[10.0, 20.0]]), rng
        ... )
    """
    conf = dict(conf or {})
    unknown = set(conf) - set(HOMOGRAPHIC_KEYS)
    if unknown:
        raise UserError(
            f"unknown homographic augmentation key(s) {sorted(unknown)}; "
            f"valid: {', '.join(HOMOGRAPHIC_KEYS)}"
        )
    params = homography_config(conf.get("params"))
    margin = int(conf.get("valid_border_margin", 0))
    shape = image.shape[:2]
    H = sample_homography(shape, rng, params)
    warped = warp_image(image, H, interpolation=cv2.INTER_LINEAR)
    mask = valid_mask(shape, H, erosion_radius=margin)
    points = warp_points(np.asarray(keypoints, np.float64).reshape(-1, 2), H)
    keep = points_inside(points, shape)
    points = points[keep]
    pixels = np.rint(points).astype(np.int64)
    keep = mask[pixels[:, 1], pixels[:, 0]] if len(points) else np.zeros(0, bool)
    return warped, points[keep].astype(np.float32), mask, H


def keypoint_map(keypoints: Array, shape: tuple[int, int]) -> Array:
    """Dense label map with 1 at the rounded pixel of each keypoint.

    Args:
        keypoints: ``(N, 2)`` (x, y) pixels; points are clipped into the image.
        shape: ``(H, W)``.

    Returns:
        ``(H, W)`` float32 map of zeros and ones.
    """
    out = np.zeros(shape, np.float32)
    if len(keypoints):
        pixels = np.rint(np.asarray(keypoints, np.float64)).astype(np.int64)
        x = np.clip(pixels[:, 0], 0, shape[1] - 1)
        y = np.clip(pixels[:, 1], 0, shape[0] - 1)
        out[y, x] = 1.0
    return out
