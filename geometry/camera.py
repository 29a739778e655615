"""Pinhole camera geometry for depth maps: unprojection, projection, field of view, and
the LeReS depth normalisation and distortions of the point-cloud module.

Conventions (used by every reader, the procedural generator, training and inference):

* pixels ``(u, v)``: ``u`` to the right (column), ``v`` down (row), the centre of the
  top-left pixel at ``(0, 0)``, so the image centre of a ``W x H`` image is
  ``((W - 1) / 2, (H - 1) / 2)``;
* camera frame: ``x`` right, ``y`` down, ``z`` forward; depth is the ``z`` coordinate
  (z-buffer depth, not the distance along the ray): ``x = (u - cx) d / fx``,
  ``y = (v - cy) d / fy``, ``z = d``;
* **a field of view (FOV) is the vertical one: it spans the image height**, so
  ``fy = (H / 2) / tan(fov / 2)``, as LeReS's 60-degree starting guess does. Readers of
  datasets that define their FOV on another side convert on reading;
* intrinsics are 3x3 matrices ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.

Functions accept NumPy arrays or torch tensors, with any leading batch dimensions.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch

from utils.errors import UserError

Array = TypeVar("Array", np.ndarray, torch.Tensor)

# LeReS normalisation: d - min + NORMALISATION_OFFSET, divided by its PERCENTILE-th value.
NORMALISATION_OFFSET = 0.5
NORMALISATION_PERCENTILE = 98.0

# Channels of a point-cloud network's input points, by count.
CLOUD_INPUT_CHANNELS = {3: "xyz", 5: "xyz + normalised uv", 6: "xyz + surface normal"}


def fov_to_focal(fov_deg: float, height: float) -> float:
    """Focal length in pixels of a vertical field of view over an image ``height`` pixels tall.

    Example:
        >>> round(fov_to_focal(90.0, 480), 6)
        240.0
    """
    if not 0.0 < fov_deg < 180.0:
        raise UserError(f"field of view {fov_deg} deg is not in (0, 180)")
    return 0.5 * height / math.tan(math.radians(fov_deg) / 2.0)


def focal_to_fov(focal: float | np.ndarray, height: float) -> float | np.ndarray:
    """Vertical field of view in degrees of focal length ``focal`` (pixels), image ``height``."""
    return np.degrees(2.0 * np.arctan(0.5 * height / np.asarray(focal, np.float64)))


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """``(3, 3)`` float64 intrinsics matrix."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], np.float64)


def intrinsics_from_fov(fov_deg: float, height: int, width: int) -> np.ndarray:
    """``(3, 3)`` intrinsics of square pixels, vertical FOV ``fov_deg``, centred principal point."""
    focal = fov_to_focal(fov_deg, height)
    return intrinsics_matrix(focal, focal, (width - 1) / 2.0, (height - 1) / 2.0)


def _backend(x):
    return torch if isinstance(x, torch.Tensor) else np


def pixel_grid(
    height: int, width: int, like: Array | None = None
) -> tuple[Array, Array]:
    """Pixel coordinates ``u (H, W)`` (column) and ``v (H, W)`` (row), float, as ``like``."""
    if isinstance(like, torch.Tensor):
        v, u = torch.meshgrid(
            torch.arange(height, dtype=like.dtype, device=like.device),
            torch.arange(width, dtype=like.dtype, device=like.device),
            indexing="ij",
        )
        return u, v
    dtype = like.dtype if isinstance(like, np.ndarray) else np.float64
    v, u = np.mgrid[0:height, 0:width]
    return u.astype(dtype), v.astype(dtype)


def unproject(uv: Array, depth: Array, K: Array) -> Array:
    """Lift pixels with depth to camera-frame points.

    Args:
        uv: ``(..., N, 2)`` pixel coordinates ``(u, v)``.
        depth: ``(..., N)`` z-depth.
        K: ``(..., 3, 3)`` intrinsics.

    Returns:
        ``(..., N, 3)`` points ``(x, y, z)``.
    """
    xp = _backend(depth)
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    x = (uv[..., 0] - cx) * depth / fx
    y = (uv[..., 1] - cy) * depth / fy
    return xp.stack([x, y, depth], -1)


def project(points: Array, K: Array) -> tuple[Array, Array]:
    """Project camera-frame points to pixels (inverse of :func:`unproject`).

    Args:
        points: ``(..., N, 3)`` points with ``z > 0``.
        K: ``(..., 3, 3)`` intrinsics.

    Returns:
        ``uv (..., N, 2)`` pixel coordinates and ``depth (..., N)`` (the ``z`` coordinates).
    """
    xp = _backend(points)
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    z = points[..., 2]
    u = points[..., 0] * fx / z + cx
    v = points[..., 1] * fy / z + cy
    return xp.stack([u, v], -1), z


def depth_to_points(depth: Array, K: Array) -> Array:
    """Unproject a whole depth map.

    Args:
        depth: ``(..., H, W)`` z-depth.
        K: ``(..., 3, 3)`` intrinsics.

    Returns:
        ``(..., H, W, 3)`` points; invalid depths give whatever the formula gives (mask them).
    """
    height, width = depth.shape[-2:]
    u, v = pixel_grid(height, width, like=depth)
    xp = _backend(depth)
    uv = xp.stack([u, v], -1).reshape(height * width, 2)
    flat = depth.reshape(*depth.shape[:-2], height * width)
    return unproject(uv, flat, K).reshape(*depth.shape, 3)


def surface_normals(
    depth: np.ndarray,
    valid: np.ndarray,
    K: np.ndarray,
    pixels: np.ndarray | None = None,
) -> np.ndarray:
    """Unit surface normals of a depth map unprojected with ``K``, facing the camera.

    The cross product of the central differences along the image row and column of the
    unprojected points: exact for planes, and distorted by a wrong focal length exactly as
    the cloud is (the angle between two walls is what the focal model reads).

    Args:
        depth: ``(H, W)`` z-depth.
        valid: ``(H, W)`` bool mask.
        K: ``(3, 3)`` intrinsics.
        pixels: optional ``(N,)`` flat pixel indices (``v * W + u``) to compute the normals
            of, instead of every pixel (only their four neighbours are unprojected).

    Returns:
        ``(H, W, 3)``, or ``(N, 3)`` with ``pixels``, float64; zero where a pixel or one of
        its four neighbours is invalid or outside the image.
    """
    height, width = depth.shape
    dense = pixels is None
    if dense:
        pixels = np.arange(height * width)
    v, u = np.divmod(np.asarray(pixels), width)
    # Neighbours right, left, down, up; outside the image they count as invalid.
    du = np.array([1, -1, 0, 0])
    dv = np.array([0, 0, 1, -1])
    nu, nv = u[:, None] + du, v[:, None] + dv
    inside = (nu >= 0) & (nu < width) & (nv >= 0) & (nv < height)
    nu, nv = np.clip(nu, 0, width - 1), np.clip(nv, 0, height - 1)
    ok = valid[v, u] & (inside & valid[nv, nu]).all(1)
    uv = np.stack([nu, nv], -1).astype(np.float64)
    around = unproject(uv, depth[nv, nu].astype(np.float64), np.asarray(K, np.float64))
    normals = np.cross(around[:, 0] - around[:, 1], around[:, 2] - around[:, 3])
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    ok &= length[:, 0] > 0
    normals = np.where(ok[:, None], normals / np.maximum(length, 1e-300), 0.0)
    # Face the camera: a normal points against the ray through its pixel.
    ray = np.stack(
        [(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(u.shape)], -1
    )
    facing = np.where((normals * ray).sum(-1, keepdims=True) > 0, -1.0, 1.0)
    normals = normals * facing
    return normals.reshape(height, width, 3) if dense else normals


def valid_depth_mask(depth: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: depth is finite and positive."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(depth) & (depth > 0)


def invalid_depth_counts(depth: np.ndarray) -> dict[str, int]:
    """How many pixels are NaN, infinite, and zero or negative (each masked on reading)."""
    nan = np.isnan(depth)
    inf = np.isinf(depth)
    with np.errstate(invalid="ignore"):
        nonpositive = ~nan & ~inf & (depth <= 0)
    return {
        "nan": int(nan.sum()),
        "inf": int(inf.sum()),
        "zero": int(nonpositive.sum()),
    }


def normalize_depth(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The LeReS normalisation ``(d - min + 0.5) / p98(d - min + 0.5)`` over valid pixels.

    The one normalisation used by training samples and by inference, so both see the same
    input distribution. The minimum subtraction removes any additive shift of the input,
    and the division its scale; what is left of an affine distortion is a shift of the
    normalised depth (see :func:`affine_depth_with_shift`).

    Args:
        depth: ``(H, W)`` depth (any positive scale).
        valid: ``(H, W)`` bool mask of usable pixels (at least one).

    Returns:
        ``(H, W)`` float32 normalised depth, 0 at invalid pixels.
    """
    values = depth[valid].astype(np.float64)
    if values.size == 0:
        raise UserError("depth map has no valid pixel to normalise")
    moved = values - values.min() + NORMALISATION_OFFSET
    scale = np.percentile(moved, NORMALISATION_PERCENTILE)
    out = np.zeros(depth.shape, np.float32)
    out[valid] = moved / scale
    return out


def depth_statistics(depth: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """``(min, 98th percentile)`` of the valid depths (float64)."""
    values = depth[valid].astype(np.float64)
    return float(values.min()), float(np.percentile(values, NORMALISATION_PERCENTILE))


def normalized_shift(depth: np.ndarray, valid: np.ndarray) -> float:
    """The exact shift of ``normalize_depth(depth)`` relative to ``depth``'s geometry.

    ``normalize_depth(depth) - shift`` is proportional to ``depth``: the correction the
    shift model must predict when ``depth`` itself is undistorted (metric) depth.
    """
    low, high = depth_statistics(depth, valid)
    return (NORMALISATION_OFFSET - low) / (high - low + NORMALISATION_OFFSET)


def shift_bounds(depth: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Open interval of shifts reachable by :func:`affine_depth_with_shift` for this depth.

    A shift ``s`` needs a positive scale ``a = 0.5 (1 - s) / (s (q - m) + m)``, so
    ``-m / (q - m) < s < 1`` with ``m`` the minimum and ``q`` the 98th percentile.
    """
    low, high = depth_statistics(depth, valid)
    span = max(high - low, 1e-12)
    return -low / span, 1.0


def affine_depth_with_shift(
    depth: np.ndarray, valid: np.ndarray, shift: float, offset: float = 0.0
) -> tuple[np.ndarray, float]:
    """Emulate a depth network's affine output whose normalisation has a known shift.

    Returns ``a * depth + offset`` with the scale ``a > 0`` for which
    ``normalize_depth(result) - shift`` is proportional to ``depth`` (exactly, up to
    rounding): the LeReS normalisation removes ``offset``, so the only distortion an affine
    depth keeps after it is this shift, which the shift model learns to predict.

    Args:
        depth: ``(H, W)`` metric depth.
        valid: ``(H, W)`` bool mask.
        shift: the shift of the normalised result, inside :func:`shift_bounds`.
        offset: additive offset of the emulated output (removed by the normalisation).

    Returns:
        ``(H, W)`` float64 distorted depth (invalid pixels keep their input value) and ``a``.
    """
    low, high = depth_statistics(depth, valid)
    lower, upper = -low / max(high - low, 1e-12), 1.0  # shift_bounds, stats reused
    if not lower < shift < upper:
        raise UserError(
            f"shift {shift:.3f} is not reachable for this depth map "
            f"(needs {lower:.3f} < shift < {upper:.3f})"
        )
    scale = NORMALISATION_OFFSET * (1.0 - shift) / (shift * (high - low) + low)
    out = depth.astype(np.float64).copy()
    out[valid] = scale * out[valid] + offset
    return out, scale


def scale_focal(K: np.ndarray, ratio: float) -> np.ndarray:
    """Intrinsics with both focal lengths multiplied by ``ratio`` (principal point kept)."""
    out = np.array(K, np.float64, copy=True)
    out[0, 0] *= ratio
    out[1, 1] *= ratio
    return out
