"""Keypoint post-processing shared by every detector: NMS, thresholding, borders, top-k.

``nms`` is the batched max-pool formulation iterated to its fixed point, which equals the greedy
"keep the strongest, suppress its square neighbourhood" loop of the SuperPoint reference frontend
(``greedy_nms`` below, kept as the obviously-correct version for tests and benchmarks): a point
that is the maximum of its window among points not yet suppressed is kept by the greedy loop too,
and at the fixed point no such point is left. Scores are assumed distinct (ties are all kept).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def nms(scores: torch.Tensor, radius: int, max_iterations: int = 64) -> torch.Tensor:
    """Non-maximum suppression in square windows of side ``2 * radius + 1``.

    Args:
        scores: ``(B, H, W)`` non-negative scores (zero = not a candidate).
        radius: suppression radius in pixels (Chebyshev distance).
        max_iterations: cap on fixed-point iterations (a few suffice in practice).

    Returns:
        ``(B, H, W)`` scores with suppressed pixels set to 0.
    """
    if radius <= 0:
        return scores

    def window_max(x: torch.Tensor) -> torch.Tensor:
        return _window_max_1d(_window_max_1d(x, radius, -1), radius, -2)

    zeros = torch.zeros_like(scores)
    keep = (scores == window_max(scores)) & (scores > 0)
    for _ in range(max_iterations):
        suppressed = window_max(keep.to(scores.dtype)) > 0
        remaining = torch.where(suppressed, zeros, scores)
        new = (remaining == window_max(remaining)) & (remaining > 0) & ~suppressed
        if not bool(new.any()):
            break
        keep = keep | new
    return torch.where(keep, scores, zeros)


def _window_max_1d(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Max over ``[i - radius, i + radius]`` along ``dim`` for non-negative ``x``.

    Built from running maxima of doubling width (a handful of vectorised ``maximum`` calls),
    which on a CPU is several times faster than a stride-1 ``max_pool2d``; padding with 0 is
    neutral because scores are non-negative.
    """
    length, width = x.shape[dim], 2 * radius + 1
    running = F.pad(x, _pad_spec(x.dim(), dim, radius))
    span = 1
    while 2 * span <= width:
        size = running.shape[dim] - span
        running = torch.maximum(
            running.narrow(dim, 0, size), running.narrow(dim, span, size)
        )
        span *= 2
    return torch.maximum(
        running.narrow(dim, 0, length), running.narrow(dim, width - span, length)
    )


def _pad_spec(ndim: int, dim: int, radius: int) -> list[int]:
    """``F.pad`` spec padding ``radius`` on both sides of ``dim`` only."""
    spec = [0] * (2 * ndim)
    back = ndim - 1 - (dim % ndim)
    spec[2 * back], spec[2 * back + 1] = radius, radius
    return spec


def nms_map(scores: np.ndarray, radius: int, max_iterations: int = 64) -> np.ndarray:
    """:func:`nms` of one ``(H, W)`` NumPy map, with the same result (ties included).

    The same fixed-point iteration, each window maximum an OpenCV dilation by a square:
    several times faster than the batched tensor version on single maps, which is how
    the Synthetic Shapes evaluation runs the OpenCV baselines in its data workers.

    Args:
        scores: ``(H, W)`` non-negative float32 scores (zero = not a candidate).
        radius: suppression radius in pixels (Chebyshev distance).

    Returns:
        ``(H, W)`` scores with suppressed pixels set to 0.
    """
    if radius <= 0:
        return scores
    import cv2

    # Out-of-image pixels do not count in a dilation, as the zeros padding the tensor
    # version's windows (the scores are non-negative).
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    keep = (scores == cv2.dilate(scores, kernel)) & (scores > 0)
    for _ in range(max_iterations):
        suppressed = cv2.dilate(keep.view(np.uint8), kernel).view(bool)
        remaining = np.where(suppressed, 0, scores).astype(scores.dtype)
        new = (remaining == cv2.dilate(remaining, kernel)) & (remaining > 0)
        new &= ~suppressed
        if not new.any():
            break
        keep |= new
    return np.where(keep, scores, 0).astype(scores.dtype)


def greedy_nms(scores: np.ndarray, radius: int, threshold: float = 0.0) -> np.ndarray:
    """Plain greedy NMS on one ``(H, W)`` map (reference behaviour; slow, for checks).

    Returns:
        ``(N, 2)`` integer (x, y) of kept points, sorted by decreasing score.
    """
    h, w = scores.shape
    ys, xs = np.nonzero(scores > threshold)
    order = np.argsort(-scores[ys, xs], kind="stable")
    suppressed = np.zeros((h, w), dtype=bool)
    kept = []
    for i in order:
        x, y = xs[i], ys[i]
        if suppressed[y, x]:
            continue
        kept.append((x, y))
        suppressed[
            max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1
        ] = True
    return np.array(kept, dtype=np.int64).reshape(-1, 2)


def extract_keypoints(
    heatmap: torch.Tensor,
    threshold: float,
    nms_radius: int,
    border: int = 0,
    top_k: int = -1,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Threshold, NMS, border removal and top-k on a batch of score maps.

    Args:
        heatmap: ``(B, H, W)`` keypoint probabilities.
        threshold: minimum score kept (strictly greater).
        nms_radius: see :func:`nms`; 0 disables NMS.
        border: drop points closer than this to the image edge (``x < border`` or
            ``x >= W - border``, as the reference frontend).
        top_k: keep the ``top_k`` strongest per image (``<= 0`` keeps all).

    Returns:
        Per image, ``keypoints (N, 2)`` float (x, y) sorted by decreasing score, and
        ``scores (N,)``.
    """
    heatmap = heatmap.float()
    scores = torch.where(heatmap > threshold, heatmap, torch.zeros_like(heatmap))
    scores = nms(scores, nms_radius)
    if border > 0:
        scores[:, :border] = 0
        scores[:, -border:] = 0
        scores[:, :, :border] = 0
        scores[:, :, -border:] = 0
    keypoints, kept_scores = [], []
    for s in scores:
        ys, xs = torch.nonzero(s > 0, as_tuple=True)
        values = s[ys, xs]
        order = torch.argsort(values, descending=True, stable=True)
        if top_k > 0:
            order = order[:top_k]
        keypoints.append(torch.stack([xs[order], ys[order]], dim=-1).float())
        kept_scores.append(values[order])
    return keypoints, kept_scores


def top_k_indices(scores: np.ndarray | None, n: int, k: int | None) -> np.ndarray:
    """Indices of the ``k`` highest scores (all ``n`` when ``k`` is None), best first.

    Ties keep the original order; without scores the first ``k`` are taken.
    """
    if scores is None:
        return np.arange(n if k is None else min(k, n))
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return order if k is None else order[:k]
