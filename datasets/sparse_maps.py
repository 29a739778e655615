"""Sparse feature maps for feature inversion: keypoint selection and rasterisation.

A feature-inversion network sees an image only through its local features. This module turns
``keypoints (N, 2)`` with ``scores (N,)`` and ``descriptors (N, D)`` into the dense input map
the networks read, and holds the small geometric helpers that keep keypoints aligned with an
image that is rescaled, cropped or flipped.

**Rounding convention.** The repository's pixel convention puts the centre of the top-left
pixel at (0, 0), so pixel ``(col, row)`` covers ``[col - 0.5, col + 0.5) x [row - 0.5,
row + 0.5)``. A keypoint ``(x, y)`` is therefore written at ``col = floor(x + 0.5)``,
``row = floor(y + 0.5)`` (the pixel whose centre is nearest; exact halves go right/down).
Keypoints outside ``[-0.5, W - 0.5) x [-0.5, H - 0.5)`` are dropped. When several keypoints
fall in one pixel, the one with the highest score is written and the others are dropped.

**Channel order** of :func:`rasterize`: the ``D`` descriptor channels, then (optional) the
colour at the keypoints (3 channels, or 1 for grey), the depth at the keypoints (1), and a
keypoint-presence mask (1). Every channel is zero where there is no keypoint.

**Sparsity.** :func:`select_points` keeps the ``max_points`` strongest keypoints and then a
random fraction of them (InvSfM draws the fraction uniformly in 5-100 %); a fixed fraction is
a range with equal ends.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

Array = np.ndarray


def pixel_indices(keypoints: Array) -> Array:
    """Integer pixel ``(col, row)`` of each keypoint under the rounding convention.

    Args:
        keypoints: ``(N, 2)`` (x, y) pixels, centre of the top-left pixel at (0, 0).

    Returns:
        ``(N, 2)`` int64 ``floor(keypoints + 0.5)``.
    """
    return np.floor(np.asarray(keypoints, np.float64).reshape(-1, 2) + 0.5).astype(
        np.int64
    )


def unpack_binary_descriptors(packed: Array) -> Array:
    """ORB-style packed bits ``(N, B)`` uint8 to ``(N, 8 B)`` float32 in {-1, +1}.

    Bit order is NumPy's ``unpackbits`` (most significant bit first); a set bit gives +1.
    """
    packed = np.asarray(packed, np.uint8)
    packed = packed.reshape(len(packed), packed.shape[-1] if packed.ndim == 2 else -1)
    bits = np.unpackbits(packed, axis=1)
    return bits.astype(np.float32) * 2.0 - 1.0


def select_points(
    scores: Array,
    max_points: int,
    keep_range: tuple[float, float] | list[float],
    rng: np.random.Generator | None,
) -> Array:
    """Indices of the keypoints that an input keeps.

    The ``max_points`` highest scores are kept first (ties: the earlier index), then a fraction
    ``f`` drawn uniformly in ``keep_range`` of those, chosen at random: ``round(f * n)`` points
    (at least one when ``f > 0`` and any are left).

    Args:
        scores: ``(N,)`` detection scores.
        max_points: cap on the number of keypoints (``<= 0``: no cap).
        keep_range: ``(low, high)`` in [0, 1].
        rng: random generator; ``None`` keeps the first ``round(f * n)`` strongest points
            with ``f = high`` (deterministic use without a generator).

    Returns:
        ``(K,)`` int64 indices into the inputs, strongest first.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    if max_points > 0:
        order = order[:max_points]
    low, high = float(keep_range[0]), float(keep_range[1])
    fraction = high if rng is None or high <= low else float(rng.uniform(low, high))
    count = int(math.floor(fraction * len(order) + 0.5))
    if fraction > 0 and len(order) > 0:
        count = max(count, 1)
    count = min(count, len(order))
    if rng is None or count == len(order):
        return order[:count]
    chosen = np.sort(rng.choice(len(order), size=count, replace=False))
    return order[chosen]


def _as_columns(values: Array, count: int) -> Array:
    """``(N,)`` or ``(N, K)`` to float32 ``(N, K)`` (also for N = 0, where -1 is ambiguous)."""
    values = np.asarray(values, np.float32)
    if values.ndim == 1:
        values = values[:, None]
    return values.reshape(count, values.shape[-1])


def rasterize(
    keypoints: Array,
    descriptors: Array,
    size: tuple[int, int],
    scores: Array | None = None,
    colors: Array | None = None,
    depths: Array | None = None,
    mask: bool = False,
) -> Array:
    """Write per-keypoint vectors into a ``(C, H, W)`` map (see module docstring).

    Args:
        keypoints: ``(N, 2)`` (x, y) pixels.
        descriptors: ``(N, D)`` (``D`` may be 0).
        size: ``(H, W)`` of the map.
        scores: ``(N,)``; decides which keypoint a shared pixel keeps (default: the first).
        colors: optional ``(N, K)`` values written after the descriptors (K = 3 or 1).
        depths: optional ``(N,)`` values, one channel.
        mask: add a channel that is 1 at every written pixel.

    Returns:
        float32 ``(D [+ K] [+ 1] [+ 1], H, W)``.
    """
    height, width = size
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, 2)
    count = len(keypoints)
    columns = [_as_columns(descriptors, count)]
    if colors is not None:
        columns.append(_as_columns(colors, count))
    if depths is not None:
        columns.append(_as_columns(depths, count))
    if mask:
        columns.append(np.ones((count, 1), np.float32))
    values = np.concatenate(columns, axis=1)
    out = np.zeros((values.shape[1], height, width), np.float32)
    if count == 0:
        return out
    pixels = pixel_indices(keypoints)
    inside = (
        (pixels[:, 0] >= 0)
        & (pixels[:, 0] < width)
        & (pixels[:, 1] >= 0)
        & (pixels[:, 1] < height)
    )
    order = np.arange(count)
    if scores is not None:
        order = np.argsort(-np.asarray(scores, np.float64).reshape(-1), kind="stable")
    order = order[inside[order]]
    flat = pixels[order, 1] * width + pixels[order, 0]
    # np.unique returns the first occurrence, i.e. the strongest keypoint of each pixel.
    _, first = np.unique(flat, return_index=True)
    winners = order[first]
    rows, cols = pixels[winners, 1], pixels[winners, 0]
    out[:, rows, cols] = values[winners].T
    return out


def sample_at_keypoints(image: Array, keypoints: Array) -> Array:
    """Values of ``image`` at the keypoints' pixels (same rounding as :func:`rasterize`).

    Args:
        image: ``(H, W)`` or ``(H, W, K)``.
        keypoints: ``(N, 2)`` (x, y); points outside the image are clamped to its border.

    Returns:
        ``(N, K)`` (``K = 1`` for a 2-D image), the dtype of ``image``.
    """
    image = image[..., None] if image.ndim == 2 else image
    height, width = image.shape[:2]
    pixels = pixel_indices(keypoints)
    cols = np.clip(pixels[:, 0], 0, width - 1)
    rows = np.clip(pixels[:, 1], 0, height - 1)
    return image[rows, cols]


def resize_keypoints(
    keypoints: Array, old_size: tuple[int, int], new_size: tuple[int, int]
) -> Array:
    """Map keypoints of an ``old_size`` (H, W) image onto the image resized to ``new_size``.

    Pixel edges scale, not centres: ``x' = (x + 0.5) * W'/W - 0.5`` (as ``cv2.resize``).
    """
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, 2)
    scale = np.array([new_size[1] / old_size[1], new_size[0] / old_size[0]], np.float64)
    return ((keypoints + 0.5) * scale - 0.5).astype(np.float32)


def flip_keypoints(keypoints: Array, width: int) -> Array:
    """Keypoints of the horizontally flipped image: ``x' = W - 1 - x``."""
    out = np.array(keypoints, np.float32).reshape(-1, 2)
    out[:, 0] = (width - 1) - out[:, 0]
    return out


def resize_short_side(image: Array, short_side: int) -> Array:
    """Resize so that the shorter side is ``short_side`` (area filter when shrinking)."""
    height, width = image.shape[:2]
    scale = short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return image
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)
