"""HPatches scoring of one image pair under a preset (SuperPoint, D2-Net and glue-factory
protocols), from the pure metric functions of :mod:`evaluators.hpatches.metrics`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from evaluators.hpatches.features import Features
from evaluators.hpatches.metrics import (
    average_precision,
    corner_points,
    estimate_homography,
    homography_corner_error,
    mma_curve,
    repeatability,
    reprojection_errors,
    shared_view_mask,
    symmetric_reprojection_errors,
    weighted_dlt,
)
from evaluators.hpatches.presets import Preset
from geometry.matching import match_similarity, similarity


def score_pair(
    preset: Preset,
    f0: Features,
    f1: Features,
    H: np.ndarray,
    shape0: tuple[int, int],
    shape1: tuple[int, int],
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of one pair for the preset's protocol (a flat dict of numbers)."""
    if preset.protocol == "superpoint":
        return _score_superpoint(preset, f0, f1, H, shape0, shape1, seed)
    if preset.protocol == "d2net":
        return _score_d2net(preset, f0, f1, H)
    if preset.protocol == "gluefactory":
        return _score_gluefactory(preset, f0, f1, H, shape0, seed)
    raise ValueError(f"unknown protocol {preset.protocol!r}")


def _mutual_matches(f0: Features, f1: Features) -> tuple[np.ndarray, np.ndarray]:
    sim = similarity(f0.descriptors, f1.descriptors)
    return match_similarity(sim, mutual=True)


def _score_superpoint(preset, f0, f1, H, shape0, shape1, seed) -> dict[str, Any]:
    rep = repeatability(
        f0.keypoints,
        f1.keypoints,
        H,
        shape0,
        shape1,
        preset.correct_px,
        f0.scores,
        f1.scores,
        preset.top_k,
    )
    out: dict[str, Any] = {
        "repeatability": rep["repeatability"],
        "mle": rep["mle"],
        "num_keypoints0": len(f0.keypoints),
        "num_keypoints1": len(f1.keypoints),
    }
    if f0.descriptors is None or f1.descriptors is None:
        nan = float("nan")
        out.update({f"homography@{e:g}px": nan for e in preset.homography_eps})
        out.update(homography_error=nan, nn_map=nan, matching_score=nan, num_matches=0)
        return out
    matches, dist = _mutual_matches(f0, f1)
    pts0, pts1 = f0.keypoints[matches[:, 0]], f1.keypoints[matches[:, 1]]
    ransac = dict(
        method=preset.ransac_method,
        threshold=preset.ransac_threshold,
        confidence=preset.ransac_confidence,
        max_iters=preset.ransac_max_iters,
        seed=seed,
    )
    H_est, inliers = estimate_homography(pts0, pts1, **ransac)
    err = homography_corner_error(H_est, H, corner_points(shape0, "superpoint"))
    out["homography_error"] = err
    for eps in preset.homography_eps:
        out[f"homography@{eps:g}px"] = float(err <= eps)
    reproj = reprojection_errors(pts0, pts1, H)
    n0 = int(shared_view_mask(f0.keypoints, H, shape1).sum())
    n1 = int(shared_view_mask(f1.keypoints, np.linalg.inv(H), shape0).sum())
    if preset.labels == "gt":
        correct = int((reproj <= preset.correct_px).sum())
        denominator = n0 + n1
    else:
        # pytorch-superpoint: RANSAC inliers over all keypoints of image 0 plus those
        # of image 1 that fall inside image 0.
        correct = int(inliers.sum())
        denominator = len(f0.keypoints) + n1
    out["matching_score"] = 2.0 * correct / denominator if denominator else 0.0
    nn = dist < preset.nn_threshold
    if preset.labels == "gt":
        labels = reproj[nn] <= preset.correct_px
    else:
        _, labels = estimate_homography(pts0[nn], pts1[nn], **ransac)
    out["nn_map"] = average_precision(labels, -dist[nn])
    out["num_matches"] = len(matches)
    out["num_nn_matches"] = int(nn.sum())
    return out


def _score_d2net(preset, f0, f1, H) -> dict[str, Any]:
    out: dict[str, Any] = {
        "num_keypoints0": len(f0.keypoints),
        "num_keypoints1": len(f1.keypoints),
    }
    matches, _ = _mutual_matches(f0, f1)
    err = reprojection_errors(
        f0.keypoints[matches[:, 0]], f1.keypoints[matches[:, 1]], H
    )
    for t, value in zip(preset.mma_thresholds, mma_curve(err, preset.mma_thresholds)):
        out[f"mma@{t:g}"] = float(value)
    out["num_matches"] = len(matches)
    return out


def _score_gluefactory(preset, f0, f1, H, shape0, seed) -> dict[str, Any]:
    matches, dist = _mutual_matches(f0, f1)
    pts0, pts1 = f0.keypoints[matches[:, 0]], f1.keypoints[matches[:, 1]]
    corners = corner_points(shape0, "gluefactory")
    # glue-factory weights the DLT by the matcher's scores: here the cosine similarity.
    weights = np.clip(1.0 - dist.astype(np.float64) ** 2 / 2.0, 0.0, None)
    H_dlt = weighted_dlt(pts0, pts1, weights)
    H_rob, inliers = estimate_homography(
        pts0,
        pts1,
        preset.ransac_method,
        preset.ransac_threshold,
        preset.ransac_confidence,
        preset.ransac_max_iters,
        seed,
    )
    sym = symmetric_reprojection_errors(pts0, pts1, H)
    return {
        "H_error_dlt": homography_corner_error(H_dlt, H, corners),
        "H_error_ransac": homography_corner_error(H_rob, H, corners),
        "ransac_inliers": int(inliers.sum()),
        "prec@1px": float((sym < 1).mean()) if len(sym) else 0.0,
        "prec@3px": float((sym < 3).mean()) if len(sym) else 0.0,
        "num_matches": len(matches),
        "num_keypoints": (len(f0.keypoints) + len(f1.keypoints)) / 2.0,
    }


def failed_pair(preset: Preset) -> dict[str, Any]:
    """Metrics of a pair that could not be scored: the worst value of each metric."""
    if preset.protocol == "superpoint":
        out = {"repeatability": 0.0, "mle": float("nan"), "homography_error": math.inf}
        out.update({f"homography@{e:g}px": 0.0 for e in preset.homography_eps})
        out.update(nn_map=0.0, matching_score=0.0, num_matches=0)
        return out
    if preset.protocol == "d2net":
        out = {f"mma@{t:g}": 0.0 for t in preset.mma_thresholds}
        out["num_matches"] = 0
        return out
    return {
        "H_error_dlt": math.inf,
        "H_error_ransac": math.inf,
        "prec@1px": 0.0,
        "prec@3px": 0.0,
        "num_matches": 0,
    }
