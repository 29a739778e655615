"""HPatches feature files: where a method's ``<image>.<tag>`` file is for a preset, and how it is
checked (frame, keypoints, scores, descriptors) before scoring. Files are read by
``datasets.features.read_features``, the one reader of feature files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets.features import read_features
from datasets.hpatches import (
    parse_resize,
)
from evaluators.hpatches.presets import Preset
from geometry.keypoints import top_k_indices
from geometry.matching import normalize_descriptors
from utils.errors import UserError


@dataclass
class Features:
    """Keypoints (N, 2) float64, scores (N,), unit descriptors (N, D) or None, and the
    file's provenance record (None for files written before records existed)."""

    keypoints: np.ndarray
    scores: np.ndarray | None
    descriptors: torch.Tensor | None
    provenance: dict[str, Any] | None = None


def features_path(image: Path, tag: str, root: Path, features_dir: Path | None) -> Path:
    """``<image>.<tag>`` next to the image, or under ``features_dir`` (same sub-path)."""
    if features_dir is None:
        return image.with_name(f"{image.name}.{tag}")
    return features_dir / image.relative_to(root).parent / f"{image.name}.{tag}"


def load_features(
    path: Path,
    expected_hw: tuple[int, int],
    original_hw: tuple[int, int],
    preset: Preset,
    need_descriptors: bool,
) -> Features:
    """Read and check one feature file for a preset.

    Keypoints must be in the frame the preset evaluates in (``imsize`` equal to
    ``expected_hw``). At full resolution (``resize: none``) features extracted on a
    downscaled image are mapped back to the original frame, since D2-Net lets each
    method pick its own resolution.

    Raises:
        UserError: missing/corrupt file, no ``keypoints``, no ``descriptors`` when the
            preset needs them, inconsistent shapes, or the wrong image size.
    """
    feature_file = read_features(path)
    arrays = feature_file.arrays
    if "keypoints" not in arrays:
        raise UserError(f"{path}: features file has no 'keypoints'")
    kp = np.asarray(arrays["keypoints"], dtype=np.float64)
    if kp.ndim != 2 or kp.shape[1] < 2:
        raise UserError(f"{path}: 'keypoints' must be (N, 2) or (N, 3), got {kp.shape}")
    kp = kp[:, :2]
    n = len(kp)
    scores = arrays.get("scores")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != n:
            raise UserError(f"{path}: {len(scores)} scores for {n} keypoints")
    desc = arrays.get("descriptors")
    if need_descriptors and desc is None:
        raise UserError(f"{path}: features file has no 'descriptors'")
    if desc is not None and (desc.ndim != 2 or len(desc) != n):
        raise UserError(
            f"{path}: 'descriptors' must be (N, D) with N = {n}, got {desc.shape}"
        )
    if "imsize" in arrays:
        w, h = (int(v) for v in np.asarray(arrays["imsize"]).reshape(-1)[:2])
        if (h, w) != tuple(expected_hw):
            if str(parse_resize(preset.resize)) == "none":
                # x_orig = (x + 0.5) * W / w - 0.5 (pixel-centre convention).
                scale = np.array([original_hw[1] / w, original_hw[0] / h])
                kp = (kp + 0.5) * scale - 0.5
            else:
                eh, ew = expected_hw
                raise UserError(
                    f"{path}: features were extracted at {w}x{h} but preset "
                    f"{preset.name} evaluates at {ew}x{eh} (resize {preset.resize}); "
                    f"re-extract with --model and --preset {preset.name}"
                )
    keep = top_k_indices(scores, n, preset.top_k)
    kp = kp[keep]
    scores = scores[keep] if scores is not None else None
    descriptors = normalize_descriptors(desc[keep]) if desc is not None else None
    return Features(kp, scores, descriptors, feature_file.provenance)
