"""Descriptor matching: mutual (two-way) nearest neighbours, distance and ratio tests.

Every matcher works on unit vectors, so one code path serves all descriptors:

- float descriptors (SuperPoint, R2D2, SIFT) are L2-normalised;
- binary descriptors (ORB, stored packed as OpenCV gives them: uint8, 32 bytes) are
  unpacked to bits b and mapped to ``(2 b - 1) / sqrt(n_bits)``. Two such vectors are at
  Euclidean distance ``2 sqrt(hamming / n_bits)``, a monotonic function of the Hamming
  distance, so nearest neighbours, cross-checks and ratio tests equal their Hamming
  versions, and a distance threshold ``t`` means ``hamming <= n_bits * t**2 / 4``.

Similarities are computed with one matrix product (torch, multi-threaded); distances
are ``sqrt(2 - 2 sim)``. Ties in the nearest neighbour resolve to the lowest index.
"""

from __future__ import annotations

import numpy as np
import torch


def normalize_descriptors(descriptors: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Unit-norm float32 tensor (N, D) from float or packed binary (uint8) descriptors.

    Args:
        descriptors: (N, D) float, or (N, B) uint8 packed bits (then D = 8 B).

    Returns:
        (N, D) float32 rows of unit norm (zero rows stay zero).
    """
    if isinstance(descriptors, torch.Tensor):
        descriptors = descriptors.detach().cpu().numpy()
    descriptors = np.asarray(descriptors)
    if descriptors.ndim != 2:
        raise ValueError(f"descriptors must be 2-D (N, D), got {descriptors.shape}")
    if descriptors.dtype == np.uint8:
        bits = np.unpackbits(descriptors, axis=1).astype(np.float32)
        return torch.from_numpy((2.0 * bits - 1.0) / np.sqrt(bits.shape[1]))
    desc = torch.from_numpy(np.ascontiguousarray(descriptors, dtype=np.float32))
    norm = desc.norm(dim=1, keepdim=True)
    return desc / norm.clamp_min(1e-12)


def similarity(desc0: torch.Tensor, desc1: torch.Tensor) -> torch.Tensor:
    """Cosine similarity matrix (N0, N1) of unit descriptors (N0, D) and (N1, D)."""
    return desc0 @ desc1.T


def sim_to_distance(sim: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Euclidean distance of unit vectors from their cosine similarity."""
    if isinstance(sim, torch.Tensor):
        return torch.sqrt((2.0 - 2.0 * sim).clamp_min(0.0))
    return np.sqrt(np.clip(2.0 - 2.0 * sim, 0.0, None))


def match_similarity(
    sim: torch.Tensor,
    mutual: bool = True,
    max_distance: float | None = None,
    ratio: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour matches from a similarity matrix.

    Args:
        sim: (N0, N1) cosine similarities of unit descriptors.
        mutual: keep only two-way (cross-checked) nearest neighbours.
        max_distance: keep matches with Euclidean distance strictly below this (the
            SuperPoint two-way matcher uses 0.7 for tracking and 1.2 for NN mAP).
        ratio: Lowe's test, keep when ``d_best < ratio * d_second`` (distances).

    Returns:
        ``matches`` (M, 2) int64 indices (i0, i1), sorted by i0, and ``distances`` (M,)
        float32 Euclidean descriptor distances.
    """
    n0, n1 = sim.shape
    if n0 == 0 or n1 == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    best_sim, nn01 = sim.max(dim=1)
    keep = torch.ones(n0, dtype=torch.bool)
    if mutual:
        nn10 = sim.argmax(dim=0)
        keep &= nn10[nn01] == torch.arange(n0)
    dist = sim_to_distance(best_sim)
    if max_distance is not None:
        keep &= dist < max_distance
    if ratio is not None:
        if n1 < 2:
            keep &= False
        else:
            second = sim.topk(2, dim=1).values[:, 1]
            keep &= dist < ratio * sim_to_distance(second)
    idx0 = torch.nonzero(keep).flatten()
    matches = torch.stack([idx0, nn01[idx0]], dim=1).numpy().astype(np.int64)
    return matches, dist[idx0].numpy().astype(np.float32)


def match_descriptors(
    desc0: np.ndarray | torch.Tensor,
    desc1: np.ndarray | torch.Tensor,
    mutual: bool = True,
    max_distance: float | None = None,
    ratio: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Match raw descriptors (float or packed binary); see :func:`match_similarity`.

    Example:
        >>> d = np.eye(3, dtype=np.float32)
        >>> match_descriptors(d, d[::-1])[0].tolist()
        [[0, 2], [1, 1], [2, 0]]
    """
    sim = similarity(normalize_descriptors(desc0), normalize_descriptors(desc1))
    return match_similarity(sim, mutual=mutual, max_distance=max_distance, ratio=ratio)
