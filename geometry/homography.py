"""Geometry shared by datasets, losses, homographic adaptation and evaluation.

Pixel convention (used everywhere in this repository): a point is ``(x, y)`` in pixels, x to the
right, y down, and the *centre* of the top-left pixel is ``(0, 0)``. So the image covers
``[-0.5, W - 0.5] x [-0.5, H - 0.5]``; OpenCV's ``warpPerspective`` uses the same convention,
and :func:`pixel_to_grid` converts to the ``align_corners=False`` grid of ``grid_sample``.

A homography ``H`` (3x3) always maps points of a source image to a target image:
``p_target ~ H @ [x, y, 1]``. Pairs carry ``H_0to1``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, overload

import cv2
import numpy as np

from utils.errors import UserError

if TYPE_CHECKING:
    import torch

Array = np.ndarray


@dataclass(frozen=True)
class HomographyConfig:
    """Parameters of :func:`sample_homography` (defaults of the SuperPoint reference).

    Amplitudes are relative to the image size; the patch sampled in the source image covers
    ``patch_ratio`` of it before perturbation. Unless ``allow_artifacts`` is set, every
    perturbation keeps the patch inside the image, so the warped image has no empty border.
    """

    translation: bool = True
    rotation: bool = True
    scaling: bool = True
    perspective: bool = True
    n_scales: int = 5
    n_angles: int = 25
    scaling_amplitude: float = 0.1
    perspective_amplitude_x: float = 0.1
    perspective_amplitude_y: float = 0.1
    patch_ratio: float = 0.5
    max_angle: float = math.pi / 2
    allow_artifacts: bool = False
    translation_overflow: float = 0.0

    @classmethod
    def from_dict(cls, conf: dict | None) -> HomographyConfig:
        """Build from a (config) mapping; unknown keys raise ``KeyError`` naming them."""
        conf = dict(conf or {})
        unknown = set(conf) - set(cls.__dataclass_fields__)
        if unknown:
            raise KeyError(f"unknown homography parameter(s): {sorted(unknown)}")
        return cls(**conf)

    def to_dict(self) -> dict:
        return asdict(self)


# Homography sampling of the SuperPoint reference recipes (rpautrat's configs), by name:
# Synthetic Shapes augmentation, and real-image (COCO/KITTI) augmentation and HA export.
_REFERENCE_WARP = {
    "translation": True,
    "rotation": True,
    "scaling": True,
    "perspective": True,
    "scaling_amplitude": 0.2,
    "perspective_amplitude_x": 0.2,
    "perspective_amplitude_y": 0.2,
    "max_angle": 1.57,
    "allow_artifacts": True,
}
HOMOGRAPHY_PRESETS: dict[str, dict] = {
    "magicpoint_shapes": {
        **_REFERENCE_WARP,
        "patch_ratio": 0.8,
        "translation_overflow": 0.05,
    },
    "coco": {**_REFERENCE_WARP, "patch_ratio": 0.85},
}


def _truncated_normal(rng: np.random.Generator, std: float, size=None) -> Array:
    """Normal(0, std) truncated at two standard deviations (as tf.truncated_normal)."""
    out = rng.normal(0.0, std, size=size)
    bad = np.abs(out) > 2 * std
    while np.any(bad):
        out = np.where(bad, rng.normal(0.0, std, size=size), out)
        bad = np.abs(out) > 2 * std
    return out


def _inside_unit(points: Array) -> Array:
    """For (K, 4, 2) corner sets, whether all corners lie in [0, 1)."""
    return np.all((points >= 0.0) & (points < 1.0), axis=(1, 2))


def sample_homography(
    shape: tuple[int, int],
    rng: np.random.Generator,
    conf: HomographyConfig | dict | None = None,
) -> Array:
    """Sample a random homography as in the SuperPoint reference implementation.

    A square patch of relative size ``patch_ratio`` is perturbed by perspective, scaling,
    translation and rotation (each drawn from a discrete set kept inside the image unless
    ``allow_artifacts``); the homography maps that patch onto the full target image.

    Args:
        shape: ``(height, width)`` of source and target images.
        rng: NumPy generator (the only source of randomness, for reproducibility).
        conf: :class:`HomographyConfig` or a mapping of its fields.

    Returns:
        ``H_0to1`` of shape (3, 3), float64, mapping source pixels to target pixels.

    Example:
        >>> H = sample_homography((120, 160), np.random.default_rng(0))
    """
    if not isinstance(conf, HomographyConfig):
        conf = HomographyConfig.from_dict(conf)
    target = np.array([[0, 0], [0, 1], [1, 1], [1, 0]], dtype=np.float64)
    margin = (1.0 - conf.patch_ratio) / 2.0
    patch = margin + conf.patch_ratio * target

    if conf.perspective:
        amp_x, amp_y = conf.perspective_amplitude_x, conf.perspective_amplitude_y
        if not conf.allow_artifacts:
            amp_x, amp_y = min(amp_x, margin), min(amp_y, margin)
        dy = _truncated_normal(rng, amp_y / 2)
        dx_left = _truncated_normal(rng, amp_x / 2)
        dx_right = _truncated_normal(rng, amp_x / 2)
        patch = patch + np.array(
            [[dx_left, dy], [dx_left, -dy], [dx_right, dy], [dx_right, -dy]]
        )

    if conf.scaling:
        scales = np.concatenate(
            [
                [1.0],
                1.0 + _truncated_normal(rng, conf.scaling_amplitude / 2, conf.n_scales),
            ]
        )
        center = patch.mean(axis=0, keepdims=True)
        candidates = (patch - center)[None] * scales[:, None, None] + center
        valid = np.arange(len(scales))
        if not conf.allow_artifacts:
            valid = np.flatnonzero(_inside_unit(candidates))
        patch = candidates[rng.choice(valid)]

    if conf.translation:
        t_min, t_max = patch.min(axis=0), (1.0 - patch).min(axis=0)
        if conf.allow_artifacts:
            t_min = t_min + conf.translation_overflow
            t_max = t_max + conf.translation_overflow
        # lo + (hi - lo) * u as TF's random_uniform: with artifacts allowed the patch may
        # already poke out of the image, and the range may then be reversed.
        u = rng.random(2)
        patch = patch + (-t_min + (t_max + t_min) * u)

    if conf.rotation:
        angles = np.concatenate(
            [[0.0], np.linspace(-conf.max_angle, conf.max_angle, conf.n_angles)]
        )
        center = patch.mean(axis=0, keepdims=True)
        cos, sin = np.cos(angles), np.sin(angles)
        rot = np.stack([cos, -sin, sin, cos], axis=1).reshape(-1, 2, 2)
        candidates = np.einsum("pj,kij->kpi", patch - center, rot) + center
        valid = np.arange(len(angles))
        if not conf.allow_artifacts:
            valid = np.flatnonzero(_inside_unit(candidates))
        patch = candidates[rng.choice(valid)]

    size = np.array([shape[1], shape[0]], dtype=np.float64)
    src = (patch * size).astype(np.float32)
    dst = (target * size).astype(np.float32)
    return cv2.getPerspectiveTransform(src, dst).astype(np.float64)


def _is_tensor(x) -> bool:
    """Whether ``x`` is a torch tensor. Torch is imported by the functions that need it,
    not by this module: a tensor can only exist once torch is imported, and NumPy users
    such as ``data_gen.py synthetic_shapes`` start a second or two sooner without it."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


@overload
def warp_points(points: Array, H: Array) -> Array: ...
@overload
def warp_points(points: torch.Tensor, H: torch.Tensor) -> torch.Tensor: ...


def warp_points(points, H):
    """Apply homographies to points.

    Args:
        points: ``(..., N, 2)`` (x, y) pixels, NumPy or torch.
        H: ``(3, 3)`` or batched ``(..., 3, 3)`` broadcastable with ``points``' leading dims.

    Returns:
        Warped points with the shape of ``points``. Points mapped to infinity come back as
        ``inf``/``nan``; filter them with :func:`points_inside`.
    """
    if _is_tensor(points):
        import torch

        H = torch.as_tensor(H, dtype=points.dtype, device=points.device)
        homog = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
        out = homog @ H.transpose(-1, -2)
        return out[..., :2] / out[..., 2:3]
    points = np.asarray(points, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    homog = np.concatenate([points, np.ones_like(points[..., :1])], axis=-1)
    out = homog @ np.swapaxes(H, -1, -2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return out[..., :2] / out[..., 2:3]


def points_inside(points, shape: tuple[int, int], border: float = 0.0):
    """Boolean mask of points lying inside an image of ``shape = (H, W)``.

    A point is inside when it falls on a pixel: ``-0.5 <= x < W - 0.5`` (same for y), shrunk
    by ``border`` pixels on every side.
    """
    h, w = shape
    x, y = points[..., 0], points[..., 1]
    lo = -0.5 + border
    return (x >= lo) & (y >= lo) & (x < w - 0.5 - border) & (y < h - 0.5 - border)


def scale_homography(H: Array, scale0: Array | float, scale1: Array | float) -> Array:
    """Adapt ``H_0to1`` after resizing image 0 by ``scale0`` and image 1 by ``scale1``.

    Scales are ``(sx, sy)`` (new size / old size). Resizing with pixel centres kept as in
    OpenCV maps ``x -> sx * (x + 0.5) - 0.5``.
    """

    def resize_matrix(scale) -> Array:
        sx, sy = np.broadcast_to(np.asarray(scale, dtype=np.float64), (2,))
        return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])

    S0, S1 = resize_matrix(scale0), resize_matrix(scale1)
    return S1 @ np.asarray(H, dtype=np.float64) @ np.linalg.inv(S0)


def warp_image(
    image: Array,
    H: Array,
    out_shape: tuple[int, int] | None = None,
    interpolation: int = cv2.INTER_LINEAR,
    border_value: float = 0.0,
) -> Array:
    """Warp a NumPy image ``(H, W[, C])`` by ``H`` (source to target pixels) with OpenCV."""
    h, w = out_shape if out_shape is not None else image.shape[:2]
    return cv2.warpPerspective(
        image,
        np.asarray(H, dtype=np.float64),
        (w, h),
        flags=interpolation,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border_value,
    )


def pixel_to_grid(points: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Convert (x, y) pixels to the [-1, 1] grid of ``grid_sample(align_corners=False)``."""
    h, w = shape
    size = points.new_tensor([w, h])
    return (points + 0.5) / size * 2 - 1


def pixel_grid(shape: tuple[int, int], device=None, dtype=None) -> torch.Tensor:
    """All pixel centres of an ``(H, W)`` image as ``(H, W, 2)`` (x, y); ``dtype``
    defaults to float32."""
    import torch

    h, w = shape
    dtype = dtype or torch.float32
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype),
        torch.arange(w, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([xs, ys], dim=-1)


def source_pixels(
    H_inv: torch.Tensor, out_shape: tuple[int, int], device=None
) -> torch.Tensor:
    """Where each target pixel comes from: ``(B, H_out, W_out, 2)`` source pixels (x, y).

    Args:
        H_inv: ``(B, 3, 3)`` target to source pixels (the inverse of the warp).
        out_shape: target ``(H, W)``.

    The sampling coordinates of :func:`warp_images` and the mask of :func:`valid_mask`
    (``points_inside`` of them): compute them once when a caller needs both.
    """
    b = H_inv.shape[0]
    grid = pixel_grid(out_shape, device=device).reshape(1, -1, 2)
    return warp_points(grid.expand(b, -1, -1), H_inv).reshape(b, *out_shape, 2)


def sample_pixels(
    images: torch.Tensor, src: torch.Tensor, mode: str = "bilinear"
) -> torch.Tensor:
    """``grid_sample`` of ``(B, C, H, W)`` images at ``(B, H_out, W_out, 2)`` source pixels;
    pixels whose source lies outside the image (or at infinity) are 0."""
    import torch

    grid = pixel_to_grid(src, images.shape[-2:])
    grid = torch.nan_to_num(grid, nan=-2.0, posinf=-2.0, neginf=-2.0)
    return torch.nn.functional.grid_sample(
        images,
        grid.to(images.dtype),
        mode=mode,
        padding_mode="zeros",
        align_corners=False,
    )


def warp_images(
    images: torch.Tensor,
    H: torch.Tensor,
    out_shape: tuple[int, int] | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Warp a batch of images by per-image homographies with ``grid_sample``.

    Args:
        images: ``(B, C, H, W)``.
        H: ``(B, 3, 3)`` or ``(3, 3)``, source to target pixels.
        out_shape: target ``(H, W)``; defaults to the source size.
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        ``(B, C, H_out, W_out)``; pixels whose source lies outside the image are 0.
    """
    import torch

    b = images.shape[0]
    out_shape = tuple(out_shape) if out_shape is not None else tuple(images.shape[-2:])
    H = torch.as_tensor(H, dtype=torch.float32, device=images.device)
    H_inv = torch.linalg.inv(H.expand(b, 3, 3) if H.dim() == 2 else H)
    return sample_pixels(images, source_pixels(H_inv, out_shape, images.device), mode)


def valid_mask(
    src_shape: tuple[int, int],
    H,
    out_shape: tuple[int, int] | None = None,
    erosion_radius: int = 0,
):
    """Mask of target pixels whose pre-image under ``H`` lies inside the source image.

    Args:
        src_shape: source ``(H, W)``.
        H: ``(3, 3)`` NumPy array, or torch ``(B, 3, 3)`` for a batch.
        out_shape: target ``(H, W)``; defaults to ``src_shape``.
        erosion_radius: shrink the mask by this many pixels (as the reference does, to drop
            the interpolated border).

    Returns:
        ``(H_out, W_out)`` bool NumPy array, or ``(B, H_out, W_out)`` bool tensor.
    """
    out_shape = tuple(out_shape) if out_shape is not None else tuple(src_shape)
    if _is_tensor(H):
        import torch

        Hb = H if H.dim() == 3 else H[None]
        src = source_pixels(torch.linalg.inv(Hb.float()), out_shape, Hb.device)
        mask = points_inside(src, src_shape)
        if erosion_radius > 0:
            k = 2 * erosion_radius + 1
            mask = -torch.nn.functional.max_pool2d(
                -mask[:, None].float(), k, stride=1, padding=erosion_radius
            )
            mask = mask[:, 0] > 0.5
        return mask if H.dim() == 3 else mask[0]
    # warp_points of every pixel centre, written as outer sums over rows and columns:
    # 3x fewer operations than the (H*W, 3) product, which would be the slowest step of
    # the data augmentation.
    H_inv = np.linalg.inv(np.asarray(H, dtype=np.float64))
    xs = np.arange(out_shape[1], dtype=np.float64)
    ys = np.arange(out_shape[0], dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        src_x, src_y, src_w = (
            ys * H_inv[i, 1] + (xs * H_inv[i, 0] + H_inv[i, 2]) for i in range(3)
        )
        src = np.stack([src_x / src_w, src_y / src_w], axis=-1)
    mask = points_inside(src, src_shape)
    if erosion_radius > 0:
        k = 2 * erosion_radius + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        mask = cv2.erode(mask.astype(np.uint8), kernel) > 0
    return mask


def draw_homography(
    shape: tuple[int, int],
    rng: np.random.Generator,
    conf: HomographyConfig | dict | None = None,
    max_tries: int = 100,
) -> np.ndarray:
    """:func:`sample_homography`, redrawn when it cannot place the patch.

    With ``allow_artifacts`` a scaled patch can be wider than the image, leaving no valid
    translation range: NumPy's ``uniform`` then refuses ``low > high`` (TensorFlow's did
    not), so such draws are rejected and redrawn.
    """
    for _ in range(max_tries):
        try:
            return sample_homography(shape, rng, conf)
        except ValueError:
            continue
    raise UserError(f"could not sample a homography for {shape} with {conf}")
