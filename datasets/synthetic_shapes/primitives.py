"""Synthetic Shapes: the nine primitives (background + painter + blur) and the per-sample random
streams, so that sample ``j`` is a pure function of ``(seed, primitive, split, j)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from datasets.synthetic_shapes.backgrounds import background, final_blur
from datasets.synthetic_shapes.painters import PAINTERS
from datasets.synthetic_shapes.raster import (
    GENERATOR_VERSION,
    PRIMITIVES,
    SPLITS,
    Array,
)
from geometry.homography import points_inside
from utils.config import resolve_names
from utils.errors import UserError


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
