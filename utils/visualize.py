"""Drawing helpers for TensorBoard panels, sample grids and evaluation figures."""

from __future__ import annotations

import cv2
import numpy as np
import torch


def to_rgb_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(1|3, H, W)`` float in [0, 1] (or ``(H, W)``) to ``(H, W, 3)`` uint8."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    if image.ndim == 3:
        image = image.transpose(1, 2, 0)
    image = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    if image.ndim == 2 or image.shape[2] == 1:
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    return np.ascontiguousarray(image)


def colorize(
    heatmap: torch.Tensor | np.ndarray, vmax: float | None = None
) -> np.ndarray:
    """``(H, W)`` scores to an ``(H, W, 3)`` uint8 RGB image (magma-like OpenCV colormap)."""
    if isinstance(heatmap, torch.Tensor):
        heatmap = heatmap.detach().float().cpu().numpy()
    vmax = float(heatmap.max()) if vmax is None else vmax
    scaled = np.clip(heatmap / max(vmax, 1e-12) * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(
        cv2.applyColorMap(scaled, cv2.COLORMAP_MAGMA), cv2.COLOR_BGR2RGB
    )


def draw_points(
    image: np.ndarray, points, color=(0, 255, 0), radius: int = 1
) -> np.ndarray:
    """Draw (x, y) points on a copy of an RGB uint8 image."""
    out = image.copy()
    if isinstance(points, torch.Tensor):
        points = points.detach().float().cpu().numpy()
    for x, y in np.asarray(points).reshape(-1, 2):
        cv2.circle(out, (int(round(x)), int(round(y))), radius, color, -1, cv2.LINE_AA)
    return out


def to_chw(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 to a ``(3, H, W)`` float tensor in [0, 1] (TensorBoard)."""
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0


def detector_panels(batch: dict, pred: dict, keypoints=None) -> dict[str, torch.Tensor]:
    """Panels of the first sample: input, predicted heatmap, labels vs detections.

    Ground-truth keypoints are green, detections (``keypoints``, optional) red.
    """
    image = to_rgb_uint8(batch["image"][0])
    labels = np.argwhere(batch["keypoint_map"][0].detach().cpu().numpy() > 0.5)[:, ::-1]
    overlay = draw_points(image, labels, (0, 255, 0))
    if keypoints is not None:
        overlay = draw_points(overlay, keypoints, (255, 0, 0))
    return {
        "input": to_chw(image),
        "heatmap": to_chw(colorize(pred["heatmap"][0])),
        "labels_vs_detections": to_chw(overlay),
    }
