"""Homographic adaptation (HA): self-supervised keypoint labels from a base detector.

For one image, N homographies are sampled (the first is the identity), the image is warped by
each, the detector runs on all warps **in batches**, every heatmap is warped back into the
image, and the results are aggregated per pixel over the views that actually see that pixel
(DeTone et al., 2018, section 5; reference parameters from rpautrat/SuperPoint's
``magic-point_coco_export.yaml``). The aggregated probability map is then thresholded,
non-maximum suppressed and cut to the top-k, giving the labels used to train MagicPoint and
SuperPoint on real images.

Two implementations share the same maths: :func:`homographic_adaptation` (batched warps with
``grid_sample`` and a batched detector; used by the export) and
:func:`homographic_adaptation_loop` (one OpenCV warp and one detector call per view, the
obviously-correct version; tests compare the two and the benchmark measures the speed-up).

Per view ``H`` (image to view pixels):

* the view's heatmap is zeroed where the view has no image content, then warped back with
  ``H^-1``;
* the pixel counts for the view where ``H p`` falls inside the view, eroded by
  ``valid_border_margin`` (as the reference, so the interpolated border of a warp does not
  dilute the average); the identity view counts everywhere and is not interpolated.

Aggregation: ``sum`` (the reference's name) and ``mean`` both divide the summed probabilities
by the number of views counting each pixel; ``max`` keeps the largest probability over those
views. Pixels counted by no view get 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from geometry.homography import (
    HOMOGRAPHY_PRESETS,
    HomographyConfig,
    draw_homography,
    points_inside,
    sample_pixels,
    source_pixels,
    valid_mask,
    warp_image,
)
from geometry.keypoints import extract_keypoints
from utils.errors import UserError

AGGREGATIONS = ("sum", "mean", "max")

# Homography sampling of the reference's HA export (magic-point_coco_export.yaml).
HA_HOMOGRAPHY: dict = HOMOGRAPHY_PRESETS["coco"]

Detector = Callable[[torch.Tensor], torch.Tensor]
"""``(B, C, H, W)`` images in [0, 1] to ``(B, H, W)`` keypoint probabilities."""


@dataclass
class AdaptationResult:
    """Output of homographic adaptation for one image.

    Attributes:
        prob: ``(H, W)`` aggregated keypoint probability.
        count: ``(H, W)`` number of views counting each pixel.
    """

    prob: torch.Tensor
    count: torch.Tensor


def sample_homographies(
    shape: tuple[int, int],
    num: int,
    rng: np.random.Generator,
    conf: HomographyConfig | dict | None = None,
) -> np.ndarray:
    """``num`` homographies for HA, the first being the identity.

    Args:
        shape: image ``(H, W)``.
        num: number of views (>= 1).
        rng: random generator.
        conf: sampling parameters (default :data:`HA_HOMOGRAPHY`).

    Returns:
        ``(num, 3, 3)`` float64, image to view pixels.
    """
    if num < 1:
        raise UserError(f"homographic adaptation needs at least 1 view, got {num}")
    conf = HA_HOMOGRAPHY if conf is None else conf
    out = [np.eye(3)] + [draw_homography(shape, rng, conf) for _ in range(num - 1)]
    return np.stack(out)


def erode(
    mask: torch.Tensor, radius: int, use_opencv: bool | None = None
) -> torch.Tensor:
    """Erode ``(B, H, W)`` bool masks with OpenCV's elliptic structuring element.

    Same kernel as :func:`geometry.homography.valid_mask` uses for NumPy masks (and as the
    reference), so both HA implementations agree pixel for pixel. On the CPU (the default
    ``use_opencv``) each mask goes through ``cv2.erode``, several times faster there than the
    convolution that other devices use; both treat the outside of the image as no hole.
    """
    if radius <= 0:
        return mask
    size = 2 * radius + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    if use_opencv is None:
        use_opencv = mask.device.type == "cpu"
    if use_opencv:
        planes = mask.cpu().numpy().astype(np.uint8)
        eroded = np.stack([cv2.erode(m, kernel) for m in planes]) > 0
        return torch.from_numpy(eroded).to(mask.device)
    weight = torch.from_numpy(kernel.astype(np.float32)).to(mask.device)[None, None]
    # Zero padding: outside the image is not a hole, as with cv2.erode's default border.
    holes = F.conv2d((~mask)[:, None].float(), weight, padding=radius)
    return holes[:, 0] < 0.5


def _is_identity(H: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(3, dtype=H.dtype, device=H.device)
    return (H - eye).abs().amax(dim=(-1, -2)) < 1e-12


def check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise UserError(
            f"aggregation '{aggregation}' is not one of {', '.join(AGGREGATIONS)}"
        )


def homographic_adaptation(
    image: torch.Tensor,
    detector: Detector,
    homographies: np.ndarray | torch.Tensor,
    batch_size: int = 25,
    aggregation: str = "sum",
    valid_border_margin: int = 3,
) -> AdaptationResult:
    """Batched homographic adaptation of one image.

    Args:
        image: ``(1, C, H, W)`` float in [0, 1].
        detector: batched heatmap function (see :data:`Detector`).
        homographies: ``(N, 3, 3)`` image to view pixels (first usually the identity).
        batch_size: views per detector call.
        aggregation: ``sum`` | ``mean`` | ``max`` (see module docstring).
        valid_border_margin: erosion radius of each view's counting mask.

    Returns:
        :class:`AdaptationResult` with ``(H, W)`` maps on the image's device.
    """
    check_aggregation(aggregation)
    device = image.device
    h, w = image.shape[-2:]
    Hs = torch.as_tensor(np.asarray(homographies), dtype=torch.float64, device=device)
    total = torch.zeros(h, w, device=device)
    count = torch.zeros(h, w, device=device)
    for start in range(0, len(Hs), batch_size):
        H = Hs[start : start + batch_size]
        n = len(H)
        identity = _is_identity(H)
        images = image.expand(n, -1, -1, -1)
        # Each direction's sampling coordinates serve both its warp and its valid mask
        # (the same float32 values warp_images and valid_mask would each compute).
        to_image = source_pixels(torch.linalg.inv(H.float()), (h, w), device)
        views = sample_pixels(images, to_image)
        views = torch.where(identity[:, None, None, None], images, views)
        heat = detector(views).float()
        heat = heat * points_inside(to_image, (h, w))
        H_back = torch.linalg.inv(torch.linalg.inv(H).float())
        to_view = source_pixels(H_back, (h, w), device)
        back = sample_pixels(heat[:, None], to_view)[:, 0]
        back = torch.where(identity[:, None, None], heat, back)
        seen = erode(points_inside(to_view, (h, w)), valid_border_margin)
        seen = seen | identity[:, None, None]
        back = back * seen
        count += seen.sum(0)
        if aggregation == "max":
            total = torch.maximum(total, back.amax(0))
        else:
            total += back.sum(0)
    if aggregation != "max":
        total = total / count.clamp(min=1)
    return AdaptationResult(prob=total, count=count)


def homographic_adaptation_loop(
    image: torch.Tensor,
    detector: Detector,
    homographies: np.ndarray,
    aggregation: str = "sum",
    valid_border_margin: int = 3,
) -> AdaptationResult:
    """One view at a time with OpenCV warps (reference-style; same result, slower).

    Arguments and result as :func:`homographic_adaptation`.
    """
    check_aggregation(aggregation)
    h, w = image.shape[-2:]
    source = image[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)
    total = np.zeros((h, w), np.float32)
    count = np.zeros((h, w), np.float32)
    for H in np.asarray(homographies, np.float64):
        identity = bool(np.abs(H - np.eye(3)).max() < 1e-12)
        if identity:
            view = source
        else:
            view = warp_image(source, H)
        view = view.reshape(h, w, -1)
        batch = torch.from_numpy(view).permute(2, 0, 1)[None].to(image.device)
        heat = detector(batch)[0].float().cpu().numpy()
        if identity:
            back, seen = heat, np.ones((h, w), bool)
        else:
            heat = heat * valid_mask((h, w), H)
            back = warp_image(heat, np.linalg.inv(H))
            seen = valid_mask(
                (h, w), np.linalg.inv(H), erosion_radius=valid_border_margin
            )
        back = back * seen
        count += seen
        total = np.maximum(total, back) if aggregation == "max" else total + back
    if aggregation != "max":
        total = total / np.maximum(count, 1)
    return AdaptationResult(
        prob=torch.from_numpy(total).to(image.device),
        count=torch.from_numpy(count).to(image.device),
    )


def model_detector(
    model: torch.nn.Module, precision: str = "fp32", channels_last: bool = False
) -> Detector:
    """Wrap a MagicPoint/SuperPoint model as a batched :data:`Detector`.

    Args:
        model: network whose ``forward({"image": x})`` returns ``heatmap`` ``(B, H, W)``.
        precision: resolved (``engine.devices.inference_precision``): ``fp32``, ``bf16``,
            ``fp16`` or ``int8``, run by :class:`models.extractor.SuperPointRunner` (the
            path of extraction too).
        channels_last: run convolutions in channels-last memory layout.
    """
    from models.extractor import SuperPointRunner

    device = next(model.parameters()).device
    runner = SuperPointRunner(model, precision, channels_last, device)

    def detect(images: torch.Tensor) -> torch.Tensor:
        return runner({"image": images})["heatmap"]

    return detect


def adaptation_keypoints(
    prob: torch.Tensor,
    threshold: float = 0.015,
    nms_radius: int = 4,
    top_k: int = 0,
    border: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints of an aggregated map: threshold, NMS, border and top-k.

    Returns:
        ``points`` ``(N, 2)`` (x, y) and ``scores`` ``(N,)``, by decreasing score.
    """
    points, scores = extract_keypoints(
        prob[None], threshold, nms_radius, border=border, top_k=top_k
    )
    return points[0], scores[0]
