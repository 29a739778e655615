"""Baselines of the feature-inversion evaluation, computed on the same inputs as the network.

* :func:`mean_image`: the mean of the training images (each resized to a short side of
  ``size`` and centre-cropped to a square), later resized to every test image: what a
  method knowing only the training distribution predicts.
* :func:`interpolate_colors`: the colours the sparse input carries at the keypoint pixels,
  spread over the image by linear scattered interpolation on their Delaunay triangulation
  (nearest keypoint outside its convex hull) or by OpenCV's Telea inpainting: what a
  method using the colours but not the descriptors predicts. With fewer than three
  keypoints in general position the linear method falls back to the nearest keypoint, and
  with none at all both give mid-grey.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.interpolate import griddata
from scipy.spatial import QhullError

from datasets.inversion_sources import list_images, load_rgb
from datasets.sparse_maps import resize_short_side

INTERPOLATIONS = ("linear", "inpaint")


def mean_image(images: str, channels: int, size: int) -> np.ndarray:
    """Mean of the training images as ``(channels, size, size)`` float64 in [0, 1].

    Args:
        images: folder, ``.txt`` list or ``builtin[:split]`` (the training images).
        channels: 3 (RGB) or 1 (grey).
        size: side of the square each image is resized and centre-cropped to.
    """
    total = np.zeros((size, size, 3), np.float64)
    sources = list_images(images, "training images of the mean-image baseline")
    for source in sources:
        image = resize_short_side(load_rgb(source), size)
        height, width = image.shape[:2]
        y0, x0 = (height - size) // 2, (width - size) // 2
        total += image[y0 : y0 + size, x0 : x0 + size] / 255.0
    mean = total / len(sources)
    if channels == 1:
        mean = (mean * np.array([0.299, 0.587, 0.114])).sum(2, keepdims=True)
    return mean.transpose(2, 0, 1)


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(C, h, w)`` float image resized (bilinear) to ``(C, height, width)``."""
    planes = [
        cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR)
        for plane in image
    ]
    return np.stack(planes)


def interpolate_colors(
    colors: np.ndarray, mask: np.ndarray, method: str = "linear"
) -> np.ndarray:
    """Spread the colours of the keypoint pixels over the image (see module docstring).

    Args:
        colors: ``(C, H, W)`` in [0, 1], meaningful where ``mask`` is set.
        mask: ``(H, W)`` bool, the keypoint pixels.
        method: ``linear`` or ``inpaint``.

    Returns:
        ``(C, H, W)`` float64.
    """
    channels, height, width = colors.shape
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return np.full((channels, height, width), 0.5)
    values = colors[:, rows, cols].T.astype(np.float64)
    if method == "inpaint":
        sparse = np.zeros((height, width, channels), np.uint8)
        sparse[rows, cols] = np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)
        holes = (~mask).astype(np.uint8)
        filled = cv2.inpaint(sparse, holes, 3, cv2.INPAINT_TELEA)
        filled = filled.reshape(height, width, channels)
        return filled.transpose(2, 0, 1) / 255.0
    if method != "linear":
        raise ValueError(f"interpolation {method!r} is not one of {INTERPOLATIONS}")
    points = np.stack([cols, rows], 1).astype(np.float64)
    grid_y, grid_x = np.mgrid[0:height, 0:width]
    nearest = griddata(points, values, (grid_x, grid_y), method="nearest")
    try:
        linear = griddata(points, values, (grid_x, grid_y), method="linear")
        filled = np.where(np.isnan(linear), nearest, linear)
    except (QhullError, ValueError):
        filled = nearest
    return filled.reshape(height, width, channels).transpose(2, 0, 1)
