"""Vectorised metrics of the HPatches protocols (SuperPoint, D2-Net, glue-factory).

Each function scores one image pair from keypoints (x, y) in pixels (centre of the
top-left pixel at (0, 0)) and the ground-truth homography ``H`` mapping image 0 to
image 1. The definitions follow the public reference implementations:

- repeatability and localisation error (MLE): keypoints of each image are kept where
  they fall inside the other image once warped (the shared view), the best ``top_k`` by
  score are kept, and a point counts as repeated when its nearest neighbour in the other
  image (after warping) is within ``threshold``; repeatability = (c0 + c1) / (n0 + n1),
  MLE = mean distance of the repeated points (rpautrat/SuperPoint, pytorch-superpoint);
- homography correctness: the estimated homography moves the 4 image corners
  ``(0, 0), (0, h-1), (w-1, 0), (w-1, h-1)`` to within ``eps`` pixels on average of the
  ground truth (SuperPoint); glue-factory uses the corners ``(0, 0) ... (w, h)`` and the
  AUC of that error up to 1/3/5 px;
- MMA@t: per pair, the fraction of matches whose reprojection error is <= t, 0 for a pair
  without matches (D2-Net);
- average precision of ranked matches (the step-wise sum of scikit-learn's
  ``average_precision_score``), used for NN mAP.

Obviously-correct loop versions of these functions live in the tests.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial.distance import cdist

from geometry.homography import points_inside, warp_points
from geometry.keypoints import top_k_indices


def warp_finite(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Warp (N, 2) points; points sent to infinity become ``inf`` (never NaN)."""
    warped = warp_points(np.asarray(points, dtype=np.float64).reshape(-1, 2), H)
    return np.where(np.isfinite(warped), warped, np.inf)


def shared_view_mask(
    points: np.ndarray, H: np.ndarray, other_shape: tuple[int, int]
) -> np.ndarray:
    """Which (N, 2) points land inside the other image (``(h, w)``) once warped by H."""
    return points_inside(warp_finite(points, H), other_shape)


def repeatability(
    kp0: np.ndarray,
    kp1: np.ndarray,
    H: np.ndarray,
    shape0: tuple[int, int],
    shape1: tuple[int, int],
    threshold: float = 3.0,
    scores0: np.ndarray | None = None,
    scores1: np.ndarray | None = None,
    top_k: int | None = None,
) -> dict[str, float]:
    """Repeatability and localisation error of one pair.

    Args:
        kp0: (N0, 2) keypoints of image 0; kp1: (N1, 2) of image 1.
        H: (3, 3) ground truth, image 0 -> image 1.
        shape0, shape1: ``(h, w)`` of the two images.
        threshold: distance (px) under which a point is repeated (inclusive).
        scores0, scores1: (N,) detection scores for the top-k selection.
        top_k: keypoints kept per image after the shared-view filter.

    Returns:
        ``repeatability`` (0 when nothing is repeated), ``mle`` (NaN when nothing is
        repeated), ``num_shared0``/``num_shared1`` (n0, n1), ``num_repeated0``/
        ``num_repeated1`` (c0, c1).
    """
    kp0 = np.asarray(kp0, dtype=np.float64).reshape(-1, 2)
    kp1 = np.asarray(kp1, dtype=np.float64).reshape(-1, 2)
    warped0 = warp_finite(kp0, H)
    keep0 = np.flatnonzero(points_inside(warped0, shape1))
    keep1 = np.flatnonzero(shared_view_mask(kp1, np.linalg.inv(H), shape0))
    if scores0 is not None:
        scores0 = np.asarray(scores0)[keep0]
    if scores1 is not None:
        scores1 = np.asarray(scores1)[keep1]
    keep0 = keep0[top_k_indices(scores0, len(keep0), top_k)]
    keep1 = keep1[top_k_indices(scores1, len(keep1), top_k)]
    n0, n1 = len(keep0), len(keep1)
    c0 = c1 = 0
    err = 0.0
    if n0 and n1:
        dist = cdist(warped0[keep0], kp1[keep1])
        min0, min1 = dist.min(axis=1), dist.min(axis=0)
        ok0, ok1 = min0 <= threshold, min1 <= threshold
        c0, c1 = int(ok0.sum()), int(ok1.sum())
        err = float(min0[ok0].sum() + min1[ok1].sum())
    count = c0 + c1
    return {
        "repeatability": count / (n0 + n1) if count else 0.0,
        "mle": err / count if count else float("nan"),
        "num_shared0": n0,
        "num_shared1": n1,
        "num_repeated0": c0,
        "num_repeated1": c1,
    }


def reprojection_errors(
    pts0: np.ndarray, pts1: np.ndarray, H: np.ndarray
) -> np.ndarray:
    """``|H(pts0) - pts1|`` for (M, 2) matched points; ``inf`` where H sends to infinity."""
    d = warp_finite(pts0, H) - np.asarray(pts1, dtype=np.float64).reshape(-1, 2)
    with np.errstate(invalid="ignore"):
        err = np.sqrt((d**2).sum(axis=1))
    return np.where(np.isnan(err), np.inf, err)


def symmetric_reprojection_errors(
    pts0: np.ndarray, pts1: np.ndarray, H: np.ndarray
) -> np.ndarray:
    """Mean of the forward and backward reprojection errors (glue-factory)."""
    forward = reprojection_errors(pts0, pts1, H)
    backward = reprojection_errors(pts1, pts0, np.linalg.inv(H))
    return (forward + backward) / 2.0


def mma_curve(errors: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Fraction of errors <= each threshold; all zeros when there is no match."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        return np.zeros(len(thresholds))
    return (errors[None, :] <= thresholds[:, None]).mean(axis=1)


def corner_points(shape: tuple[int, int], style: str = "superpoint") -> np.ndarray:
    """The 4 reference corners (4, 2) of an image ``(h, w)``.

    ``superpoint``: pixel centres ``(0, 0), (0, h-1), (w-1, 0), (w-1, h-1)``;
    ``gluefactory``: image extent ``(0, 0), (w, 0), (w, h), (0, h)``.
    """
    h, w = shape
    if style == "superpoint":
        return np.array([[0, 0], [0, h - 1], [w - 1, 0], [w - 1, h - 1]], np.float64)
    if style == "gluefactory":
        return np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    raise ValueError(f"unknown corner style {style!r}")


def homography_corner_error(
    H_est: np.ndarray | None, H_gt: np.ndarray, corners: np.ndarray
) -> float:
    """Mean distance between the corners warped by ``H_est`` and by ``H_gt``.

    Returns ``inf`` when there is no estimate or it is degenerate.
    """
    if H_est is None or not np.all(np.isfinite(H_est)):
        return float("inf")
    err = np.linalg.norm(
        warp_finite(corners, H_est) - warp_finite(corners, H_gt), axis=1
    )
    mean = float(err.mean())
    return mean if np.isfinite(mean) else float("inf")


_CV2_METHODS = {
    "ransac": cv2.RANSAC,
    "usac": cv2.USAC_DEFAULT,
    "magsac": cv2.USAC_MAGSAC,
    "lmeds": cv2.LMEDS,
}


def estimate_homography(
    pts0: np.ndarray,
    pts1: np.ndarray,
    method: str = "ransac",
    threshold: float = 3.0,
    confidence: float = 0.995,
    max_iters: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Robust homography from (M, 2) matches with OpenCV.

    Args:
        pts0, pts1: matched points.
        method: ``ransac`` (cv2.RANSAC), ``usac`` (LO-RANSAC), ``magsac`` or ``lmeds``.
        threshold: inlier reprojection threshold in pixels.
        confidence, max_iters: RANSAC stopping criteria (OpenCV defaults here).
        seed: OpenCV RNG seed, so results are reproducible.

    Returns:
        ``H`` (3, 3) or None when fewer than 4 matches or no solution, and the inlier
        mask (M,) bool.
    """
    pts0 = np.asarray(pts0, dtype=np.float64).reshape(-1, 2)
    pts1 = np.asarray(pts1, dtype=np.float64).reshape(-1, 2)
    inliers = np.zeros(len(pts0), dtype=bool)
    if len(pts0) < 4:
        return None, inliers
    cv2.setRNGSeed(seed)
    try:
        H, mask = cv2.findHomography(
            pts0,
            pts1,
            _CV2_METHODS[method],
            ransacReprojThreshold=threshold,
            maxIters=max_iters,
            confidence=confidence,
        )
    except cv2.error:
        return None, inliers
    if H is None or mask is None or not np.all(np.isfinite(H)):
        return None, inliers
    return H, mask.ravel().astype(bool)


def weighted_dlt(
    pts0: np.ndarray, pts1: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray | None:
    """Weighted direct linear transform (all matches, no outlier rejection).

    Points are normalised (Hartley: centroid at 0, mean distance sqrt(2)); each match
    contributes two rows of the DLT system scaled by ``sqrt(weight)``; the solution is the
    right singular vector of the smallest singular value.

    Args:
        pts0, pts1: (M, 2) matched points.
        weights: (M,) non-negative weights (default: all 1).

    Returns:
        ``H`` (3, 3) with ``H[2, 2] = 1`` (when possible), or None for fewer than 4
        matches or a degenerate system.
    """
    pts0 = np.asarray(pts0, dtype=np.float64).reshape(-1, 2)
    pts1 = np.asarray(pts1, dtype=np.float64).reshape(-1, 2)
    m = len(pts0)
    if m < 4:
        return None
    w = (
        np.ones(m)
        if weights is None
        else np.clip(np.asarray(weights, np.float64), 0, None)
    )
    if np.count_nonzero(w) < 4:
        return None

    def normaliser(p: np.ndarray) -> np.ndarray:
        centre = p.mean(axis=0)
        scale = np.sqrt(2) / max(np.linalg.norm(p - centre, axis=1).mean(), 1e-12)
        return np.array(
            [[scale, 0, -scale * centre[0]], [0, scale, -scale * centre[1]], [0, 0, 1]]
        )

    T0, T1 = normaliser(pts0), normaliser(pts1)
    p0 = pts0 @ T0[:2, :2].T + T0[:2, 2]
    p1 = pts1 @ T1[:2, :2].T + T1[:2, 2]
    x, y, u, v = p0[:, 0], p0[:, 1], p1[:, 0], p1[:, 1]
    zeros, ones = np.zeros(m), np.ones(m)
    rows_u = np.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y, -u], axis=1)
    rows_v = np.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y, -v], axis=1)
    sw = np.sqrt(w)[:, None]
    A = np.concatenate([rows_u * sw, rows_v * sw], axis=0)
    try:
        _, _, vt = np.linalg.svd(A, full_matrices=False)
    except np.linalg.LinAlgError:
        return None
    Hn = vt[-1].reshape(3, 3)
    H = np.linalg.inv(T1) @ Hn @ T0
    if not np.all(np.isfinite(H)) or abs(np.linalg.det(H)) < 1e-15:
        return None
    return H / H[2, 2] if abs(H[2, 2]) > 1e-12 else H


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of ranked predictions (higher score = more confident).

    Equal scores form one threshold, as in scikit-learn's ``average_precision_score``:
    ``AP = sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds. Returns 0 when
    there is no positive (the pytorch-superpoint convention for NN mAP).
    """
    labels = np.asarray(labels, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.size == 0 or not labels.any():
        return 0.0
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    ends = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    tps = np.cumsum(labels)[ends].astype(np.float64)
    precision = tps / (ends + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def error_auc(errors: np.ndarray, thresholds: list[float]) -> list[float]:
    """Area under the cumulative error curve up to each threshold, normalised to [0, 1].

    The glue-factory definition: errors sorted, recall (i + 1) / n, a point (0, 0)
    prepended, trapezoidal integration up to ``t``, divided by ``t``. Infinite errors
    (failed estimates) count in ``n`` but never reach the curve.
    """
    errors = np.sort(np.asarray(errors, dtype=np.float64))
    if errors.size == 0:
        return [float("nan")] * len(thresholds)
    recall = (np.arange(len(errors)) + 1) / len(errors)
    errors = np.r_[0.0, errors]
    recall = np.r_[0.0, recall]
    aucs = []
    for t in thresholds:
        last = int(np.searchsorted(errors, t))
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[errors[:last], t]
        aucs.append(float(np.trapezoid(r, x=e) / t))
    return aucs
