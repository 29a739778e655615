"""Descriptor losses of SuperPoint joint training: dense hinge loss and sparse sampled loss.

Both work on the coarse descriptor maps of an image pair related by a homography ``H_0to1``.
The descriptor of cell ``(i, j)`` sits at the cell centre ``(8 j + 3.5, 8 i + 3.5)`` in the
repository's pixel convention; two cells correspond when the centre of the first, warped into
the second image, lies within ``positive_distance`` of the centre of the second (7.5 px,
rpautrat/SuperPoint's ``grid_size - 0.5``; the paper's eq. 6 says 8 px).

* **Dense** (DeTone et al., 2018, eq. 5): a hinge on every cell pair,
  ``lambda_d * s * max(0, m_p - d.d') + (1 - s) * max(0, d.d' - m_n)``, averaged over pairs
  whose second cell is valid. It is computed from the ``(HcWc x HcWc)`` similarity matrix
  (one ``bmm``), never from the ``B x Hc x Wc x Hc x Wc x D`` tensor of the naive formulation,
  and batch chunks are recomputed in the backward pass (activation checkpointing), so peak
  memory is a few similarity matrices whatever the batch size. Optionally the ReLU'd
  similarity matrix is L2-normalised along both axes first (rpautrat/SuperPoint's variant,
  used with ``lambda_d = 0.05`` and a descriptor weight of 10000).
* **Sparse** (after ``descriptor_loss_sparse`` of the pytorch-superpoint port, whose
  training config uses it): per image about ``num_positives`` matching cells and
  ``num_negatives`` random cells of image 1 per positive; per image the mean positive hinge
  ``max(0, m_p - d.d')`` (weighted) plus the negative term, averaged over the batch. The
  negative term is named by ``negative_average``:

  - ``violators`` (default, the port's): the sum of the negative hinges
    ``max(0, d.d' - m_n)`` divided by one more than the number of negatives that violate
    the margin. When most sampled negatives lie beyond the margin, dividing by their
    number as well shrinks the negative term towards 0 and lets the positive term
    (weight 1 in the port's config) dominate; the port's averaging keeps the mean over
    the violators, so it is the default.
  - ``all``: the mean over every sampled negative, a plain hinge average.

  It differs from the port in its sampling: the positive descriptor is bilinearly sampled
  at the exact warped cell centre and re-normalised (the port takes the descriptor of the
  nearest cell as it is), negatives are
  only cells whose centre lies farther than ``negative_distance`` from the warped anchor
  (the port draws any cell, its own match included), ``valid_mask1`` removes cells, and
  anchors are not repeated to reach ``num_positives``.

:func:`dense_descriptor_loss_loop` is the plain per-pair loop used by tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from geometry.homography import pixel_to_grid, points_inside, warp_points
from losses.detector import cell_valid_mask
from utils.errors import UserError

CELL = 8
NEGATIVE_AVERAGES = ("violators", "all")


def cell_centers(hc: int, wc: int, device=None) -> torch.Tensor:
    """``(Hc * Wc, 2)`` (x, y) pixel centres of the cells, row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(hc, device=device, dtype=torch.float32),
        torch.arange(wc, device=device, dtype=torch.float32),
        indexing="ij",
    )
    centers = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
    return centers * CELL + (CELL - 1) / 2


def correspondence_mask(
    H_0to1: torch.Tensor, hc: int, wc: int, positive_distance: float = 7.5
) -> torch.Tensor:
    """Which cell pairs correspond under ``H_0to1``.

    Args:
        H_0to1: ``(B, 3, 3)``.
        hc, wc: coarse map size (same for both images).
        positive_distance: maximum distance in pixels between the warped centre of a cell
            of image 0 and the centre of a cell of image 1.

    Returns:
        ``(B, Hc*Wc, Hc*Wc)`` bool, ``[b, i, j]`` for cell ``i`` of image 0 and ``j`` of 1.
    """
    centers = cell_centers(hc, wc, H_0to1.device)
    warped = warp_points(centers[None].double(), H_0to1.double()).float()
    dist = torch.cdist(torch.nan_to_num(warped, nan=1e9), centers[None])
    return dist <= positive_distance


def _hinge_terms(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    H_0to1: torch.Tensor,
    weight1: torch.Tensor,
    hc: int,
    wc: int,
    positive_distance: float,
    lambda_d: float,
    positive_margin: float,
    negative_margin: float,
    normalize_similarity: bool,
) -> torch.Tensor:
    """Sum of weighted hinge terms of a batch chunk (``desc`` as ``(b, N, D)``)."""
    positive = correspondence_mask(H_0to1, hc, wc, positive_distance)
    sim = desc0 @ desc1.transpose(1, 2)
    if normalize_similarity:
        sim = F.normalize(F.relu(sim), dim=2)
        sim = F.normalize(sim, dim=1)
    pos = lambda_d * F.relu(positive_margin - sim)
    neg = F.relu(sim - negative_margin)
    loss = torch.where(positive, pos, neg)
    return (loss * weight1[:, None, :]).sum()


def dense_descriptor_loss(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    H_0to1: torch.Tensor,
    valid_mask1: torch.Tensor | None = None,
    lambda_d: float = 250.0,
    positive_margin: float = 1.0,
    negative_margin: float = 0.2,
    positive_distance: float = 7.5,
    normalize_similarity: bool = False,
    chunk_size: int = 4,
) -> torch.Tensor:
    """Dense descriptor hinge loss over all cell pairs (see module docstring).

    Args:
        desc0, desc1: ``(B, D, Hc, Wc)`` L2-normalised descriptor maps of images 0 and 1.
        H_0to1: ``(B, 3, 3)`` image 0 to image 1 pixels.
        valid_mask1: optional ``(B, 8Hc, 8Wc)`` pixels of image 1 with content; a cell
            counts when all its pixels do.
        lambda_d: weight of positive pairs.
        positive_margin, negative_margin: hinge margins ``m_p`` and ``m_n``.
        positive_distance: correspondence radius in pixels.
        normalize_similarity: rpautrat's L2 re-normalisation of the similarity matrix.
        chunk_size: images per checkpointed chunk (memory vs. recomputation).

    Returns:
        Scalar loss: weighted sum over pairs / (valid cells of image 1 x cells of image 0).
    """
    b, d, hc, wc = desc0.shape
    n = hc * wc
    flat0 = desc0.reshape(b, d, n).transpose(1, 2).float()
    flat1 = desc1.reshape(b, d, n).transpose(1, 2).float()
    if valid_mask1 is None:
        weight1 = flat1.new_ones(b, n)
    else:
        weight1 = cell_valid_mask(valid_mask1.float()).reshape(b, n)
    args = (hc, wc, positive_distance, lambda_d, positive_margin, negative_margin)
    args = (*args, normalize_similarity)
    total = flat0.new_zeros(())
    for start in range(0, b, max(1, chunk_size)):
        part = slice(start, start + max(1, chunk_size))
        inputs = (flat0[part], flat1[part], H_0to1[part], weight1[part], *args)
        if torch.is_grad_enabled() and (flat0.requires_grad or flat1.requires_grad):
            total = total + checkpoint(_hinge_terms, *inputs, use_reentrant=False)
        else:
            total = total + _hinge_terms(*inputs)
    return total / (weight1.sum() * n).clamp(min=1.0)


def dense_descriptor_loss_loop(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    H_0to1: torch.Tensor,
    valid_mask1: torch.Tensor | None = None,
    lambda_d: float = 250.0,
    positive_margin: float = 1.0,
    negative_margin: float = 0.2,
    positive_distance: float = 7.5,
) -> torch.Tensor:
    """Plain loop over every cell pair (the definition; only for tiny inputs in tests)."""
    b, _, hc, wc = desc0.shape
    total, norm = 0.0, 0.0
    for k in range(b):
        H = H_0to1[k].double()
        for i0 in range(hc):
            for j0 in range(wc):
                c0 = torch.tensor([[8.0 * j0 + 3.5, 8.0 * i0 + 3.5]], dtype=H.dtype)
                w = warp_points(c0, H)[0]
                for i1 in range(hc):
                    for j1 in range(wc):
                        if valid_mask1 is not None:
                            cell = valid_mask1[
                                k, 8 * i1 : 8 * i1 + 8, 8 * j1 : 8 * j1 + 8
                            ]
                            valid = float(bool((cell > 0.5).all()))
                        else:
                            valid = 1.0
                        c1 = torch.tensor(
                            [8.0 * j1 + 3.5, 8.0 * i1 + 3.5], dtype=H.dtype
                        )
                        s = bool(torch.linalg.norm(w - c1) <= positive_distance)
                        dot = float(desc0[k, :, i0, j0] @ desc1[k, :, i1, j1])
                        if s:
                            term = lambda_d * max(0.0, positive_margin - dot)
                        else:
                            term = max(0.0, dot - negative_margin)
                        total += valid * term
                        norm += valid
    return torch.tensor(total / max(norm, 1.0))


def sparse_descriptor_loss(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    H_0to1: torch.Tensor,
    valid_mask1: torch.Tensor | None = None,
    num_positives: int = 1000,
    num_negatives: int = 100,
    positive_weight: float = 1.0,
    positive_margin: float = 1.0,
    negative_margin: float = 0.2,
    negative_distance: float = 16.0,
    negative_average: str = "violators",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sampled descriptor hinge loss (see module docstring).

    Args:
        desc0, desc1: ``(B, D, Hc, Wc)`` L2-normalised descriptor maps.
        H_0to1: ``(B, 3, 3)``.
        valid_mask1: optional ``(B, 8Hc, 8Wc)`` pixels of image 1 with content.
        num_positives: matching pairs sampled per image (fewer if fewer cells match).
        num_negatives: non-matching cells of image 1 per positive.
        positive_weight: weight of the mean positive hinge.
        positive_margin, negative_margin: hinge margins.
        negative_distance: a cell of image 1 is a negative only when its centre lies
            farther than this from the warped anchor (pixels).
        negative_average: ``violators`` or ``all``, see :func:`negative_term`.
        generator: random generator (the global one by default); per image it draws
            a permutation of the matchable cells, then the negative cells.

    Returns:
        Scalar loss: the mean over images with a matchable cell of
        ``positive_weight * positive + negative`` (0 with none, still differentiable).
    """
    if negative_average not in NEGATIVE_AVERAGES:
        raise UserError(
            f"loss.sparse_negative_average: {negative_average!r} is not one of "
            f"{', '.join(NEGATIVE_AVERAGES)}"
        )
    b, d, hc, wc = desc0.shape
    shape = (hc * CELL, wc * CELL)
    device = desc0.device
    centers = cell_centers(hc, wc, device)
    pos_terms, neg_terms = [], []
    for k in range(b):
        warped = warp_points(centers.double(), H_0to1[k].double()).float()
        ok = points_inside(warped, shape) & torch.isfinite(warped).all(-1)
        if valid_mask1 is not None:
            pix = warped.round().long()
            pix[:, 0] = pix[:, 0].clamp(0, shape[1] - 1)
            pix[:, 1] = pix[:, 1].clamp(0, shape[0] - 1)
            ok &= valid_mask1[k, pix[:, 1], pix[:, 0]] > 0.5
        candidates = torch.nonzero(ok)[:, 0]
        if len(candidates) == 0:
            continue
        pick = torch.randperm(len(candidates), generator=generator, device="cpu")
        anchors = candidates[pick[:num_positives].to(device)]
        a = desc0[k].reshape(d, -1)[:, anchors].t().float()
        grid = pixel_to_grid(warped[anchors], shape)[None, None]
        p = F.grid_sample(
            desc1[k : k + 1].float(), grid, mode="bilinear", align_corners=False
        )[0, :, 0].t()
        p = F.normalize(p, dim=-1)
        pos_terms.append(F.relu(positive_margin - (a * p).sum(-1)).mean())
        negatives = torch.randint(
            0,
            hc * wc,
            (len(anchors), num_negatives),
            generator=generator,
            device="cpu",
        ).to(device)
        far = (centers[negatives] - warped[anchors][:, None]).norm(dim=-1)
        far = far > negative_distance
        if valid_mask1 is not None:
            cells = cell_valid_mask(valid_mask1[k : k + 1].float()).reshape(-1)
            far &= cells[negatives] > 0.5
        n = desc1[k].reshape(d, -1).t().float()[negatives]
        sim = (a[:, None] * n).sum(-1)
        hinges = F.relu(sim - negative_margin)[far]
        neg_terms.append(negative_term(hinges, negative_average))
    zero = (desc0.sum() + desc1.sum()) * 0.0
    if not pos_terms:
        return zero
    positive = torch.stack(pos_terms).mean()
    negative = torch.stack(neg_terms).mean()
    return positive_weight * positive + negative + zero


def negative_term(hinges: torch.Tensor, average: str = "violators") -> torch.Tensor:
    """Negative term of one image from its hinges ``max(0, d.d' - m_n)``, shape ``(K,)``.

    ``violators``: ``sum / (number of hinges > 0 + 1)``, pytorch-superpoint's
    ``non_match_loss.sum() / (num_hard_negatives + 1)``; ``all``: ``sum / max(K, 1)``.
    The count is a constant for the gradient, as in the port.
    """
    if average == "violators":
        count = (hinges.detach() > 0).sum()
        return hinges.sum() / (count + 1).to(hinges.dtype)
    return hinges.sum() / max(hinges.numel(), 1)


@torch.no_grad()
def matching_accuracy(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    H_0to1: torch.Tensor,
    valid_mask1: torch.Tensor | None = None,
    positive_distance: float = 7.5,
) -> torch.Tensor:
    """Nearest-neighbour matching accuracy of cell descriptors.

    For every cell of image 0 whose centre warps onto a valid cell of image 1, the nearest
    descriptor of image 1 is a correct match when its cell corresponds (within
    ``positive_distance``).

    Returns:
        Scalar fraction over the batch (0 when no cell is matchable).
    """
    b, d, hc, wc = desc0.shape
    n = hc * wc
    positive = correspondence_mask(H_0to1, hc, wc, positive_distance)
    if valid_mask1 is not None:
        cells = cell_valid_mask(valid_mask1.float()).reshape(b, 1, n) > 0.5
        positive = positive & cells
    matchable = positive.any(dim=2)
    sim = (
        desc0.reshape(b, d, n).transpose(1, 2).float() @ desc1.reshape(b, d, n).float()
    )
    nearest = sim.argmax(dim=2)
    correct = torch.gather(positive, 2, nearest[..., None])[..., 0] & matchable
    return correct.sum().float() / matchable.sum().clamp(min=1).float()
