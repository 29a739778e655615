"""Homographic augmentation shared by every keypoint dataset.

:func:`homographic_augment` warps an image by a homography sampled with
:func:`geometry.homography.sample_homography`, moves its keypoints with it, drops those that
leave the image or the valid area, and returns the valid mask (target pixels that have
image content, eroded by ``valid_border_margin`` as in the SuperPoint reference) and the
homography ``H`` (source to augmented pixels). :func:`keypoint_map` rasterises keypoints
into the dense label map that detector losses use. Everything follows the repository's
pixel convention (centre of the top-left pixel at (0, 0)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from datasets.photometric import parse_primitives as parse_photometric
from datasets.photometric import photometric_augment, resolve_params
from geometry.homography import (
    HomographyConfig,
    draw_homography,
    points_inside,
    valid_mask,
    warp_image,
    warp_points,
)
from utils.errors import UserError

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


def augmentation_defaults(valid_border_margin: int) -> dict[str, Any]:
    """Defaults of a dataset's ``data.augmentation`` section (both kinds off)."""
    return {
        "splits": ["train"],
        "photometric": {
            "enable": False,
            "primitives": "all",
            "params": {},
            "random_order": True,
        },
        "homographic": {
            "enable": False,
            "params": {},
            "valid_border_margin": valid_border_margin,
        },
    }


@dataclass(frozen=True)
class Augmentation:
    """The ``data.augmentation`` section of one dataset split, parsed once.

    ``photometric`` / ``homographic`` say whether each kind runs on this split; the rest are
    the resolved settings that :meth:`photometric_step` and :meth:`homographic_step` use.
    """

    photometric: bool
    photometric_names: list[str]
    photometric_params: dict[str, dict]
    random_order: bool
    homographic: bool
    homography: HomographyConfig
    border_margin: int

    @classmethod
    def from_conf(
        cls,
        aug: Mapping[str, Any],
        split: str,
        base_homography: Mapping[str, Any],
        splits: Sequence[str],
    ) -> Augmentation:
        """Parse a merged ``data.augmentation`` section for ``split``.

        ``base_homography`` is the dataset's reference homography preset, which
        ``homographic.params`` overrides key by key; ``splits`` are the dataset's split names.

        Raises:
            UserError: an unknown split name, photometric primitive or homography key.
        """
        for name in aug["splits"]:
            if name not in splits:
                raise UserError(
                    f"data.augmentation.splits: unknown split {name!r}; "
                    f"valid: {', '.join(splits)}"
                )
        on = split in aug["splits"]
        photometric, homographic = aug["photometric"], aug["homographic"]
        return cls(
            photometric=bool(photometric["enable"]) and on,
            photometric_names=parse_photometric(photometric["primitives"]),
            photometric_params=resolve_params(photometric["params"]),
            random_order=bool(photometric["random_order"]),
            homographic=bool(homographic["enable"]) and on,
            homography=homography_config(
                {**base_homography, **(homographic["params"] or {})}
            ),
            border_margin=int(homographic["valid_border_margin"]),
        )

    def photometric_step(self, image: Array, rng: np.random.Generator) -> Array:
        """The photometric augmentation of ``image`` (unchanged when it is off)."""
        if not self.photometric:
            return image
        return photometric_augment(
            image,
            rng,
            self.photometric_names,
            self.photometric_params,
            self.random_order,
        )

    def homographic_step(
        self, image: Array, points: Array, rng: np.random.Generator
    ) -> tuple[Array, Array, Array]:
        """``(image, points, valid mask)`` after the homographic augmentation (when on)."""
        if not self.homographic:
            return image, points, np.ones(image.shape[:2], bool)
        conf = {"params": self.homography, "valid_border_margin": self.border_margin}
        image, points, mask, _ = homographic_augment(image, points, rng, conf)
        return image, points, mask


def homographic_augment(
    image: Array,
    keypoints: Array,
    rng: np.random.Generator,
    conf: dict | None = None,
) -> tuple[Array, Array, Array, Array]:
    """Warp an image and its keypoints by a random homography.

    The homography comes from :func:`geometry.homography.draw_homography`:
    :func:`geometry.homography.sample_homography`, redrawn in the rare case (``allow_artifacts``)
    where the scaled patch cannot be placed; a first successful draw is used as is.

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
    H = draw_homography(shape, rng, params)
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
