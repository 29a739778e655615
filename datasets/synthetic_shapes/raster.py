"""Synthetic Shapes: constants, random colours and the exact anti-aliased rasteriser.

Polygons and thick segments get the exact signed distance of each boundary pixel centre to their
outline (coverage ``clip(0.5 + d, 0, 1)``); tilings are rasterised through their board homography
with supersampling of the boundary pixels only. See the package docstring for why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from geometry.homography import warp_points

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
# Images per primitive and split, as the reference.
DEFAULT_SPLIT_SIZES: dict[str, int] = {"train": 10000, "val": 200, "test": 500}
# Bumped whenever the drawing changes, so stale caches are refused.
GENERATOR_VERSION = 1
# The reference draws at 960x1280; its absolute pixel sizes are converted with this.
_REFERENCE_DIM = 1280.0
_SUBPIXEL_BITS = 4
_BOARD_SUPERSAMPLE = 4


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
