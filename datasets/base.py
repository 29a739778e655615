"""Sample building and batch collation shared by every dataset.

Samples are dicts. Tensors (and NumPy arrays) of equal shape across the batch are stacked;
anything else (variable-length keypoint sets, names) is kept as a list, so a batch of
synthetic shapes carries ``keypoints`` as a list of ``(N_i, 2)`` tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datasets.augmentation import keypoint_map


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate a list of sample dicts into a batch dict (see module docstring)."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], np.ndarray):
            values = [torch.from_numpy(np.ascontiguousarray(v)) for v in values]
        if isinstance(values[0], torch.Tensor) and all(
            v.shape == values[0].shape for v in values
        ):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


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
