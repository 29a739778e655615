import cv2
import numpy as np
import pytest

from evaluators.synthetic_shapes import (
    Scorer,
    classical_response,
    localization_errors,
    match_detections,
    precision_recall,
)


def slow_match(points, scores, gt, distance):
    """Obvious loop: strongest first, each claims the nearest free ground truth in range."""
    order = sorted(range(len(points)), key=lambda i: -scores[i])
    free = list(range(len(gt)))
    flags = []
    for i in order:
        best, best_d = None, None
        for j in free:
            d = float(np.hypot(*(points[i] - gt[j])))
            if d <= distance and (best_d is None or d < best_d):
                best, best_d = j, d
        flags.append(best is not None)
        if best is not None:
            free.remove(best)
    return np.array(flags, dtype=bool)


def slow_average_precision(tp, scores, n_gt):
    """Area under the upper envelope of the PR curve, by an explicit loop."""
    order = np.argsort(-scores, kind="stable")
    precisions, recalls, hits = [], [], 0
    for rank, i in enumerate(order, start=1):
        hits += tp[i]
        precisions.append(hits / rank)
        recalls.append(hits / n_gt)
    area, previous_recall = 0.0, 0.0
    for k in range(len(order)):
        envelope = max(precisions[k:])
        area += envelope * (recalls[k] - previous_recall)
        previous_recall = recalls[k]
    return area


def test_matching_equals_loop_on_random_inputs():
    rng = np.random.default_rng(0)
    for _ in range(20):
        points = rng.integers(0, 40, (30, 2)).astype(float)
        gt = rng.uniform(0, 40, (15, 2))
        scores = rng.random(30)
        fast = match_detections(points, scores, gt, 4.0)
        assert np.array_equal(fast, slow_match(points, scores, gt, 4.0))


def test_average_precision_equals_loop_and_perfect_detector_scores_one():
    rng = np.random.default_rng(1)
    for _ in range(20):
        tp = rng.random(40) < 0.5
        scores = rng.random(40)
        n_gt = int(tp.sum()) + int(rng.integers(0, 5))
        _, _, m_ap = precision_recall(tp, scores, max(n_gt, 1))
        assert m_ap == pytest.approx(slow_average_precision(tp, scores, max(n_gt, 1)))
    tp = np.array([True] * 5 + [False] * 3)
    scores = np.linspace(1, 0.1, 8)
    assert precision_recall(tp, scores, 5)[2] == pytest.approx(1.0)
    # Five misses, then three hits of five: precisions 1/6, 2/7, 3/8 at recalls 1/5,
    # 2/5, 3/5; the upper envelope is 3/8 at each step, so mAP = 3/8 * 3/5 = 0.225
    # (the raw curve without the envelope would give 0.1655).
    assert precision_recall(~tp, scores, 5)[2] == pytest.approx(3 / 8 * 3 / 5)


def test_scorer_perfect_and_offset_detections():
    gt = np.array([[10.0, 10.0], [30.0, 20.0], [50.0, 40.0]])
    prob = np.zeros((64, 64))
    prob[10, 10], prob[20, 31], prob[41, 50] = 0.9, 0.8, 0.7
    scorer = Scorer(correct_distance=4.0, loc_threshold=0.5, loc_distance=2.0)
    scorer.add(prob, gt, "draw_polygon", floor=1e-4)
    res = scorer.results()
    assert res["mAP"] == pytest.approx(1.0)
    assert res["localization_error"] == pytest.approx(2 / 3)
    assert (
        localization_errors(np.array([[0.0, 3.0]]), np.array([[0.0, 0.0]]), 2.0).size
        == 0
    )


def test_classical_detectors_fire_on_a_square_corner():
    image = np.zeros((48, 48), np.float32)
    image[16:40, 16:40] = 1.0
    image = cv2.GaussianBlur(image, (3, 3), 0)  # the shapes are blurred too
    for method in ("harris", "shi", "fast"):
        resp = classical_response(image, method)
        y, x = np.unravel_index(resp.argmax(), resp.shape)
        corners = np.array([[16, 16], [16, 39], [39, 16], [39, 39]])
        assert np.min(np.abs(corners - [y, x]).max(axis=1)) <= 2, method
