"""Synthetic Shapes: the :class:`SyntheticShapes` dataset (on the fly or from the cache, with
photometric and homographic augmentation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from datasets.augmentation import Augmentation, augmentation_defaults
from datasets.base import keypoint_sample
from datasets.synthetic_shapes.cache import _ShardIndex
from datasets.synthetic_shapes.primitives import (
    _settings,
    augmentation_rng,
    content_rng,
    generate_sample,
    parse_primitives,
)
from datasets.synthetic_shapes.raster import DEFAULT_SPLIT_SIZES, SPLITS, Array
from geometry.homography import HOMOGRAPHY_PRESETS
from utils.config import merge_config
from utils.errors import UserError

# Homographic augmentation of the reference's magic-point_shapes.yaml.
MAGICPOINT_HOMOGRAPHY: dict[str, Any] = HOMOGRAPHY_PRESETS["magicpoint_shapes"]


class SyntheticShapes(Dataset):
    """Synthetic Shapes, generated on the fly or read from a cache.

    Samples of all selected primitives are concatenated (primitive by primitive, in the
    order of :data:`PRIMITIVES` filtered by ``primitives``); shuffle with the sampler.
    Augmentation (photometric then homographic, as the reference) applies to the splits
    listed in ``augmentation.splits``.

    Config (``default_conf``; unknown keys raise :class:`UserError`):
        primitives: ``'all'`` or a list of names from :data:`PRIMITIVES`.
        image_size: ``[H, W]`` of the samples (reference training size 120x160).
        supersample: draw at this multiple of ``image_size`` and reduce with
            ``INTER_AREA`` (1 draws directly; the rasteriser is already exact).
        blur_size: the reference's final Gaussian kernel size at 1280 px wide.
        split_sizes: samples per primitive for ``train``, ``val``, ``test``.
        seed: non-negative integer; content is a pure function of it.
        cache_dir: ``None`` (generate on the fly) or a folder written by
            :func:`generate_main` with the same content settings.
        augmentation.splits: splits to augment.
        augmentation.photometric: ``enable``, ``primitives`` ('all' or names),
            ``params`` (overrides of ``datasets.photometric.DEFAULT_PARAMS``),
            ``random_order``.
        augmentation.homographic: ``enable``, ``params`` (``HomographyConfig`` fields
            over :data:`MAGICPOINT_HOMOGRAPHY`), ``valid_border_margin``.
        crop: ``None`` (the reference: whole images) or ``[h, w]``: each augmented sample
            is a random ``h x w`` window of its image, drawn after the augmentation, with
            its keypoints and valid mask. The network is fully convolutional, so it
            trains on windows and runs on whole images; a window of 96x128 costs about
            0.6 of a 120x160 step (a CPU recipe uses it to fit the hour).

    Each sample is a dict:
        image: ``(1, H, W)`` float32 in [0, 1].
        keypoints: ``(N, 2)`` float32 (x, y), inside the image and the valid mask.
        keypoint_map: ``(H, W)`` float32, 1 at the rounded pixel of each keypoint.
        valid_mask: ``(H, W)`` float32, 1 where the (augmented) image has content.
        primitive: str; index: int (position in this dataset).

    Example:
        >>> data = SyntheticShapes({"split_sizes": {"val": 4}}, "val")
        >>> sample = data[0]
    """

    default_conf: dict[str, Any] = {
        "primitives": "all",
        "image_size": [120, 160],
        "supersample": 1,
        "blur_size": 11,
        "split_sizes": dict(DEFAULT_SPLIT_SIZES),
        "seed": 0,
        "cache_dir": None,
        "augmentation": augmentation_defaults(valid_border_margin=2),
        "crop": None,
    }

    def __init__(self, conf: dict | None = None, split: str = "train") -> None:
        self.conf = merge_config(self.default_conf, conf, prefix="data.")
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        self.split = split
        conf = self.conf
        self.primitives = parse_primitives(conf["primitives"])
        size = conf["image_size"]
        if len(size) != 2 or min(int(v) for v in size) < 8:
            raise UserError(f"image_size must be [H, W] with H, W >= 8, got {size}")
        if int(conf["supersample"]) < 1:
            raise UserError(f"supersample must be >= 1, got {conf['supersample']}")
        if not isinstance(conf["seed"], int) or conf["seed"] < 0:
            raise UserError(
                f"seed must be a non-negative integer, got {conf['seed']!r}"
            )
        self.split_size = int(conf["split_sizes"][split])
        self.image_size = (int(size[0]), int(size[1]))
        self.epoch = 0
        self.crop = _parse_crop(conf["crop"], self.image_size)

        self.aug = Augmentation.from_conf(
            conf["augmentation"], split, MAGICPOINT_HOMOGRAPHY, SPLITS
        )

        self.cache: dict[str, _ShardIndex] | None = None
        if conf["cache_dir"] is not None:
            root = Path(conf["cache_dir"])
            if not root.is_dir():
                raise UserError(f"cache_dir {root} is not a directory")
            self.cache = {
                p: _ShardIndex(root, p, split, self.split_size, _settings(conf))
                for p in self.primitives
            }

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream (call before each epoch; workers inherit it)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.split_size * len(self.primitives)

    def locate(self, index: int) -> tuple[str, int]:
        """``(primitive, index within that primitive)`` of dataset position ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return self.primitives[index // self.split_size], index % self.split_size

    def content(self, index: int) -> tuple[Array, Array, str]:
        """Un-augmented ``(uint8 image (H, W), float32 keypoints (N, 2), primitive)``."""
        primitive, j = self.locate(index)
        if self.cache is not None:
            image, points = self.cache[primitive].get(j)
        else:
            rng = content_rng(self.conf["seed"], primitive, self.split, j)
            image, points = generate_sample(
                primitive,
                rng,
                self.image_size,
                int(self.conf["supersample"]),
                int(self.conf["blur_size"]),
            )
        return image, points, primitive

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, points, primitive = self.content(index)
        mask = np.ones(self.image_size, bool)
        if self.aug.photometric or self.aug.homographic:
            _, j = self.locate(index)
            rng = augmentation_rng(
                self.conf["seed"], primitive, self.split, j, self.epoch
            )
            image = self.aug.photometric_step(image, rng)
            image, points, mask = self.aug.homographic_step(image, points, rng)
            if self.crop is not None:
                image, points, mask = random_crop(image, points, mask, self.crop, rng)
        return {
            **keypoint_sample(image, points, mask),
            "primitive": primitive,
            "index": int(index),
        }


def _parse_crop(crop: Any, image_size: tuple[int, int]) -> tuple[int, int] | None:
    """``data.crop`` as ``(h, w)``, or ``None``; a window must fit the image."""
    if crop is None:
        return None
    if (
        not isinstance(crop, (list, tuple))
        or len(crop) != 2
        or not all(isinstance(v, int) and v >= 8 for v in crop)
        or crop[0] > image_size[0]
        or crop[1] > image_size[1]
    ):
        raise UserError(
            f"data.crop must be null or [h, w] with 8 <= h <= {image_size[0]} and "
            f"8 <= w <= {image_size[1]} (data.image_size), got {crop!r}"
        )
    return int(crop[0]), int(crop[1])


def random_crop(
    image: Array,
    points: Array,
    mask: Array,
    size: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[Array, Array, Array]:
    """A random ``size = (h, w)`` window of ``image``, its keypoints and valid mask.

    The top-left corner is uniform over the positions where the window fits; keypoints
    move with it, and those whose rounded pixel falls outside are dropped.
    """
    h, w = size
    top = int(rng.integers(0, image.shape[0] - h + 1))
    left = int(rng.integers(0, image.shape[1] - w + 1))
    moved = np.asarray(points, np.float32).reshape(-1, 2) - np.float32([left, top])
    pixels = np.rint(moved)
    keep = (
        (pixels[:, 0] >= 0)
        & (pixels[:, 0] <= w - 1)
        & (pixels[:, 1] >= 0)
        & (pixels[:, 1] <= h - 1)
    )
    window = (slice(top, top + h), slice(left, left + w))
    return image[window], moved[keep], mask[window]
