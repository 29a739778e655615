"""Scoring detections on Synthetic Shapes: matching, precision-recall, mAP, localisation error,
and the OpenCV baselines (Harris, Shi-Tomasi, FAST), for ``evaluators.synthetic_shapes``.

The protocol is the SuperPoint reference's (see that module); everything here works on one
image's score map at a time or pools what :class:`Scorer` kept of each, so the baselines can be
scored in DataLoader workers (:class:`ClassicalScoring`) while the networks run elsewhere.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from scipy.spatial import cKDTree

from engine.data import collate
from geometry.keypoints import nms_map
from utils.errors import UserError

CLASSICAL = ("harris", "shi", "fast")
# Quality levels at which Shi-Tomasi corners are scored (the reference's protocol).
SHI_LEVELS = np.linspace(0.0001, 1, 100, endpoint=False)


def match_detections(
    points: np.ndarray, scores: np.ndarray, gt: np.ndarray, distance: float
) -> np.ndarray:
    """True-positive flags of detections sorted by decreasing score.

    Each detection claims the nearest unclaimed ground-truth point within ``distance``.

    Args:
        points: ``(N, 2)`` detections, ``scores`` ``(N,)``; ``gt`` ``(M, 2)``.

    Returns:
        ``(N,)`` bool, aligned with ``points`` sorted by decreasing score.
    """
    order = np.argsort(-scores, kind="stable")
    points = points[order]
    tp = np.zeros(len(points), dtype=bool)
    if len(gt) == 0 or len(points) == 0:
        return tp
    tree = cKDTree(gt)
    claimed = np.zeros(len(gt), dtype=bool)
    neighbours = tree.query_ball_point(points, r=distance + 1e-9)
    for i, candidates in enumerate(neighbours):
        if not candidates:
            continue
        candidates = np.asarray(candidates)
        free = candidates[~claimed[candidates]]
        if len(free) == 0:
            continue
        nearest = free[np.argmin(np.linalg.norm(gt[free] - points[i], axis=1))]
        claimed[nearest] = True
        tp[i] = True
    return tp


def precision_recall(
    tp: np.ndarray, scores: np.ndarray, n_gt: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Precision-recall curve and mAP from pooled detections.

    Args:
        tp: ``(N,)`` true-positive flags; ``scores`` ``(N,)``; ``n_gt`` total ground truth.

    Returns:
        ``precision``, ``recall`` (with end points added, precision made monotone as in the
        reference) and ``mAP = sum (r_i - r_{i-1}) p_i``.
    """
    order = np.argsort(-scores, kind="stable")
    tp = tp[order]
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(~tp)
    recall = tp_cum / max(n_gt, 1)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1)
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    m_ap = float(np.sum(precision[1:] * (recall[1:] - recall[:-1])))
    return precision, recall, m_ap


def localization_errors(
    points: np.ndarray, gt: np.ndarray, distance: float
) -> np.ndarray:
    """Distance of each detection to its nearest ground truth, for those within ``distance``."""
    if len(points) == 0 or len(gt) == 0:
        return np.zeros(0)
    d, _ = cKDTree(gt).query(points)
    return d[d <= distance]


def classical_response(image: np.ndarray, method: str) -> np.ndarray:
    """Raw score map of an OpenCV detector on a float image in [0, 1].

    As the reference: responses are not normalised per image (so they rank consistently
    across images), the image is on the 0-255 scale, Harris uses block 4 / aperture 3 /
    k 0.04, FAST threshold 10, and Shi-Tomasi scores a corner by the highest quality level
    (of 100) at which ``goodFeaturesToTrack`` still returns it.
    """
    gray = np.clip(image * 255.0, 0, 255).astype(np.float32)
    if method == "harris":
        resp = cv2.cornerHarris(gray, 4, 3, 0.04)
    elif method == "shi":
        resp = shi_tomasi_response(gray)
    elif method == "fast":
        resp = np.zeros(gray.shape, np.float32)
        for kp in cv2.FastFeatureDetector_create(10).detect(gray.astype(np.uint8)):
            x, y = int(round(kp.pt[0])), int(round(kp.pt[1]))
            resp[y, x] = max(resp[y, x], kp.response)
    else:
        raise UserError(
            f"unknown method '{method}'; valid: {CLASSICAL} or --checkpoint"
        )
    return np.maximum(resp, 0)


def shi_tomasi_response(gray: np.ndarray) -> np.ndarray:
    """Shi-Tomasi score map: each corner scored by the highest of :data:`SHI_LEVELS` at
    which ``cv2.goodFeaturesToTrack(gray, 100, level, 5)`` still returns it.

    One call at the lowest level gives all the corners any level returns: OpenCV keeps
    the 3x3 local maxima of the minimum-eigenvalue map above ``level x max``, sorts them
    by value and accepts them greedily (5 px apart, at most 100), so a higher level keeps
    a prefix of the same accepted list. A corner's highest level is then the last whose
    threshold, ``float32(max x level)`` as OpenCV computes it, its eigenvalue exceeds.

    Args:
        gray: ``(H, W)`` float32 image on the 0-255 scale.

    Returns:
        ``(H, W)`` float32, the level at each returned corner, 0 elsewhere.
    """
    resp = np.zeros(gray.shape, np.float32)
    corners = cv2.goodFeaturesToTrack(gray, 100, float(SHI_LEVELS[0]), 5)
    if corners is None:
        return resp
    x, y = np.round(corners[:, 0]).astype(int).T
    eig = cv2.cornerMinEigenVal(gray, 3, 3)
    thresholds = (cv2.minMaxLoc(eig)[1] * SHI_LEVELS).astype(np.float32)
    highest = np.searchsorted(thresholds, eig[y, x], side="left") - 1
    resp[y, x] = SHI_LEVELS[highest]
    return resp


def keep_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the ``k`` highest scores of each ``(H, W)`` map of a batch."""
    if k <= 0:
        return scores
    flat = scores.flatten(1)
    k = min(k, flat.shape[1])
    threshold = flat.topk(k, dim=1).values[:, -1:]
    kept = torch.where(flat >= threshold, flat, torch.zeros_like(flat))
    return kept.view_as(scores)


def keep_top_k_map(scores: np.ndarray, k: int) -> np.ndarray:
    """:func:`keep_top_k` of one ``(H, W)`` NumPy map (the same result)."""
    if k <= 0:
        return scores
    flat = scores.ravel()
    k = min(k, flat.size)
    threshold = np.partition(flat, flat.size - k)[flat.size - k]
    return np.where(scores >= threshold, scores, 0).astype(scores.dtype)


class ImageScore(NamedTuple):
    """One image's detections as :class:`Scorer` pools them: true-positive flags and
    scores sorted by decreasing score, ground-truth count, localisation errors."""

    tp: np.ndarray
    scores: np.ndarray
    n_gt: int
    loc: np.ndarray


class Scorer:
    """Accumulates detections over images, per primitive, for one test variant."""

    def __init__(
        self, correct_distance: float, loc_threshold: float, loc_distance: float
    ):
        self.correct, self.loc_thr, self.loc_dist = (
            correct_distance,
            loc_threshold,
            loc_distance,
        )
        self.tp: dict[str, list] = defaultdict(list)
        self.scores: dict[str, list] = defaultdict(list)
        self.n_gt: dict[str, int] = defaultdict(int)
        self.loc: dict[str, list] = defaultdict(list)

    def add(
        self, prob: np.ndarray, gt: np.ndarray, primitive: str, floor: float
    ) -> None:
        """Score the detections of one ``(H, W)`` map against ``(M, 2)`` ground truth."""
        self.add_scored(primitive, self.score(prob, gt, floor))

    def score(self, prob: np.ndarray, gt: np.ndarray, floor: float) -> ImageScore:
        """What :meth:`add` keeps of one image (computed where the map is, e.g. in a
        DataLoader worker)."""
        ys, xs = np.nonzero(prob > floor)
        points = np.stack([xs, ys], axis=1).astype(np.float64)
        scores = prob[ys, xs]
        order = np.argsort(-scores, kind="stable")
        confident = points[scores >= self.loc_thr]
        return ImageScore(
            match_detections(points, scores, gt, self.correct),
            scores[order],
            len(gt),
            localization_errors(confident, gt, self.loc_dist),
        )

    def add_scored(self, primitive: str, scored: ImageScore) -> None:
        """Accumulate one image scored by :meth:`score`."""
        self.tp[primitive].append(scored.tp)
        self.scores[primitive].append(scored.scores)
        self.n_gt[primitive] += scored.n_gt
        self.loc[primitive].append(scored.loc)

    def results(self) -> dict[str, Any]:
        out: dict[str, Any] = {"per_primitive": {}}
        pooled = {"tp": [], "scores": [], "loc": [], "n_gt": 0}
        for prim in sorted(self.tp):
            tp, sc = np.concatenate(self.tp[prim]), np.concatenate(self.scores[prim])
            loc = np.concatenate(self.loc[prim])
            _, _, m_ap = precision_recall(tp, sc, self.n_gt[prim])
            out["per_primitive"][prim] = {
                "mAP": m_ap if self.n_gt[prim] else None,
                "localization_error": float(loc.mean()) if len(loc) else None,
                "n_gt": self.n_gt[prim],
            }
            pooled["tp"].append(tp)
            pooled["scores"].append(sc)
            pooled["loc"].append(loc)
            pooled["n_gt"] += self.n_gt[prim]
        tp, sc = np.concatenate(pooled["tp"]), np.concatenate(pooled["scores"])
        precision, recall, m_ap = precision_recall(tp, sc, pooled["n_gt"])
        loc = np.concatenate(pooled["loc"])
        per_prim = [
            v["mAP"] for v in out["per_primitive"].values() if v["mAP"] is not None
        ]
        out.update(
            mAP=m_ap,
            mean_primitive_mAP=float(np.mean(per_prim)) if per_prim else None,
            localization_error=float(loc.mean()) if len(loc) else None,
            n_gt=pooled["n_gt"],
            n_detections=int(len(tp)),
            curve={"precision": precision, "recall": recall},
        )
        return out


@dataclass(frozen=True)
class ScoringSettings:
    """The protocol's numbers that scoring a detection map needs."""

    nms_radius: int
    classical_top_k: int
    floor: float
    correct_distance: float
    loc_threshold: float
    loc_distance: float
    threshold: float = 0.0  # the networks' detection threshold
    top_k: int = 0  # the networks' top k (0: all)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ScoringSettings:
        return cls(
            args.nms_radius,
            args.classical_top_k,
            args.floor,
            args.correct_distance,
            args.loc_threshold,
            args.loc_distance,
            args.threshold,
            args.top_k,
        )

    def scorer(self) -> Scorer:
        return Scorer(self.correct_distance, self.loc_threshold, self.loc_distance)


class ClassicalScoring:
    """Collation of test samples that also scores the OpenCV baselines on the batch, and
    the networks given in ``networks``.

    Runs in the DataLoader workers (``collate_fn``), so on a CPU every worker draws,
    runs and scores its own batches with one thread, and the main process only pools
    the scores. The batch keeps ``image``, ``primitive`` and ``gt`` (per image ``(M, 2)``
    float64 ground truth, (x, y)) and adds ``classical``: ``{method: [ImageScore per
    image]}``, each method's map through the NMS and the top-k of the networks' maps
    (:func:`geometry.keypoints.nms_map`, :func:`keep_top_k_map`: the same results, map
    by map), and ``networks``: ``{key: [ImageScore per image]}`` for each network of
    ``networks`` (any keys, e.g. the caller's entry indices), from :func:`score_network`.
    """

    def __init__(
        self,
        methods: Sequence[str],
        settings: ScoringSettings,
        networks: dict[Any, Any] | None = None,
    ):
        self.methods, self.settings = list(methods), settings
        self.networks = dict(networks or {})

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(samples)
        gt = [
            np.argwhere(m.numpy() > 0.5)[:, ::-1].astype(np.float64)
            for m in batch["keypoint_map"]
        ]
        out = {"image": batch["image"], "primitive": batch["primitive"], "gt": gt}
        out["classical"] = {}
        scorer, conf = self.settings.scorer(), self.settings
        for method in self.methods:
            scored = []
            for b, image in enumerate(batch["image"]):
                heat = nms_map(
                    classical_response(image[0].numpy(), method), conf.nms_radius
                )
                heat = keep_top_k_map(heat, conf.classical_top_k)
                scored.append(scorer.score(heat, gt[b], conf.floor))
            out["classical"][method] = scored
        out["networks"] = {
            name: score_network(model, batch["image"], gt, conf)
            for name, model in self.networks.items()
        }
        return out


def score_network(
    model: Any,
    images: torch.Tensor,
    gt: Sequence[np.ndarray],
    settings: ScoringSettings,
    device: torch.device | None = None,
) -> list[ImageScore]:
    """Score a network on a batch: its heatmap above ``threshold``, NMS, top-k, then
    :meth:`Scorer.score` per image. NMS and top-k run map by map on the CPU
    (:func:`geometry.keypoints.nms_map`, :func:`keep_top_k_map`; the batched
    :func:`geometry.keypoints.nms` and :func:`keep_top_k` give the same maps, about five
    times slower on one CPU thread)."""
    with torch.inference_mode():
        heat = model({"image": images.to(device)})["heatmap"].float().cpu().numpy()
    scorer, scored = settings.scorer(), []
    for b, prob in enumerate(heat):
        prob = np.where(prob > settings.threshold, prob, np.float32(0))
        prob = keep_top_k_map(nms_map(prob, settings.nms_radius), settings.top_k)
        scored.append(scorer.score(prob, gt[b], settings.floor))
    return scored


def one_opencv_thread(_: int) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV thread per worker."""
    # Parallelism comes from the worker processes (and a GPU network in the main process).
    cv2.setNumThreads(1)
