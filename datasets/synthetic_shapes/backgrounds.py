"""Synthetic Shapes: the random smooth backgrounds, textures and the final blur of the reference
recipe, computed on a coarse grid and upsampled (the blur removes everything finer).
"""

from __future__ import annotations

import cv2
import numpy as np

from datasets.synthetic_shapes.raster import (
    _REFERENCE_DIM,
    _SUBPIXEL_BITS,
    Array,
    _fixed,
    _random_colors,
    random_color,
)


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
