"""Synthetic Shapes: the procedural corner/junction dataset used to train MagicPoint.

Nine primitives (lines, polygon, multiple polygons, ellipses, star, checkerboard, stripes,
cube, noise) are drawn over a random smooth background following the recipe of the
SuperPoint TensorFlow reference (rpautrat/SuperPoint, ``synthetic_dataset.py``): same
random choices, with every size given relative to the image so that drawing at any
resolution reproduces the reference's 960x1280 proportions. Each primitive returns the
image and its exact ground truth: the corners and junctions of what was drawn that lie
inside the image, in the repository's pixel convention (x, y; centre of the top-left
pixel at (0, 0)).

Speed: the reference draws at 960x1280, blurs and resizes (about 36 images/s per core).
Here shapes are drawn directly at the output size with analytic anti-aliasing: every
polygon and thick segment gets the exact signed distance of each boundary pixel centre
to its outline (coverage ``clip(0.5 + d, 0, 1)``), and tilings (checkerboard, stripes)
are rasterised through their board homography with 4x4 supersampling of the boundary
pixels only. OpenCV's own ``LINE_AA`` fill is not used for labelled shapes because it
dilates by about 0.7 px and rounds vertical positions to whole pixels (measured), which
would bias every corner; with the analytic rasteriser the drawn corner is where the
label says, so ``supersample`` (draw larger, then ``INTER_AREA``) defaults to 1 and is
only kept as an option. The background's blobs and box blur (kernel >= 12% of the image)
are computed on a grid of at most 160 columns and upsampled: the blur removes everything
finer. The reference's thresholded-noise layer is replaced by its mean, since after that
blur its standard deviation is below one grey level.

Dataset: :class:`SyntheticShapes` (glue-factory style ``default_conf``). Sample ``j`` of a
primitive and split is a pure function of ``(seed, primitive, split, j)``; its
augmentation also depends on the epoch set with :meth:`SyntheticShapes.set_epoch`, so runs
are reproducible with any number of DataLoader workers. ``cache_dir`` reads shards written
by :func:`generate_main` (``data_gen.py synthetic_shapes``), identical to on-the-fly
samples.

Cache format: ``DIR/<primitive>/<split>-<k:04d>.npz`` (uncompressed, memory-mapped when
read), shard ``k`` holding samples ``[k * shard_size, ...)`` as ``images`` (n, H, W)
uint8, ``keypoints`` (K, 2) float32 (all samples concatenated), ``offsets`` (n + 1,)
int64 (sample ``i`` owns ``keypoints[offsets[i]:offsets[i + 1]]``) and ``meta`` (a JSON
string with the generation settings, checked on read).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import struct
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from datasets.augmentation import Augmentation, augmentation_defaults
from datasets.base import keypoint_sample
from geometry.homography import HOMOGRAPHY_PRESETS, points_inside, warp_points
from utils.config import merge_config, resolve_names
from utils.errors import UserError, run_cli

Array = np.ndarray

PRIMITIVES: tuple[str, ...] = (
    "draw_lines",
    "draw_polygon",
    "draw_multiple_polygons",
    "draw_ellipses",
    "draw_star",
    "draw_checkerboard",
    "draw_stripes",
    "draw_cube",
    "gaussian_noise",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Bumped whenever the drawing changes, so stale caches are refused.
GENERATOR_VERSION = 1
# The reference draws at 960x1280; its absolute pixel sizes are converted with this.
_REFERENCE_DIM = 1280.0
_SUBPIXEL_BITS = 4
_BOARD_SUPERSAMPLE = 4
# Homographic augmentation of the reference's magic-point_shapes.yaml.
MAGICPOINT_HOMOGRAPHY: dict[str, Any] = HOMOGRAPHY_PRESETS["magicpoint_shapes"]


# ----------------------------------------------------------------------------- colours


def random_color(rng: np.random.Generator, background: float) -> int:
    """Grey level in [0, 255] at least 30 away from ``background`` (reference rule)."""
    color = int(rng.integers(256))
    if abs(color - background) < 30:
        color = (color + 128) % 256
    return color


def _random_colors(rng: np.random.Generator, background: float, n: int) -> list[int]:
    """``n`` draws of :func:`random_color` at once."""
    colors = rng.integers(0, 256, size=n)
    colors = np.where(np.abs(colors - background) < 30, (colors + 128) % 256, colors)
    return colors.tolist()


def _different_color(
    rng: np.random.Generator,
    previous: Sequence[int],
    min_dist: int = 50,
    tries: int = 20,
) -> int:
    """Grey level at least ``min_dist`` from all ``previous`` (best effort, as reference)."""
    prev = np.asarray(previous)
    color = int(rng.integers(256))
    for _ in range(tries):
        if not np.any(np.abs(prev - color) < min_dist):
            break
        color = int(rng.integers(256))
    return color


# ------------------------------------------------------------------------- rasteriser


def _mean(image: Array) -> float:
    """Mean grey level (the reference's contrast reference for new colours)."""
    return float(cv2.mean(image)[0])


def _fixed(points: Array) -> Array:
    """Points as OpenCV fixed-point ``int32 (N, 1, 2)`` for ``shift=_SUBPIXEL_BITS``."""
    return np.rint(points * (1 << _SUBPIXEL_BITS)).astype(np.int32).reshape(-1, 1, 2)


def _bbox(
    points: Array, shape: tuple[int, int], pad: float
) -> tuple[int, int, int, int] | None:
    """Integer box ``(x0, y0, x1, y1)`` (exclusive ends) around points, clipped."""
    x0 = max(int(math.floor(points[:, 0].min() - pad)), 0)
    y0 = max(int(math.floor(points[:, 1].min() - pad)), 0)
    x1 = min(int(math.ceil(points[:, 0].max() + pad)) + 1, shape[1])
    y1 = min(int(math.ceil(points[:, 1].max() + pad)) + 1, shape[0])
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def _segment_distance(px: Array, py: Array, a: Array, b: Array) -> Array:
    """Distance from points ``(P,)`` to the nearest of segments ``a[i]-b[i]`` ``(E, 2)``."""
    d = b - a
    length2 = np.maximum((d * d).sum(1), 1e-12)
    rx = px[:, None] - a[:, 0]
    ry = py[:, None] - a[:, 1]
    t = np.clip((rx * d[:, 0] + ry * d[:, 1]) / length2, 0.0, 1.0)
    ex = rx - t * d[:, 0]
    ey = ry - t * d[:, 1]
    return np.sqrt((ex * ex + ey * ey).min(1))


def _inside_polygon(px: Array, py: Array, polygon: Array) -> Array:
    """Even-odd point-in-polygon test for points ``(P,)`` against ``polygon (E, 2)``."""
    a = polygon
    b = np.roll(polygon, -1, axis=0)
    y = py[:, None]
    crosses = (a[:, 1] > y) != (b[:, 1] > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    return (crosses & (px[:, None] < x_cross)).sum(1) % 2 == 1


def _nonzero(mask: Array) -> tuple[Array, Array]:
    """``np.nonzero`` of a 2-D uint8 mask (OpenCV's scan is several times faster)."""
    found = cv2.findNonZero(mask)
    if found is None:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    found = found.reshape(-1, 2)
    return found[:, 1], found[:, 0]


def _blend(region: Array, index: tuple[Array, Array], old: Array, alpha: Array, value):
    """``region[index] = old + alpha * (value - old)``, rounded, in place."""
    region[index] = np.rint(old + alpha * (value - old)).astype(np.uint8)


def paint_polygon(image: Array, polygon: Array, value: float | Array) -> None:
    """Fill a simple polygon with exact anti-aliasing, in place.

    Pixels inside take ``value``; pixels within about a pixel of the outline blend
    with coverage ``clip(0.5 + d, 0, 1)`` where ``d`` is the signed distance (inside >
    0) of the pixel centre to the outline, so the painted area and corners match
    ``polygon``.

    Args:
        image: uint8 ``(H, W)``, modified in place.
        polygon: ``(E, 2)`` vertices (x, y) in order.
        value: a grey level, or a float ``(H, W)`` image to paint from (a texture).
    """
    polygon = np.asarray(polygon, np.float64)
    box = _bbox(polygon, image.shape, 2.0)
    if box is None:
        return
    x0, y0, x1, y1 = box
    local = _fixed(polygon - (x0, y0))
    region = image[y0:y1, x0:x1]
    # OpenCV's fast fill is off by up to ~0.7 px near the outline; a 2 px wide band
    # over the outline covers that zone and gets the exact coverage instead.
    band = np.zeros(region.shape, np.uint8)
    cv2.polylines(band, [local], True, 1, 2, cv2.LINE_8, _SUBPIXEL_BITS)
    by, bx = _nonzero(band)
    old = region[by, bx].astype(np.float32)
    if np.isscalar(value):
        cv2.fillPoly(region, [local], int(value), cv2.LINE_8, _SUBPIXEL_BITS)
        band_value = value
    else:
        texture = value[y0:y1, x0:x1]
        inside = np.zeros(region.shape, np.uint8)
        cv2.fillPoly(inside, [local], 1, cv2.LINE_8, _SUBPIXEL_BITS)
        np.copyto(region, np.rint(texture).astype(np.uint8), where=inside.astype(bool))
        band_value = texture[by, bx]
    if len(by):
        px, py = bx + float(x0), by + float(y0)
        dist = _segment_distance(px, py, polygon, np.roll(polygon, -1, axis=0))
        signed = np.where(_inside_polygon(px, py, polygon), dist, -dist)
        alpha = np.clip(0.5 + signed, 0.0, 1.0).astype(np.float32)
        _blend(region, (by, bx), old, alpha, band_value)


def paint_segment(
    image: Array, p0: Array, p1: Array, thickness: float, value: float
) -> None:
    """Draw a thick segment with round caps (a capsule) with exact anti-aliasing.

    Args:
        image: uint8 ``(H, W)``, modified in place.
        p0, p1: end points (x, y); they are the centres of the round caps.
        thickness: full width in pixels (may be fractional).
        value: grey level.
    """
    ends = np.array([p0, p1], np.float64)
    box = _bbox(ends, image.shape, thickness / 2 + 2.0)
    if box is None:
        return
    x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    local = _fixed(ends - (x0, y0)).reshape(2, 2)
    width = int(math.ceil(thickness)) + 2
    cv2.line(mask, tuple(local[0]), tuple(local[1]), 1, width, 8, _SUBPIXEL_BITS)
    by, bx = _nonzero(mask)
    if not len(by):
        return
    dist = _segment_distance(bx + float(x0), by + float(y0), ends[:1], ends[1:])
    alpha = np.clip(0.5 + thickness / 2 - dist, 0.0, 1.0).astype(np.float32)
    region = image[y0:y1, x0:x1]
    _blend(region, (by, bx), region[by, bx].astype(np.float32), alpha, value)


def paint_board(
    image: Array,
    board_to_image: Array,
    board: Array,
    origin: tuple[int, int] = (0, 0),
) -> None:
    """Paint a tiling drawn in "board" coordinates, seen through a homography.

    ``board`` is a raster whose pixel ``(i, j)`` covers board coordinates
    ``[j, j + 1) x [i, i + 1)``; tiles whose boundaries fall on integer board
    coordinates (the reference's checkerboard cells and stripes do) are reproduced
    exactly: bilinear interpolation of the premultiplied raster crosses 50% right on
    each boundary, adjacent tiles share it without a background seam, and the board's
    outline blends with what is below.

    Args:
        image: uint8 ``(H, W)``, modified in place.
        board_to_image: ``(3, 3)`` homography from board coordinates to image pixels.
        board: float ``(Hb, Wb)`` grey levels, NaN where there is no board.
        origin: board coordinates ``(u, v)`` of the raster's top-left corner (to pass
            only the part of a large board that can be seen).
    """
    inside = ~np.isnan(board)
    color = np.where(inside, np.rint(board), 0).astype(np.uint8)
    alpha = inside.astype(np.uint8) * np.uint8(255)
    # Raster pixel (i, j) has its centre at board coordinates (j + 0.5, i + 0.5).
    shift = np.array([[1, 0, origin[0] + 0.5], [0, 1, origin[1] + 0.5], [0, 0, 1.0]])
    to_image = board_to_image @ shift
    # Only the part of the image the board can cover is resampled.
    hb, wb = board.shape
    outline = np.array(
        [[-0.5, -0.5], [wb - 0.5, -0.5], [wb - 0.5, hb - 0.5], [-0.5, hb - 0.5]]
    )
    corners = warp_points(outline, to_image)
    box = _bbox(corners, image.shape, 1.0) if np.all(np.isfinite(corners)) else None
    if box is None or np.any((to_image[2, :2] @ outline.T + to_image[2, 2]) <= 0):
        box = (0, 0, image.shape[1], image.shape[0])
    x0, y0, x1, y1 = box
    # A shrunk board would alias under bilinear sampling: warp onto a canvas f times
    # finer (f >= 1 / smallest local scale of the board) and area-average it back.
    centre = np.array([[wb / 2 - 0.5, hb / 2 - 0.5]])
    probe = warp_points(np.vstack([centre, centre + [1, 0], centre + [0, 1]]), to_image)
    jacobian = (probe[1:] - probe[:1]).T
    smallest = np.linalg.svd(jacobian, compute_uv=False)[-1]
    factor = (
        1 if not smallest > 0 else int(np.clip(math.ceil(1 / smallest - 1e-6), 1, 4))
    )
    offset = (factor - 1) / 2
    to_canvas = np.array(
        [
            [factor, 0, offset - factor * x0],
            [0, factor, offset - factor * y0],
            [0, 0, 1.0],
        ]
    )
    to_canvas = to_canvas @ to_image
    size = (x1 - x0, y1 - y0)

    def warp(raster: Array) -> Array:
        out = cv2.warpPerspective(
            raster,
            to_canvas,
            (size[0] * factor, size[1] * factor),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        ).astype(np.float32)
        if factor > 1:
            out = cv2.resize(out, size, interpolation=cv2.INTER_AREA)
        return out

    # Premultiplied colour: the board's own outline blends with what lies below.
    warped_color, warped_alpha = warp(color), warp(alpha)
    region = image[y0:y1, x0:x1]
    out = warped_color + (1.0 - warped_alpha / 255.0) * region
    region[...] = np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------- backgrounds


def background(
    rng: np.random.Generator,
    shape: tuple[int, int],
    nb_blobs: int = 100,
    rad_ratio: tuple[float, float] = (0.02, 0.031),
    kernel_ratio: tuple[float, float] = (150 / 1280, 500 / 1280),
) -> Array:
    """Random smooth background: a flat level plus blurred blobs (reference recipe).

    Defaults are the reference's ``generate_background`` settings relative to the image's
    larger side (blob radius 2-3.1%, box-blur kernel 150-500 px of 1280). The work is
    done on a grid of at most 160 columns and upsampled (see module docstring).

    Args:
        rng: random generator.
        shape: ``(H, W)``.

    Returns:
        uint8 ``(H, W)`` image.
    """
    h, w = shape
    dim = max(h, w)
    scale = min(1.0, 160.0 / dim)
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    # The reference thresholds uniform noise at a random level: only the fraction of
    # white pixels survives its blur.
    level = 255.0 * (1.0 - rng.integers(256) / 256.0)
    coarse = np.full((ch, cw), round(level), np.uint8)
    centres = _fixed(rng.uniform((0, 0), (cw, ch), size=(nb_blobs, 2)) - 0.5)
    radii = np.rint(
        rng.uniform(*rad_ratio, size=nb_blobs) * max(ch, cw) * (1 << _SUBPIXEL_BITS)
    )
    colors = _random_colors(rng, level, nb_blobs)
    for (x, y), r, color in zip(
        centres.reshape(-1, 2).tolist(), radii.tolist(), colors
    ):
        cv2.circle(coarse, (x, y), int(r), color, -1, cv2.LINE_8, _SUBPIXEL_BITS)
    kernel = max(1, int(rng.uniform(*kernel_ratio) * max(ch, cw)))
    coarse = cv2.blur(coarse, (kernel, kernel))
    if (ch, cw) != (h, w):
        coarse = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    return coarse


def texture(
    rng: np.random.Generator,
    shape: tuple[int, int],
    background_level: float,
    kernel_range: tuple[float, float] = (50, 100),
    cell: float | None = None,
) -> Array:
    """Random mottled fill for the multiple-polygons primitive.

    The reference paints 3000 random-colour discs (radius < 20 px of 1280, covering
    about 60% of the image) over a random colour and box-blurs them by 50-100 px. The
    same statistics are drawn here on a grid of 10-reference-pixel cells and blurred and
    upsampled, which costs a few hundred operations instead of 3000 disc draws.

    Args:
        rng: random generator.
        shape: ``(H, W)`` of the image.
        background_level: mean grey level the colours must contrast with.
        kernel_range: box-blur size in pixels of a 1280-wide image.
        cell: pixels per 10 reference pixels; by default from ``shape`` (pass the whole
            image's value when texturing only a part of it).

    Returns:
        float32 ``(H, W)`` texture on the 0-255 scale.
    """
    h, w = shape
    if cell is None:
        cell = max(h, w) * 10.0 / _REFERENCE_DIM
    ch, cw = max(1, round(h / cell)), max(1, round(w / cell))
    base = random_color(rng, background_level)
    colors = rng.integers(0, 256, size=(ch, cw))
    close = np.abs(colors - background_level) < 30
    colors = np.where(close, (colors + 128) % 256, colors)
    covered = rng.random((ch, cw)) < 0.6
    coarse = np.where(covered, colors, base).astype(np.float32)
    kernel = max(1, round(rng.uniform(*kernel_range) / 10.0))
    coarse = cv2.blur(coarse, (kernel, kernel))
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)


def final_blur(image: Array, blur_size: int) -> Array:
    """The reference's final Gaussian blur (``blur_size`` px at 1280 wide), rescaled."""
    if blur_size <= 1:
        return image
    sigma = 0.3 * ((blur_size - 1) * 0.5 - 1) + 0.8
    sigma *= max(image.shape) / _REFERENCE_DIM
    if sigma < 0.2:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigma)


# ---------------------------------------------------------------------------- painters


def _segments_cross(p0: Array, p1: Array, q0: Array, q1: Array) -> bool:
    """Whether any segment ``p0[i]-p1[i]`` properly crosses any ``q0[j]-q1[j]``."""
    if len(q0) == 0 or len(p0) == 0:
        return False

    def ccw(a, b, c):
        return (c[..., 1] - a[..., 1]) * (b[..., 0] - a[..., 0]) > (
            b[..., 1] - a[..., 1]
        ) * (c[..., 0] - a[..., 0])

    a, b = p0[:, None], p1[:, None]
    c, d = q0[None], q1[None]
    return bool(np.any((ccw(a, c, d) != ccw(b, c, d)) & (ccw(a, b, c) != ccw(a, b, d))))


def _random_polygon(
    rng: np.random.Generator, shape: tuple[int, int], max_sides: int
) -> tuple[Array, Array, float]:
    """Reference polygon sampler: corners in angular slices of a random circle.

    Corners closer than 0.01 px to their predecessor or with an angle of 120 degrees or
    more are removed (repeated until none is left, so every kept corner is sharp).

    Returns:
        ``(corners (N, 2), centre (2,), radius)``; N may be below 3 (caller rejects).
    """
    h, w = shape
    num = int(rng.integers(3, max_sides))
    min_dim = min(h, w)
    rad = min(max(rng.random() * min_dim / 2, min_dim / 10), (min_dim - 1) / 2)
    cx, cy = rng.uniform(rad, w - 1 - rad), rng.uniform(rad, h - 1 - rad)
    offsets = rng.random(num).tolist()
    factors = np.maximum(rng.random((num, 2)), 0.4).tolist()
    step = 2 * math.pi / num
    # Plain Python: with at most 7 corners, NumPy's per-call cost would dominate.
    points = []
    for k in range(num):
        angle = (k + offsets[k]) * step
        fx, fy = factors[k]
        points.append(
            (cx + fx * rad * math.cos(angle), cy + fy * rad * math.sin(angle))
        )
    min_cos = math.cos(2 * math.pi / 3)
    while len(points) >= 3:
        n = len(points)
        keep = []
        for k in range(n):
            (px, py), (ax, ay), (bx, by) = points[k - 1], points[k], points[(k + 1) % n]
            ux, uy, vx, vy = px - ax, py - ay, bx - ax, by - ay
            nu, nv = math.hypot(ux, uy), math.hypot(vx, vy)
            # Distinct from its predecessor and sharper than 120 degrees.
            keep.append(
                nu > 0.01 and nv > 0.01 and (ux * vx + uy * vy) > min_cos * nu * nv
            )
        if all(keep):
            break
        points = [p for p, k in zip(points, keep) if k]
    return np.array(points, np.float64).reshape(-1, 2), np.array([cx, cy]), rad


def paint_lines(image: Array, rng: np.random.Generator, nb_lines: int = 10) -> Array:
    """Up to ``nb_lines - 1`` non-crossing thick segments; keypoints are their ends."""
    h, w = image.shape
    level = _mean(image)
    min_dim = min(h, w)
    starts, ends = np.empty((0, 2)), np.empty((0, 2))
    for _ in range(int(rng.integers(1, nb_lines))):
        p = rng.uniform((0, 0), (w - 1, h - 1), size=(2, 2))
        if _segments_cross(p[:1], p[1:], starts, ends):
            continue
        starts, ends = np.vstack([starts, p[:1]]), np.vstack([ends, p[1:]])
        color = random_color(rng, level)
        thickness = rng.uniform(0.01, 0.02) * min_dim
        paint_segment(image, p[0], p[1], thickness, color)
    return np.stack([starts, ends], 1).reshape(-1, 2)


def paint_polygon_primitive(
    image: Array, rng: np.random.Generator, max_sides: int = 8
) -> Array:
    """One filled polygon with 3 to ``max_sides - 1`` corners; keypoints are the corners."""
    while True:
        points, _, _ = _random_polygon(rng, image.shape, max_sides)
        if len(points) >= 3:
            break
    paint_polygon(image, points, random_color(rng, _mean(image)))
    return points


def paint_multiple_polygons(
    image: Array,
    rng: np.random.Generator,
    max_sides: int = 8,
    nb_polygons: int = 30,
    kernel_boundaries: tuple[float, float] = (50, 100),
    texture_fn: Callable[..., Array] | None = None,
) -> Array:
    """Up to ``nb_polygons`` textured polygons that neither cross nor contain each other.

    ``texture_fn(rng, shape, level, kernel_boundaries, cell=...)`` replaces
    :func:`texture` (the benchmark plugs in the reference's 3000-disc texture).

    Besides the reference's edge-crossing and nested-circle tests, a polygon is rejected
    when it contains or lies inside an earlier one, so no labelled corner is hidden.
    """
    level = _mean(image)
    h, w = image.shape
    cell = max(h, w) * 10.0 / _REFERENCE_DIM
    polygons: list[tuple[Array, Array, float, float, float]] = []
    for _ in range(nb_polygons):
        points, centre, rad = _random_polygon(rng, image.shape, max_sides)
        if len(points) < 3:
            continue
        nxt = np.roll(points, -1, axis=0)
        cx, cy = centre
        rejected = False
        for other, other_next, ox, oy, orad in polygons:
            dist = math.hypot(cx - ox, cy - oy)
            if dist >= rad + orad:
                # Disjoint circles (each polygon lies in its circle): nothing to test.
                continue
            if dist + min(rad, orad) < max(rad, orad) or (
                _segments_cross(points, nxt, other, other_next)
                or _inside_polygon(points[:1, 0], points[:1, 1], other)[0]
                or _inside_polygon(other[:1, 0], other[:1, 1], points)[0]
            ):
                rejected = True
                break
        if rejected:
            continue
        polygons.append((points, nxt, cx, cy, rad))
        box = _bbox(points, image.shape, 2.0)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        fill = np.zeros(image.shape, np.float32)
        fill[y0:y1, x0:x1] = (texture_fn or texture)(
            rng, (y1 - y0, x1 - x0), level, kernel_boundaries, cell=cell
        )
        paint_polygon(image, points, fill)
    if not polygons:
        return np.empty((0, 2))
    return np.concatenate([p[0] for p in polygons], 0)


def paint_ellipses(
    image: Array, rng: np.random.Generator, nb_ellipses: int = 20
) -> Array:
    """Up to ``nb_ellipses`` non-overlapping filled ellipses; no keypoints."""
    h, w = image.shape
    min_dim = min(h, w) / 4
    level = _mean(image)
    centres, rads = np.empty((0, 2)), np.empty(0)
    for _ in range(nb_ellipses):
        ax = max(rng.random() * min_dim, min_dim / 5)
        ay = max(rng.random() * min_dim, min_dim / 5)
        max_rad = max(ax, ay)
        centre = np.array(
            [rng.uniform(max_rad, w - max_rad), rng.uniform(max_rad, h - max_rad)]
        )
        if np.any(max_rad > np.linalg.norm(centres - centre, axis=1) - rads):
            continue
        centres, rads = np.vstack([centres, centre]), np.append(rads, max_rad)
        color = random_color(rng, level)
        angle = rng.random() * 90
        one = 1 << _SUBPIXEL_BITS
        cv2.ellipse(
            image,
            tuple(int(v) for v in np.rint(centre * one)),
            (int(ax * one), int(ay * one)),
            angle,
            0,
            360,
            color,
            -1,
            cv2.LINE_AA,
            _SUBPIXEL_BITS,
        )
    return np.empty((0, 2))


def paint_star(image: Array, rng: np.random.Generator, nb_branches: int = 6) -> Array:
    """3 to ``nb_branches - 1`` thick branches from a centre; keypoints: centre and tips."""
    h, w = image.shape
    num = int(rng.integers(3, nb_branches))
    min_dim = min(h, w)
    thickness = rng.uniform(0.01, 0.02) * min_dim
    rad = min(max(rng.random() * min_dim / 2, min_dim / 5), (min_dim - 1) / 2)
    centre = np.array([rng.uniform(rad, w - 1 - rad), rng.uniform(rad, h - 1 - rad)])
    slices = np.linspace(0, 2 * math.pi, num + 1)
    angles = slices[:-1] + rng.random(num) * (2 * math.pi / num)
    factors = np.maximum(rng.random((num, 2)), 0.3)
    tips = centre + factors * rad * np.stack([np.cos(angles), np.sin(angles)], 1)
    level = _mean(image)
    for tip in tips:
        paint_segment(image, centre, tip, thickness, random_color(rng, level))
    return np.vstack([centre, tips])


def _board_transform(
    rng: np.random.Generator,
    shape: tuple[int, int],
    transform_params: tuple[float, float],
) -> Array:
    """Reference board warp: a random affine map followed by a milder random homography."""
    h, w = shape
    alpha = max(h, w) * (transform_params[0] + rng.random() * transform_params[1])
    centre = np.array([w // 2, h // 2], np.float64)
    half = min(h, w) // 3
    square = np.float32(
        [
            centre + half,
            [centre[0] + half, centre[1] - half],
            centre - half,
            [centre[0] - half, centre[1] + half],
        ]
    )
    moved = square + rng.uniform(-alpha, alpha, size=(4, 2)).astype(np.float32)
    affine = np.vstack([cv2.getAffineTransform(square[:3], moved[:3]), [0, 0, 1]])
    moved = square + rng.uniform(-alpha / 2, alpha / 2, size=(4, 2)).astype(np.float32)
    perspective = cv2.getPerspectiveTransform(square, moved)
    return perspective @ affine


def paint_checkerboard(
    image: Array,
    rng: np.random.Generator,
    max_rows: int = 7,
    max_cols: int = 7,
    transform_params: tuple[float, float] = (0.05, 0.15),
) -> Array:
    """A warped checkerboard of 3-6 x 3-6 cells plus random lines along its grid.

    Keypoints are the warped grid vertices (inner X-junctions, border T-junctions and
    the four outer corners) that fall inside the image, as in the reference.
    """
    h, w = image.shape
    level = _mean(image)
    rows, cols = int(rng.integers(3, max_rows)), int(rng.integers(3, max_cols))
    # Integer cell size (as the reference) puts every cell edge on a raster boundary.
    size = max(1, min((w - 1) // cols, (h - 1) // rows))
    gx, gy = np.meshgrid(np.arange(cols + 1), np.arange(rows + 1))
    grid = size * np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)
    transform = _board_transform(rng, image.shape, transform_params)
    points = warp_points(grid, transform)
    colors = np.zeros((rows, cols), np.float64)
    for i in range(rows):
        for j in range(cols):
            if i == 0 and j == 0:
                colors[0, 0] = random_color(rng, level)
                continue
            neighbours = []
            if i:
                neighbours.append(colors[i - 1, j])
            if j:
                neighbours.append(colors[i, j - 1])
            colors[i, j] = _different_color(rng, neighbours)
    board = np.repeat(np.repeat(colors, size, axis=0), size, axis=1)
    paint_board(image, transform, board)
    min_dim = min(h, w)
    thickness = rng.uniform(0.01, 0.015) * min_dim
    for _ in range(int(rng.integers(2, rows + 2))):
        r, c1, c2 = (
            rng.integers(rows + 1),
            rng.integers(cols + 1),
            rng.integers(cols + 1),
        )
        color = random_color(rng, level)
        a, b = points[r * (cols + 1) + c1], points[r * (cols + 1) + c2]
        paint_segment(image, a, b, thickness, color)
    for _ in range(int(rng.integers(2, cols + 2))):
        c, r1, r2 = (
            rng.integers(cols + 1),
            rng.integers(rows + 1),
            rng.integers(rows + 1),
        )
        color = random_color(rng, level)
        a, b = points[r1 * (cols + 1) + c], points[r2 * (cols + 1) + c]
        paint_segment(image, a, b, thickness, color)
    return points


def paint_stripes(
    image: Array,
    rng: np.random.Generator,
    max_nb_cols: int = 13,
    min_width_ratio: float = 0.04,
    transform_params: tuple[float, float] = (0.1, 0.1),
) -> Array:
    """Warped vertical stripes on a board larger than the image, plus random lines.

    Keypoints are the ends of the stripe boundaries (top and bottom edge of the board)
    inside the image, as in the reference.
    """
    h, w = image.shape
    level = _mean(image)
    board_h = int(h * (1 + rng.random()))
    board_w = int(w * (1 + rng.random()))
    num = int(rng.integers(5, max_nb_cols))
    cols = np.concatenate([board_w * rng.random(num - 1), [0, board_w - 1]])
    # Integer stripe edges (as the reference) fall on raster boundaries.
    cols = np.unique(cols.astype(int))
    min_width = min(h, w) * min_width_ratio
    cols = cols[np.diff(np.append(cols, board_w + min_width)) >= min_width]
    num = len(cols) - 1
    top = np.stack([cols, np.zeros_like(cols)], 1).astype(np.float64)
    bottom = np.stack([cols, np.full_like(cols, board_h - 1)], 1).astype(np.float64)
    transform = _board_transform(rng, image.shape, transform_params)
    points = warp_points(np.vstack([top, bottom]), transform)
    color = random_color(rng, level)
    row = np.full(board_w, np.nan)
    for i in range(num):
        color = (color + 128 + int(rng.integers(-30, 30))) % 256
        row[cols[i] : cols[i + 1]] = color
    if num > 0:
        # Only the part of the board that can land in the image is rasterised.
        corners = np.array([[-1, -1], [w, -1], [w, h], [-1, h]], np.float64)
        seen = warp_points(corners, np.linalg.inv(transform))
        if np.all(np.isfinite(seen)):
            u0 = int(np.clip(np.floor(seen[:, 0].min()) - 1, 0, board_w))
            u1 = int(np.clip(np.ceil(seen[:, 0].max()) + 1, 0, board_w))
            v0 = int(np.clip(np.floor(seen[:, 1].min()) - 1, 0, board_h - 1))
            v1 = int(np.clip(np.ceil(seen[:, 1].max()) + 1, 0, board_h - 1))
        else:
            u0, u1, v0, v1 = 0, board_w, 0, board_h - 1
        if u1 > u0 and v1 > v0:
            board = np.broadcast_to(row[u0:u1], (v1 - v0, u1 - u0))
            paint_board(image, transform, board, (u0, v0))
    thickness = rng.uniform(0.01, 0.015) * min(h, w)
    for _ in range(int(rng.integers(2, 5))):
        edge = (0, num + 1)[int(rng.integers(2))]
        c1, c2 = rng.integers(num + 1), rng.integers(num + 1)
        color = random_color(rng, level)
        paint_segment(image, points[edge + c1], points[edge + c2], thickness, color)
    for _ in range(int(rng.integers(2, num + 2))):
        c = int(rng.integers(num + 1))
        color = random_color(rng, level)
        paint_segment(image, points[c], points[c + num + 1], thickness, color)
    return points


def _rotation(axis: int, angle: float) -> Array:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(0, 1), (1, 2), (0, 2)][axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


def paint_cube(
    image: Array,
    rng: np.random.Generator,
    min_size_ratio: float = 0.2,
    min_angle_rot: float = math.pi / 10,
    scale_interval: tuple[float, float] = (0.4, 0.6),
    trans_interval: tuple[float, float] = (0.5, 0.2),
) -> Array:
    """Orthographic projection of a rotated box with three visible faces.

    Vertices are numbered by bits (x, y, z) so that 0 is hidden behind the faces around
    vertex 7 (the draw is resampled in the rare case where either projects onto the
    silhouette). Keypoints are the seven visible vertices inside the image.
    """
    h, w = image.shape
    level = _mean(image)
    min_dim = min(h, w)
    bits = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], np.float64)
    while True:
        sides = min_dim * min_size_ratio + rng.random(3) * 2 * min_dim / 3
        angles = rng.random(3) * 3 * min_angle_rot + min_angle_rot
        scaling = np.diag(scale_interval[0] + rng.random(3) * scale_interval[1])
        # Reference order: about z, then x, then y (with the reference's sign).
        rot = (
            _rotation(0, angles[0]) @ _rotation(1, angles[1]) @ _rotation(2, angles[2])
        )
        shift = np.array(
            [
                w * trans_interval[0] + rng.uniform(-1, 1) * w * trans_interval[1],
                h * trans_interval[0] + rng.uniform(-1, 1) * h * trans_interval[1],
            ]
        )
        cube = (scaling @ rot @ (bits * sides).T).T[:, :2] + shift
        hull = cv2.convexHull(cube.astype(np.float32), returnPoints=False).ravel()
        if len(hull) == 6 and 0 not in hull and 7 not in hull:
            break
    face_color = random_color(rng, level)
    # The three faces around vertex 7 tile the silhouette: painting it as one polygon
    # avoids anti-aliased seams between faces of the same colour.
    paint_polygon(image, cube[hull], face_color)
    faces = np.array([[7, 3, 1, 5], [7, 5, 4, 6], [7, 6, 2, 3]])
    thickness = rng.uniform(0.003, 0.015) * min_dim
    for face in faces:
        for j in range(4):
            color = (face_color + 128 + int(rng.integers(-64, 64))) % 256
            paint_segment(
                image, cube[face[j]], cube[face[(j + 1) % 4]], thickness, color
            )
    return cube[1:]


def paint_gaussian_noise(image: Array, rng: np.random.Generator) -> Array:
    """Replace the image by uniform noise (as the reference, despite the name)."""
    image[...] = rng.integers(0, 256, size=image.shape, dtype=np.uint8)
    return np.empty((0, 2))


PAINTERS: dict[str, Callable[..., Array]] = {
    "draw_lines": paint_lines,
    "draw_polygon": paint_polygon_primitive,
    "draw_multiple_polygons": paint_multiple_polygons,
    "draw_ellipses": paint_ellipses,
    "draw_star": paint_star,
    "draw_checkerboard": paint_checkerboard,
    "draw_stripes": paint_stripes,
    "draw_cube": paint_cube,
    "gaussian_noise": paint_gaussian_noise,
}


# -------------------------------------------------------------------------- primitives


def _render(
    name: str, rng: np.random.Generator, shape: tuple[int, int], blur_size: int
) -> tuple[Array, Array]:
    image = background(rng, shape)
    points = np.asarray(PAINTERS[name](image, rng), np.float64).reshape(-1, 2)
    image = final_blur(image, blur_size)
    points = points[points_inside(points, shape)]
    return image, points.astype(np.float32)


def draw_lines(
    rng: np.random.Generator, shape: tuple[int, int], blur_size: int = 11
) -> tuple[Array, Array]:
    """Background + non-crossing thick lines.

    Args:
        rng: random generator (the only source of randomness).
        shape: ``(H, W)`` drawn directly at this size.
        blur_size: the reference's final Gaussian kernel at 1280 px width (rescaled).

    Returns:
        ``(image, keypoints)``: uint8 ``(H, W)`` and float32 ``(N, 2)`` (x, y) line
        ends inside the image. The other primitives share this signature.
    """
    return _render("draw_lines", rng, shape, blur_size)


def draw_polygon(
    rng: np.random.Generator, shape: tuple[int, int], blur_size: int = 11
) -> tuple[Array, Array]:
    """Background + one polygon; keypoints are its corners (see :func:`draw_lines`)."""
    return _render("draw_polygon", rng, shape, blur_size)


def draw_multiple_polygons(
    rng: np.random.Generator, shape: tuple[int, int], blur_size: int = 11
) -> tuple[Array, Array]:
    """Background + textured polygons; keypoints are their corners."""
    return _render("draw_multiple_polygons", rng, shape, blur_size)


def draw_ellipses(
    rng: np.random.Generator, shape: tuple[int, int], blur_size: int = 11
) -> tuple[Array, Array]:
    """Background + ellipses; no keypoints (an empty ``(0, 2)`` array)."""
    return _render("draw_ellipses", rng, shape, blur_size)


def draw_star(
    rng: np.random.Generator, shape: tuple[int, int], blur_size: int = 11
) -> tuple[Array, Array]:
    """Background + a star of thick branches; keypoints are its centre and tips."""
    return _render("draw_star", rng, shape, blur_size)


def draw_checkerboard(
    rng: np.random.Generator, shape: tuple[int, int], blur_size: int = 11
) -> tuple[Array, Array]:
    """Background + a warped checkerboard; keypoints are its visible grid vertices."""
    return _render("draw_checkerboard", rng, shape, blur_size)


def draw_stripes(
    rng: np.random.Generator, shape: tuple[int, int], blur_size: int = 11
) -> tuple[Array, Array]:
    """Background + warped stripes; keypoints are the visible stripe-boundary ends."""
    return _render("draw_stripes", rng, shape, blur_size)


def draw_cube(
    rng: np.random.Generator, shape: tuple[int, int], blur_size: int = 11
) -> tuple[Array, Array]:
    """Background + a projected box; keypoints are its visible vertices."""
    return _render("draw_cube", rng, shape, blur_size)


def gaussian_noise(
    rng: np.random.Generator, shape: tuple[int, int], blur_size: int = 11
) -> tuple[Array, Array]:
    """Uniform noise image; no keypoints."""
    return _render("gaussian_noise", rng, shape, blur_size)


PRIMITIVE_FUNCTIONS: dict[str, Callable[..., tuple[Array, Array]]] = {
    "draw_lines": draw_lines,
    "draw_polygon": draw_polygon,
    "draw_multiple_polygons": draw_multiple_polygons,
    "draw_ellipses": draw_ellipses,
    "draw_star": draw_star,
    "draw_checkerboard": draw_checkerboard,
    "draw_stripes": draw_stripes,
    "draw_cube": draw_cube,
    "gaussian_noise": gaussian_noise,
}


def generate_sample(
    primitive: str,
    rng: np.random.Generator,
    image_size: Sequence[int],
    supersample: int = 1,
    blur_size: int = 11,
) -> tuple[Array, Array]:
    """Draw one sample at ``image_size``, optionally supersampled.

    With ``supersample = s > 1`` the primitive is drawn at ``s`` times the size and
    reduced with ``INTER_AREA``; keypoints follow with the pixel-centre convention
    ``x -> (x + 0.5) / s - 0.5``.

    Returns:
        uint8 ``(H, W)`` image and float32 ``(N, 2)`` keypoints inside it.
    """
    h, w = int(image_size[0]), int(image_size[1])
    image, points = PRIMITIVE_FUNCTIONS[primitive](
        rng, (h * supersample, w * supersample), blur_size=blur_size
    )
    if supersample > 1:
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        points = (points + 0.5) / supersample - 0.5
        points = points[points_inside(points, (h, w))]
    return image, points.astype(np.float32)


def parse_primitives(primitives: str | Sequence[str]) -> list[str]:
    """Resolve ``'all'``, a name or a list of names; unknown names raise UserError."""
    names = resolve_names(primitives, PRIMITIVES, "synthetic shapes primitive")
    if len(set(names)) != len(names) or not names:
        raise UserError(f"primitives must be a non-empty list without repeats: {names}")
    return names


def content_rng(
    seed: int, primitive: str, split: str, index: int
) -> np.random.Generator:
    """Generator of sample ``index``'s content: a pure function of its identity."""
    return np.random.default_rng(
        [seed, 0, PRIMITIVES.index(primitive), SPLITS.index(split), index]
    )


def augmentation_rng(
    seed: int, primitive: str, split: str, index: int, epoch: int
) -> np.random.Generator:
    """Generator of sample ``index``'s augmentation in ``epoch`` (independent stream)."""
    return np.random.default_rng(
        [seed, 1, PRIMITIVES.index(primitive), SPLITS.index(split), index, epoch]
    )


# ----------------------------------------------------------------------------- config


def _settings(conf: dict) -> dict:
    """The config entries that determine image content (stored in cache metadata)."""
    return {
        "seed": int(conf["seed"]),
        "image_size": [int(v) for v in conf["image_size"]],
        "supersample": int(conf["supersample"]),
        "blur_size": int(conf["blur_size"]),
        "version": GENERATOR_VERSION,
    }


# ------------------------------------------------------------------------------ cache


def shard_path(root: Path, primitive: str, split: str, shard: int) -> Path:
    """Location of shard ``shard`` of a primitive/split in a cache directory."""
    return Path(root) / primitive / f"{split}-{shard:04d}.npz"


def _npz_memmap(path: Path) -> dict[str, Array]:
    """Open the arrays of an uncompressed ``.npz`` as read-only memory maps.

    ``np.load`` cannot memory-map ``.npz`` members; since our shards are stored without
    compression, each member's ``.npy`` payload sits contiguously in the file and can be
    mapped directly, so DataLoader workers share the page cache instead of copying.
    """
    arrays: dict[str, Array] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if info.compress_type != zipfile.ZIP_STORED:
                arrays[name] = np.load(archive.open(info))
                continue
            handle.seek(info.header_offset)
            header = handle.read(30)
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            handle.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            if dtype.hasobject:
                raise UserError(f"{path}: member {name!r} holds Python objects")
            if dtype.kind == "U" or math.prod(shape) == 0:
                arrays[name] = np.load(archive.open(info))
                continue
            arrays[name] = np.memmap(
                path,
                dtype=dtype,
                mode="r",
                offset=handle.tell(),
                shape=shape,
                order="F" if fortran else "C",
            )
    return arrays


def _read_meta(path: Path) -> dict:
    try:
        with np.load(path) as data:
            return json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: not a synthetic shapes shard ({err})") from err


class _ShardIndex:
    """Locates and lazily memory-maps the cached shards of one primitive/split."""

    def __init__(
        self, root: Path, primitive: str, split: str, size: int, settings: dict
    ) -> None:
        self.shards: list[tuple[int, int, Path]] = []
        folder = Path(root) / primitive
        for path in sorted(folder.glob(f"{split}-*.npz")):
            meta = _read_meta(path)
            stored = {k: meta.get(k) for k in settings}
            if stored != settings:
                raise UserError(
                    f"{path}: generated with {stored}, but the config asks for {settings}"
                )
            self.shards.append((int(meta["start"]), int(meta["count"]), path))
        covered = 0
        for start, count, _ in self.shards:
            if start > covered:
                break
            covered = max(covered, start + count)
        if covered < size:
            raise UserError(
                f"cache {root} holds only {covered} {split} images of {primitive} "
                f"(need {size}); run: data_gen.py synthetic_shapes --out {root} "
                f"--primitives {primitive} --splits {split}"
            )
        self._arrays: dict[int, dict[str, Array]] = {}

    def __getstate__(self) -> dict:
        # Memory maps are reopened in each worker rather than pickled.
        return {"shards": self.shards, "_arrays": {}}

    def get(self, index: int) -> tuple[Array, Array]:
        for k, (start, count, path) in enumerate(self.shards):
            if start <= index < start + count:
                if k not in self._arrays:
                    self._arrays[k] = _npz_memmap(path)
                arrays = self._arrays[k]
                i = index - start
                lo, hi = arrays["offsets"][i], arrays["offsets"][i + 1]
                return np.array(arrays["images"][i]), np.array(
                    arrays["keypoints"][lo:hi]
                )
        raise IndexError(index)


# ---------------------------------------------------------------------------- dataset


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
        "split_sizes": {"train": 10000, "val": 200, "test": 500},
        "seed": 0,
        "cache_dir": None,
        "augmentation": augmentation_defaults(valid_border_margin=2),
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
        return {
            **keypoint_sample(image, points, mask),
            "primitive": primitive,
            "index": int(index),
        }


# ------------------------------------------------------------------------- generation


def _write_shard(task: tuple[str, str, int, int, int, str, dict]) -> int:
    """Generate and atomically write one shard; returns the number of images."""
    primitive, split, shard, start, count, root, settings = task
    size = settings["image_size"]
    images = np.empty((count, size[0], size[1]), np.uint8)
    keypoints, offsets = [], [0]
    for i in range(count):
        rng = content_rng(settings["seed"], primitive, split, start + i)
        images[i], points = generate_sample(
            primitive, rng, size, settings["supersample"], settings["blur_size"]
        )
        keypoints.append(points)
        offsets.append(offsets[-1] + len(points))
    meta = {**settings, "primitive": primitive, "split": split, "start": start}
    meta["count"] = count
    path = shard_path(Path(root), primitive, split, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(
                handle,
                images=images,
                keypoints=np.concatenate(keypoints).astype(np.float32).reshape(-1, 2),
                offsets=np.asarray(offsets, np.int64),
                meta=np.array(json.dumps(meta)),
            )
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return count


def _worker_init() -> None:
    # One OpenCV thread per process: parallelism comes from the processes.
    cv2.setNumThreads(1)


def _parse_split_sizes(values: Sequence[str]) -> dict[str, int]:
    sizes = dict(SyntheticShapes.default_conf["split_sizes"])
    for item in values:
        name, _, number = item.partition("=")
        if name not in SPLITS or not number.isdigit():
            raise UserError(
                f"--split-sizes: expected SPLIT=N with SPLIT in {SPLITS}, got {item!r}"
            )
        sizes[name] = int(number)
    return sizes


def generate_main(argv: list[str] | None = None) -> int:
    """Command line of ``data_gen.py synthetic_shapes``: write the cache in parallel.

    Output is identical for any ``--workers``; finished shards are skipped on a re-run.
    """
    parser = argparse.ArgumentParser(
        prog="data_gen.py synthetic_shapes",
        description="Generate the Synthetic Shapes cache read by "
        "SyntheticShapes(conf={'cache_dir': OUT, ...}).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--primitives", nargs="+", default=["all"], help="names or 'all'"
    )
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument(
        "--size", nargs=2, type=int, default=[120, 160], metavar=("H", "W")
    )
    parser.add_argument(
        "--supersample", type=int, default=1, help="draw at this multiple"
    )
    parser.add_argument(
        "--blur-size", type=int, default=11, help="reference blur kernel"
    )
    parser.add_argument(
        "--split-sizes",
        nargs="*",
        default=[],
        metavar="SPLIT=N",
        help="images per primitive (defaults: train=10000 val=200 test=500)",
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="images per file")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def run() -> int:
        from tqdm import tqdm

        primitives = parse_primitives(
            "all" if args.primitives == ["all"] else args.primitives
        )
        if min(args.size) < 8 or args.supersample < 1 or args.seed < 0:
            raise UserError("--size must be >= 8, --supersample >= 1, --seed >= 0")
        if args.shard_size < 1 or args.workers < 1:
            raise UserError("--shard-size and --workers must be >= 1")
        sizes = _parse_split_sizes(args.split_sizes)
        settings = _settings(
            {
                "seed": args.seed,
                "image_size": args.size,
                "supersample": args.supersample,
                "blur_size": args.blur_size,
            }
        )
        tasks, skipped = [], 0
        for primitive in primitives:
            for split in args.splits:
                for shard, start in enumerate(range(0, sizes[split], args.shard_size)):
                    count = min(args.shard_size, sizes[split] - start)
                    path = shard_path(args.out, primitive, split, shard)
                    if path.exists():
                        meta = _read_meta(path)
                        if {k: meta.get(k) for k in settings} != settings or (
                            meta.get("start"),
                            meta.get("count"),
                        ) != (start, count):
                            raise UserError(
                                f"{path} exists with other settings; use another --out"
                            )
                        skipped += count
                        continue
                    task = (
                        primitive,
                        split,
                        shard,
                        start,
                        count,
                        str(args.out),
                        settings,
                    )
                    tasks.append(task)
        total = sum(t[4] for t in tasks)
        print(
            f"synthetic shapes: {total} images to write to {args.out} "
            f"({skipped} already there), {args.workers} worker(s)",
            file=sys.stderr,
        )
        with tqdm(total=total, unit="img", desc="synthetic shapes") as bar:
            if args.workers == 1:
                _worker_init()
                for task in tasks:
                    bar.update(_write_shard(task))
            else:
                # forkserver: workers forked from a clean server process, so no thread
                # pool (OpenCV, OpenMP) of this process is inherited mid-state (plain
                # fork deadlocked after DataLoader workers had run).
                context = mp.get_context("forkserver")
                context.set_forkserver_preload(["datasets.synthetic_shapes"])
                with context.Pool(args.workers, _worker_init) as pool:
                    for done in pool.imap_unordered(_write_shard, tasks):
                        bar.update(done)
        return 0

    return run_cli(run, parser.prog)


# ------------------------------------------------------------------------------ show


def render_grid(
    dataset: SyntheticShapes, per_primitive: int = 4, scale: int = 2
) -> Array:
    """Grid of samples (one row per primitive) with keypoints drawn as red circles.

    Returns:
        uint8 ``(rows * H * scale, cols * W * scale, 3)`` BGR image.
    """
    h, w = dataset.image_size
    rows = []
    for p, _ in enumerate(dataset.primitives):
        tiles = []
        for k in range(per_primitive):
            sample = dataset[p * dataset.split_size + k % dataset.split_size]
            image = (sample["image"][0].numpy() * 255).round().astype(np.uint8)
            tile = cv2.cvtColor(
                cv2.resize(
                    image, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST
                ),
                cv2.COLOR_GRAY2BGR,
            )
            for x, y in sample["keypoints"].numpy():
                centre = (
                    int(round((x + 0.5) * scale - 0.5)),
                    int(round((y + 0.5) * scale - 0.5)),
                )
                cv2.circle(tile, centre, 3, (0, 0, 255), 1, cv2.LINE_AA)
            cv2.rectangle(tile, (0, 0), (w * scale - 1, h * scale - 1), (80, 80, 80), 1)
            tiles.append(tile)
        row = np.concatenate(tiles, 1)
        cv2.putText(
            row,
            sample["primitive"],
            (4, 14),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 255, 255),
            1,
            cv2.LINE_AA,
        )
        rows.append(row)
    return np.concatenate(rows, 0)


def main(argv: list[str] | None = None) -> int:
    """``python -m datasets.synthetic_shapes --show``: write a PNG grid of samples."""
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic_shapes",
        description="Show Synthetic Shapes samples (one row per primitive).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--show", action="store_true", help="write the sample grid")
    parser.add_argument("--out", type=Path, default=Path("synthetic_shapes.png"))
    parser.add_argument("--split", default="val", choices=SPLITS)
    parser.add_argument("--per-primitive", type=int, default=4)
    parser.add_argument(
        "--size", nargs=2, type=int, default=[120, 160], metavar=("H", "W")
    )
    parser.add_argument("--augment", action="store_true", help="enable augmentation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def run() -> int:
        if not args.show:
            parser.print_help()
            return 0
        enable = {"enable": args.augment}
        conf = {
            "image_size": args.size,
            "seed": args.seed,
            "split_sizes": {args.split: max(args.per_primitive, 1)},
            "augmentation": {
                "splits": [args.split],
                "photometric": enable,
                "homographic": enable,
            },
        }
        grid = render_grid(SyntheticShapes(conf, args.split), args.per_primitive)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp.png")
        if not cv2.imwrite(str(tmp), grid):
            raise UserError(f"could not write {args.out}")
        os.replace(tmp, args.out)
        print(f"wrote {args.out}")
        return 0

    return run_cli(run, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
