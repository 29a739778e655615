"""Batch collation shared by every dataset.

Samples are dicts. Tensors (and NumPy arrays) of equal shape across the batch are stacked;
anything else (variable-length keypoint sets, names) is kept as a list, so a batch of
synthetic shapes carries ``keypoints`` as a list of ``(N_i, 2)`` tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


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
