"""Synthetic Shapes: painters, one per primitive, drawing onto an image and returning the exact
corners and junctions of what they drew (the reference's random choices, sizes relative to the
image).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from datasets.synthetic_shapes.backgrounds import texture
from datasets.synthetic_shapes.raster import (
    _REFERENCE_DIM,
    _SUBPIXEL_BITS,
    Array,
    _bbox,
    _different_color,
    _inside_polygon,
    _mean,
    paint_board,
    paint_polygon,
    paint_segment,
    random_color,
)
from geometry.homography import warp_points


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
