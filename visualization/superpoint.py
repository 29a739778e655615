"""TensorBoard panels of MagicPoint and SuperPoint training (``train_superpoint.py``).

Single images (MagicPoint): input, heatmap, and labels (green) against the detections (red).
Pairs (SuperPoint joint training): both heatmaps and the mutual nearest-neighbour matches of
the first pair, green where the keypoint of view 0 warped by ``H_0to1`` lands within
``correct_distance`` pixels of its match in view 1, red otherwise. Keypoints and descriptors
come from :func:`models.superpoint.detect` with the run's ``model`` settings (threshold, NMS
radius, border, top-k, descriptor sampling), matches from
:func:`geometry.matching.match_descriptors`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from geometry.homography import warp_points
from geometry.matching import match_descriptors
from models.superpoint import detect
from utils.visualize import colorize, detector_panels, draw_points, to_chw, to_rgb_uint8

Panels = Callable[[dict, dict], dict[str, torch.Tensor]]


@dataclass
class PanelMatches:
    """Keypoints of both views of a pair and their mutual nearest-neighbour matches.

    ``keypoints0`` ``(N0, 2)`` and ``keypoints1`` ``(N1, 2)`` (x, y) pixels; ``matches``
    ``(M, 2)`` indices ``(i0, i1)`` sorted by ``i0`` (keypoints are sorted by score, so the
    strongest first); ``correct`` ``(M,)`` whether the warped ``keypoints0[i0]`` lies within
    the correct distance of ``keypoints1[i1]``.
    """

    keypoints0: np.ndarray
    keypoints1: np.ndarray
    matches: np.ndarray
    correct: np.ndarray


def superpoint_panels(
    model_conf: dict[str, Any],
    max_matches: int = 200,
    correct_distance: float = 3.0,
) -> Panels:
    """The panel hook of a run whose ``model`` section is ``model_conf``.

    Args:
        model_conf: the run's ``model`` config (post-processing keys of
            ``models.superpoint.SuperPoint``).
        max_matches: matches drawn at most (the strongest keypoints' first).
        correct_distance: pixels within which a warped match is drawn green.

    Returns:
        ``(batch, pred) -> {name: (3, H, W) float tensor in [0, 1]}`` for the engine.
    """

    def panels(batch: dict, pred: dict) -> dict[str, torch.Tensor]:
        if "image0" in batch:
            return match_panels(batch, pred, model_conf, max_matches, correct_distance)
        detections = detect({"heatmap": pred["heatmap"][:1]}, model_conf)
        return detector_panels(batch, pred, detections["keypoints"][0])

    return panels


def panel_matches(
    pred: dict,
    H_0to1: torch.Tensor,
    model_conf: dict[str, Any],
    correct_distance: float,
) -> PanelMatches:
    """Keypoints and mutual matches of the first pair of a batch (see :class:`PanelMatches`).

    Args:
        pred: the model's pair predictions (``heatmap0/1`` ``(B, H, W)``,
            ``dense_descriptors0/1`` ``(B, D, H/8, W/8)``).
        H_0to1: ``(B, 3, 3)`` homographies from view 0 to view 1.
        model_conf: detection settings, see :func:`models.superpoint.detect`.
        correct_distance: pixels.
    """
    keypoints, descriptors = [], []
    for v in "01":
        view = {
            "heatmap": pred[f"heatmap{v}"][:1].float(),
            "dense_descriptors": pred[f"dense_descriptors{v}"][:1].float(),
        }
        out = detect(view, model_conf)
        keypoints.append(out["keypoints"][0].cpu().numpy())
        descriptors.append(out["descriptors"][0].cpu().numpy())
    matches, _ = match_descriptors(descriptors[0], descriptors[1], mutual=True)
    H = H_0to1[0].detach().cpu().double().numpy()
    warped = warp_points(keypoints[0][matches[:, 0]], H)
    error = np.linalg.norm(warped - keypoints[1][matches[:, 1]], axis=1)
    return PanelMatches(keypoints[0], keypoints[1], matches, error <= correct_distance)


def match_panels(
    batch: dict,
    pred: dict,
    model_conf: dict[str, Any],
    max_matches: int = 200,
    correct_distance: float = 3.0,
) -> dict[str, torch.Tensor]:
    """Panels of the first pair: ``heatmap0``, ``heatmap1`` and, with descriptors,
    ``matches`` (both images side by side, keypoints yellow, matches green or red)."""
    panels = {f"heatmap{v}": to_chw(colorize(pred[f"heatmap{v}"][0])) for v in "01"}
    if "dense_descriptors0" not in pred:
        return panels
    found = panel_matches(pred, batch["H_0to1"], model_conf, correct_distance)
    images = [to_rgb_uint8(batch[f"image{v}"][0]) for v in "01"]
    canvas = np.concatenate(images, axis=1)
    width = images[0].shape[1]
    for (i0, i1), correct in zip(
        found.matches[:max_matches], found.correct[:max_matches]
    ):
        x0, y0 = found.keypoints0[i0]
        x1, y1 = found.keypoints1[i1]
        color = (0, 255, 0) if correct else (255, 0, 0)
        start = (int(round(x0)), int(round(y0)))
        end = (int(round(x1)) + width, int(round(y1)))
        cv2.line(canvas, start, end, color, 1, cv2.LINE_AA)
    canvas = draw_points(canvas, found.keypoints0, (255, 255, 0))
    canvas = draw_points(canvas, found.keypoints1 + [width, 0], (255, 255, 0))
    panels["matches"] = to_chw(canvas)
    return panels
