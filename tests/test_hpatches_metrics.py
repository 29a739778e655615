"""HPatches metrics and matchers: known answers, and fast versions == plain loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluators.hpatches.metrics import (
    average_precision,
    corner_points,
    error_auc,
    estimate_homography,
    homography_corner_error,
    mma_curve,
    repeatability,
    reprojection_errors,
    symmetric_reprojection_errors,
    weighted_dlt,
)
from geometry.keypoints import top_k_indices
from geometry.matching import match_descriptors, normalize_descriptors


def _random_homography(rng: np.random.Generator) -> np.ndarray:
    H = np.eye(3) + rng.normal(0, [[0.05, 0.05, 3], [0.05, 0.05, 3], [1e-4, 1e-4, 0]])
    return H / H[2, 2]


def _warp(p: np.ndarray, H: np.ndarray) -> np.ndarray:
    q = np.c_[p, np.ones(len(p))] @ H.T
    return q[:, :2] / q[:, 2:]


# ----------------------------------------------------------------- loops (references)


def _inside(p, shape) -> bool:
    h, w = shape
    return -0.5 <= p[0] < w - 0.5 and -0.5 <= p[1] < h - 0.5


def _repeatability_loop(kp0, kp1, H, shape0, shape1, thr, s0, s1, top_k):
    Hinv = np.linalg.inv(H)
    w0 = [(_warp(p[None], H)[0], s) for p, s in zip(kp0, s0)]
    a = [(q, s) for q, s in w0 if _inside(q, shape1)]
    b = [(p, s) for p, s in zip(kp1, s1) if _inside(_warp(p[None], Hinv)[0], shape0)]
    a = [q for q, _ in sorted(a, key=lambda t: -t[1])][:top_k]
    b = [p for p, _ in sorted(b, key=lambda t: -t[1])][:top_k]
    count, err = 0, 0.0
    for src, dst in ((a, b), (b, a)):
        for p in src:
            if not dst:
                continue
            d = min(math.dist(p, q) for q in dst)
            if d <= thr:
                count += 1
                err += d
    rep = count / (len(a) + len(b)) if count else 0.0
    return rep, (err / count if count else float("nan"))


def _mutual_nn_loop(d0, d1, max_distance=None, ratio=None):
    out = []
    for i in range(len(d0)):
        dists = [np.linalg.norm(d0[i] - d1[j]) for j in range(len(d1))]
        j = int(np.argmin(dists))
        back = [np.linalg.norm(d0[k] - d1[j]) for k in range(len(d0))]
        if int(np.argmin(back)) != i:
            continue
        if max_distance is not None and not dists[j] < max_distance:
            continue
        if ratio is not None and not dists[j] < ratio * sorted(dists)[1]:
            continue
        out.append((i, j))
    return out


def _ap_loop(labels, scores):
    if not any(labels):
        return 0.0
    total = sum(labels)
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        sel = [lab for lab, s in zip(labels, scores) if s >= t]
        precision = sum(sel) / len(sel)
        recall = sum(sel) / total
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def _auc_loop(errors, t):
    # Area under the step-free (linear) recall curve by fine numerical integration.
    errors = sorted(errors)
    n = len(errors)
    xs = [0.0] + [e for e in errors if e < t] + [t]
    ys = [0.0] + [(i + 1) / n for i, e in enumerate(errors) if e < t]
    ys.append(ys[-1])
    area = sum(
        (xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1)
    )
    return area / t


# ----------------------------------------------------------------- fast == loop


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repeatability_equals_loop(seed):
    rng = np.random.default_rng(seed)
    shape0, shape1 = (60, 80), (70, 90)
    H = _random_homography(rng)
    kp0 = rng.uniform(-5, 85, (70, 2))
    kp1 = np.r_[
        _warp(kp0[:40], H) + rng.normal(0, 1.5, (40, 2)), rng.uniform(0, 90, (30, 2))
    ]
    s0, s1 = rng.random(70), rng.random(70)
    for top_k in (None, 25):
        got = repeatability(kp0, kp1, H, shape0, shape1, 3.0, s0, s1, top_k)
        rep, mle = _repeatability_loop(kp0, kp1, H, shape0, shape1, 3.0, s0, s1, top_k)
        assert got["repeatability"] == pytest.approx(rep, abs=1e-12)
        assert got["mle"] == pytest.approx(mle, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_mutual_nn_equals_loop(seed):
    rng = np.random.default_rng(seed)
    d0 = rng.normal(size=(40, 8)).astype(np.float32)
    d1 = np.r_[d0[:25] + rng.normal(0, 0.3, (25, 8)), rng.normal(size=(20, 8))].astype(
        np.float32
    )
    u0, u1 = normalize_descriptors(d0).numpy(), normalize_descriptors(d1).numpy()
    for kwargs in ({}, {"max_distance": 0.7}, {"ratio": 0.9}):
        got, dist = match_descriptors(d0, d1, **kwargs)
        assert [tuple(m) for m in got] == _mutual_nn_loop(u0, u1, **kwargs)
        ref = np.linalg.norm(u0[got[:, 0]] - u1[got[:, 1]], axis=1)
        assert np.allclose(dist, ref, atol=1e-5)


def test_binary_descriptors_match_by_hamming():
    rng = np.random.default_rng(0)
    d0 = rng.integers(0, 256, (30, 32), dtype=np.uint8)
    flips = (
        rng.integers(0, 256, (30, 32), dtype=np.uint8)
        & rng.integers(0, 256, (30, 32), dtype=np.uint8)
        & rng.integers(0, 256, (30, 32), dtype=np.uint8)
    )
    d1 = d0 ^ flips
    bits0, bits1 = np.unpackbits(d0, axis=1), np.unpackbits(d1, axis=1)
    ham = (bits0[:, None, :] != bits1[None, :, :]).sum(-1)
    expected = [
        (i, int(np.argmin(ham[i])))
        for i in range(30)
        if int(np.argmin(ham[:, np.argmin(ham[i])])) == i
    ]
    got, dist = match_descriptors(d0, d1)
    assert [tuple(m) for m in got] == expected
    # Euclidean distance of the embedding = 2 sqrt(hamming / 256).
    assert np.allclose(dist, 2 * np.sqrt(ham[got[:, 0], got[:, 1]] / 256), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_average_precision_equals_loop(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(50) < 0.4
    scores = np.round(rng.random(50), 1)  # many ties
    assert average_precision(labels, scores) == pytest.approx(
        _ap_loop(list(labels), list(scores)), abs=1e-12
    )


def test_error_auc_equals_loop():
    rng = np.random.default_rng(0)
    errors = np.r_[rng.exponential(2.0, 40), [np.inf] * 5]
    for t, got in zip((1, 3, 5), error_auc(errors, [1, 3, 5])):
        assert got == pytest.approx(_auc_loop(list(errors), t), abs=1e-12)


def test_mma_and_reprojection_equal_loops():
    rng = np.random.default_rng(0)
    H = _random_homography(rng)
    p0 = rng.uniform(0, 100, (30, 2))
    p1 = _warp(p0, H) + rng.normal(0, 3, (30, 2))
    err = reprojection_errors(p0, p1, H)
    loop = [math.dist(_warp(a[None], H)[0], b) for a, b in zip(p0, p1)]
    assert np.allclose(err, loop)
    sym = symmetric_reprojection_errors(p0, p1, H)
    back = [math.dist(_warp(b[None], np.linalg.inv(H))[0], a) for a, b in zip(p0, p1)]
    assert np.allclose(sym, (np.array(loop) + back) / 2)
    ts = np.arange(1, 11)
    assert np.allclose(
        mma_curve(err, ts), [np.mean([e <= t for e in loop]) for t in ts]
    )


# ----------------------------------------------------------------- known answers


def test_repeatability_known_answers():
    H = np.array([[1.0, 0, 5], [0, 1, -3], [0, 0, 1]])
    kp0 = np.array([[10 + 12 * i, 10 + 7 * (i % 3)] for i in range(10)], float)
    exact = _warp(kp0, H)
    out = repeatability(kp0, exact, H, (80, 140), (80, 140))
    assert out["repeatability"] == 1.0 and out["mle"] == pytest.approx(0, abs=1e-9)
    # Shift 4 points by 2 px (repeated, error 2) and 3 by 4 px (not repeated).
    shifted = exact.copy()
    shifted[:4, 0] += 2.0
    shifted[4:7, 1] += 4.0
    out = repeatability(kp0, shifted, H, (80, 140), (80, 140))
    assert out["repeatability"] == pytest.approx(14 / 20)
    assert out["mle"] == pytest.approx((4 * 2 + 4 * 2) / 14)
    assert (
        repeatability(kp0, np.zeros((0, 2)), H, (80, 140), (80, 140))["repeatability"]
        == 0.0
    )


def test_homography_estimation_and_corner_error():
    rng = np.random.default_rng(0)
    H = _random_homography(rng)
    p0 = rng.uniform(0, 200, (100, 2))
    p1 = _warp(p0, H)
    p1[:30] += rng.uniform(20, 40, (30, 2))  # gross outliers
    H_est, inliers = estimate_homography(p0, p1, "ransac", 3.0)
    corners = corner_points((150, 200))
    assert homography_corner_error(H_est, H, corners) < 1e-6
    assert inliers[30:].all() and not inliers[:30].any()
    shifted = np.array([[1, 0, 2.0], [0, 1, 0], [0, 0, 1]]) @ H
    assert homography_corner_error(shifted, H, corners) == pytest.approx(2.0)
    assert homography_corner_error(None, H, corners) == math.inf
    assert estimate_homography(p0[:3], p1[:3])[0] is None


def test_weighted_dlt_exact_and_weights():
    rng = np.random.default_rng(1)
    H = _random_homography(rng)
    p0 = rng.uniform(0, 300, (50, 2))
    p1 = _warp(p0, H)
    assert np.allclose(weighted_dlt(p0, p1), H, atol=1e-8)
    p1[:10] += 50.0
    weights = np.r_[np.zeros(10), np.ones(40)]
    assert np.allclose(weighted_dlt(p0, p1, weights), H, atol=1e-8)
    assert not np.allclose(weighted_dlt(p0, p1), H, atol=1e-3)
    assert weighted_dlt(p0[:3], p1[:3]) is None


def test_average_precision_hand_computed():
    labels, scores = [1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6]
    assert average_precision(labels, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision([0, 0], [1, 2]) == 0.0


def test_auc_hand_computed():
    # Errors 0.5 and 2 (+ one failure): recall 1/3 from 0.5, 2/3 from 2.
    aucs = error_auc([0.5, 2.0, np.inf], [1.0, 3.0])
    at1 = (0.5 * (1 / 3) / 2 + 0.5 * (1 / 3)) / 1.0
    at3 = (0.5 * (1 / 3) / 2 + 1.5 * (1 / 3 + 2 / 3) / 2 + 1.0 * (2 / 3)) / 3.0
    assert aucs == pytest.approx([at1, at3])


def test_top_k_and_corners():
    assert top_k_indices(np.array([0.1, 0.9, 0.5, 0.9]), 4, 2).tolist() == [1, 3]
    assert top_k_indices(None, 5, 3).tolist() == [0, 1, 2]
    assert corner_points((10, 20)).tolist() == [[0, 0], [0, 9], [19, 0], [19, 9]]
    assert corner_points((10, 20), "gluefactory").tolist() == [
        [0, 0],
        [20, 0],
        [20, 10],
        [0, 10],
    ]
