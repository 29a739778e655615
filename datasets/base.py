"""Sample building shared by the single-view keypoint datasets (Synthetic Shapes, image folders).

Batches are collated by :func:`engine.data.collate`.
"""

from __future__ import annotations

import numpy as np
import torch

from datasets.augmentation import keypoint_map


def keypoint_sample(
    image: np.ndarray, points: np.ndarray, mask: np.ndarray
) -> dict[str, torch.Tensor]:
    """The tensors of a single-view keypoint sample.

    Args:
        image: ``(H, W)`` grey image on the 0-255 scale.
        points: ``(N, 2)`` keypoints (x, y).
        mask: ``(H, W)`` valid pixels.

    Returns:
        ``image (1, H, W)`` float32 in [0, 1], ``keypoints (N, 2)``, ``keypoint_map`` and
        ``valid_mask`` ``(H, W)`` float32.
    """
    return {
        "image": torch.from_numpy(image.astype(np.float32) / 255.0)[None],
        "keypoints": torch.from_numpy(np.ascontiguousarray(points, np.float32)),
        "keypoint_map": torch.from_numpy(keypoint_map(points, image.shape[:2])),
        "valid_mask": torch.from_numpy(mask.astype(np.float32)),
    }
