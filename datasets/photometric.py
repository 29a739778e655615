"""Photometric augmentation of grayscale images, selectable by name.

The six primitives and their default parameters are those of the SuperPoint reference
(rpautrat/SuperPoint, ``magic-point_shapes.yaml``): brightness change up to +-75, contrast
factor in [0.3, 1.8], additive Gaussian noise with sigma up to 15, salt-and-pepper
("speckle") noise with probability up to 0.0035, additive shade from blurred ellipses
(transparency -0.5..0.8, Gaussian kernel 50-100 px) and motion blur up to 7 px. Every
primitive works on a float32 image on the 0-255 scale so these numbers apply unchanged;
:func:`photometric_augment` converts from and back to the caller's dtype (uint8 on 0-255,
float on 0-1, the repository's convention for float images). All randomness comes from
the given ``numpy.random.Generator``, so an augmentation is reproducible from its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from utils.config import resolve_names
from utils.errors import UserError

Array = np.ndarray

DEFAULT_PARAMS: dict[str, dict] = {
    "random_brightness": {"max_abs_change": 75.0},
    "random_contrast": {"strength_range": (0.3, 1.8)},
    "additive_gaussian_noise": {"stddev_range": (0.0, 15.0)},
    "additive_speckle_noise": {"prob_range": (0.0, 0.0035)},
    "additive_shade": {
        "nb_ellipses": 20,
        "transparency_range": (-0.5, 0.8),
        "kernel_size_range": (50, 100),
    },
    "motion_blur": {"max_kernel_size": 7},
}
AUGMENTATIONS: tuple[str, ...] = tuple(DEFAULT_PARAMS)


def random_brightness(
    image: Array, rng: np.random.Generator, max_abs_change: float = 75.0
) -> Array:
    """Add one random offset in ``[-max_abs_change, max_abs_change]`` to every pixel.

    Args:
        image: float32 ``(H, W[, C])`` on the 0-255 scale.
        rng: random generator.
        max_abs_change: largest offset, on the 0-255 scale.

    Returns:
        The shifted image, clipped to [0, 255], same shape.
    """
    delta = rng.uniform(-max_abs_change, max_abs_change)
    return np.clip(image + np.float32(delta), 0, 255)


def random_contrast(
    image: Array,
    rng: np.random.Generator,
    strength_range: Sequence[float] = (0.3, 1.8),
) -> Array:
    """Scale deviations from the per-channel mean by a random factor (as TF's op).

    Args:
        image: float32 ``(H, W[, C])`` on the 0-255 scale.
        rng: random generator.
        strength_range: ``(low, high)`` of the uniform contrast factor.

    Returns:
        The image with changed contrast, clipped to [0, 255], same shape.
    """
    factor = np.float32(rng.uniform(*strength_range))
    mean = image.mean(axis=(0, 1), keepdims=True)
    return np.clip((image - mean) * factor + mean, 0, 255)


def additive_gaussian_noise(
    image: Array,
    rng: np.random.Generator,
    stddev_range: Sequence[float] = (0.0, 15.0),
) -> Array:
    """Add i.i.d. Gaussian noise whose sigma is drawn uniformly from ``stddev_range``.

    Args:
        image: float32 ``(H, W[, C])`` on the 0-255 scale.
        rng: random generator.
        stddev_range: ``(low, high)`` of the noise standard deviation (0-255 scale).

    Returns:
        The noisy image, clipped to [0, 255], same shape.
    """
    stddev = np.float32(rng.uniform(*stddev_range))
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image + stddev * noise, 0, 255)


def additive_speckle_noise(
    image: Array,
    rng: np.random.Generator,
    prob_range: Sequence[float] = (0.0, 0.0035),
) -> Array:
    """Salt-and-pepper noise: each pixel becomes 0 or 255 with probability ``prob`` each.

    Args:
        image: float32 ``(H, W[, C])`` on the 0-255 scale.
        rng: random generator.
        prob_range: ``(low, high)`` of the per-pixel probability of each of black and
            white.

    Returns:
        The noisy image, same shape.
    """
    prob = rng.uniform(*prob_range)
    sample = rng.random(image.shape, dtype=np.float32)
    out = np.where(sample <= prob, np.float32(0), image)
    return np.where(sample >= 1.0 - prob, np.float32(255), out)


def additive_shade(
    image: Array,
    rng: np.random.Generator,
    nb_ellipses: int = 20,
    transparency_range: Sequence[float] = (-0.5, 0.8),
    kernel_size_range: Sequence[int] = (50, 100),
) -> Array:
    """Darken (or brighten) the image under a blurred mask of random ellipses.

    Args:
        image: float32 ``(H, W[, C])`` on the 0-255 scale.
        rng: random generator.
        nb_ellipses: ellipses drawn into the shade mask.
        transparency_range: ``(low, high)`` of the shade strength; negative brightens.
        kernel_size_range: ``[low, high)`` of the Gaussian kernel size in pixels (made
            odd), as in the reference (absolute pixels of the augmented image).

    Returns:
        The shaded image, clipped to [0, 255], same shape.
    """
    h, w = image.shape[:2]
    min_dim = min(h, w) / 4
    mask = np.zeros((h, w), np.uint8)
    for _ in range(nb_ellipses):
        ax = int(max(rng.random() * min_dim, min_dim / 5))
        ay = int(max(rng.random() * min_dim, min_dim / 5))
        max_rad = max(ax, ay)
        x = int(rng.integers(max_rad, max(w - max_rad, max_rad + 1)))
        y = int(rng.integers(max_rad, max(h - max_rad, max_rad + 1)))
        angle = rng.random() * 90
        cv2.ellipse(mask, (x, y), (ax, ay), angle, 0, 360, 255, -1)
    transparency = rng.uniform(*transparency_range)
    ksize = int(rng.integers(*kernel_size_range)) | 1
    shade = cv2.GaussianBlur(mask.astype(np.float32), (ksize, ksize), 0)
    factor = 1.0 - np.float32(transparency / 255.0) * shade
    if image.ndim == 3:
        factor = factor[..., None]
    return np.clip(image * factor, 0, 255)


def motion_blur(
    image: Array, rng: np.random.Generator, max_kernel_size: int = 7
) -> Array:
    """Blur along a random direction (horizontal, vertical or one of the diagonals).

    The kernel size is an odd number in ``[1, max_kernel_size]``; the line kernel is
    weighted by a Gaussian of variance ``ksize**2 / 16`` (as in the reference).

    Args:
        image: float32 ``(H, W[, C])`` on the 0-255 scale.
        rng: random generator.
        max_kernel_size: largest kernel size in pixels.

    Returns:
        The blurred image, same shape.
    """
    mode = rng.integers(4)
    ksize = int(rng.integers(0, (max_kernel_size + 1) // 2)) * 2 + 1
    center = (ksize - 1) // 2
    if mode == 0:
        kernel = np.zeros((ksize, ksize))
        kernel[center, :] = 1.0
    elif mode == 1:
        kernel = np.zeros((ksize, ksize))
        kernel[:, center] = 1.0
    elif mode == 2:
        kernel = np.eye(ksize)
    else:
        kernel = np.flipud(np.eye(ksize))
    grid = np.arange(ksize) - center
    var = ksize * ksize / 16.0
    kernel = kernel * np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * var))
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel.astype(np.float32))


_FUNCTIONS: dict[str, Callable[..., Array]] = {
    "random_brightness": random_brightness,
    "random_contrast": random_contrast,
    "additive_gaussian_noise": additive_gaussian_noise,
    "additive_speckle_noise": additive_speckle_noise,
    "additive_shade": additive_shade,
    "motion_blur": motion_blur,
}


def parse_primitives(primitives: str | Sequence[str]) -> list[str]:
    """Resolve ``'all'``, one name or a list of names into a list of valid names.

    Raises:
        UserError: for an unknown name, listing the valid ones.
    """
    return resolve_names(primitives, AUGMENTATIONS, "photometric augmentation")


def resolve_params(params: dict | None) -> dict[str, dict]:
    """Merge user parameters over :data:`DEFAULT_PARAMS`, rejecting unknown names/keys.

    Args:
        params: ``{augmentation name: {parameter: value}}``; may be partial or ``None``.

    Returns:
        A new dict with the full parameters of every augmentation.

    Raises:
        UserError: naming the unknown augmentation or parameter.
    """
    merged = {name: dict(values) for name, values in DEFAULT_PARAMS.items()}
    for name, values in (params or {}).items():
        if name not in merged:
            raise UserError(
                f"unknown photometric augmentation {name!r} in params; valid names: "
                f"{', '.join(AUGMENTATIONS)}"
            )
        for key, value in (values or {}).items():
            if key not in merged[name]:
                raise UserError(
                    f"unknown parameter {key!r} of photometric augmentation {name!r}; "
                    f"valid: {', '.join(merged[name])}"
                )
            merged[name][key] = value
    return merged


def photometric_augment(
    image: Array,
    rng: np.random.Generator,
    primitives: str | Sequence[str] = "all",
    params: dict | None = None,
    random_order: bool = True,
) -> Array:
    """Apply the selected photometric augmentations, in random order by default.

    Args:
        image: ``(H, W[, C])``; uint8 on 0-255 or float on 0-1.
        rng: random generator (the only source of randomness).
        primitives: ``'all'`` or names from :data:`AUGMENTATIONS`.
        params: per-augmentation overrides of :data:`DEFAULT_PARAMS`.
        random_order: shuffle the order of the augmentations (as the reference).

    Returns:
        The augmented image with the dtype and value range of ``image``.

    Raises:
        UserError: for an unknown augmentation or parameter name.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> out = photometric_augment(np.zeros((8, 8), np.uint8), rng, ["motion_blur"])
    """
    names = parse_primitives(primitives)
    full_params = resolve_params(params)
    if random_order:
        names = [names[i] for i in rng.permutation(len(names))]
    is_uint8 = image.dtype == np.uint8
    work = image.astype(np.float32) * (1.0 if is_uint8 else 255.0)
    for name in names:
        work = _FUNCTIONS[name](work, rng, **full_params[name])
    if is_uint8:
        return np.clip(np.rint(work), 0, 255).astype(np.uint8)
    return (work / 255.0).astype(image.dtype if image.dtype.kind == "f" else np.float32)


__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_PARAMS",
    "additive_gaussian_noise",
    "additive_shade",
    "additive_speckle_noise",
    "motion_blur",
    "parse_primitives",
    "photometric_augment",
    "random_brightness",
    "random_contrast",
    "resolve_params",
]
