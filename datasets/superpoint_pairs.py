"""Image pairs with homographic-adaptation labels for SuperPoint joint training.

Each sample is a real image (any layout of :mod:`datasets.image_folder`) and its warp by a
random homography, as rpautrat/SuperPoint's ``warped_pair`` (``superpoint_coco.yaml``): view 0
is the image (optionally photometrically augmented), view 1 the image warped by ``H_0to1``
(sampled with :func:`geometry.homography.sample_homography`) and independently augmented. The HA
labels of the image are carried to both views; view 1's valid mask marks the pixels with image
content, eroded by ``valid_border_margin``. Randomness is keyed by (seed, index, epoch).

``python -m datasets.superpoint_pairs --show --root builtin`` writes a grid of pairs.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from datasets.augmentation import homographic_augment, homography_config, keypoint_map
from datasets.image_folder import (
    COCO_HOMOGRAPHY,
    ImageFolder,
    show_main,
)

Array = np.ndarray


class SuperPointPairs(ImageFolder):
    """Warped pairs with labels and valid masks (``data.name: superpoint_pairs``).

    Config: that of :class:`datasets.image_folder.ImageFolder` plus ``warped_pair``:
    ``params`` (:class:`geometry.homography.HomographyConfig` fields over
    :data:`datasets.image_folder.COCO_HOMOGRAPHY`) and ``valid_border_margin``. The
    ``augmentation.homographic`` section is not used here (view 0 is never warped).

    Each sample:
        image0, image1: ``(1, H, W)`` float32 in [0, 1].
        keypoints0, keypoints1: ``(N_i, 2)`` labels (x, y).
        keypoint_map0, keypoint_map1, valid_mask0, valid_mask1: ``(H, W)`` float32.
        H_0to1: ``(3, 3)`` float32. name: str; index: int.
    """

    default_conf: dict[str, Any] = {
        **ImageFolder.default_conf,
        "name": "superpoint_pairs",
        "warped_pair": {"params": {}, "valid_border_margin": 3},
    }

    def __init__(self, conf: dict[str, Any] | None = None, split: str = "train"):
        super().__init__(conf, split)
        pair = self.conf["warped_pair"]
        self.pair_homography = homography_config(
            {**COCO_HOMOGRAPHY, **(pair["params"] or {})}
        )
        self.pair_margin = int(pair["valid_border_margin"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, points = self.content(index)
        # Validation pairs are warped too (fixed per index since val uses epoch 0).
        rng_warp, rng0, rng1 = (self.rng(index, s) for s in range(3))
        warp = {"params": self.pair_homography, "valid_border_margin": self.pair_margin}
        warped, points1, mask1, H = homographic_augment(image, points, rng_warp, warp)
        image0 = self.aug.photometric_step(image, rng0)
        image1 = self.aug.photometric_step(warped, rng1)

        def tensor(x: Array) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x, np.float32))

        return {
            "image0": tensor(image0.astype(np.float32) / 255.0)[None],
            "image1": tensor(image1.astype(np.float32) / 255.0)[None],
            "keypoints0": tensor(points),
            "keypoints1": tensor(points1),
            "keypoint_map0": tensor(keypoint_map(points, self.image_size)),
            "keypoint_map1": tensor(keypoint_map(points1, self.image_size)),
            "valid_mask0": tensor(np.ones(self.image_size, np.float32)),
            "valid_mask1": tensor(mask1),
            "H_0to1": tensor(H),
            "name": self.entries[index].name,
            "index": int(index),
        }


if __name__ == "__main__":
    sys.exit(show_main(SuperPointPairs, None, "python -m datasets.superpoint_pairs"))
