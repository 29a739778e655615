"""Detector loss of MagicPoint/SuperPoint and its training metrics.

The full-resolution keypoint map is cut into 8x8 cells; each cell's label is the position of
its keypoint (0..63, row-major) or 64, the "no keypoint" dustbin. When a cell holds several
keypoints one is picked at random, as rpautrat/SuperPoint does (so no position is favoured). The
loss is the 65-way softmax cross-entropy averaged over valid cells, a cell being valid when all of
its pixels are (rpautrat/SuperPoint's choice, so cells cut by a warped border do not teach "no
keypoint").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CELL = 8


def cell_labels(
    keypoint_map: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(B, H, W)`` binary map to ``(B, H/8, W/8)`` long labels in [0, 64].

    Ties between several keypoints of a cell are broken uniformly at random.
    """
    cells = F.pixel_unshuffle(keypoint_map[:, None].float(), CELL)
    b, _, hc, wc = cells.shape
    noise = torch.rand(cells.shape, generator=generator, device=cells.device)
    scores = cells * 2 + noise
    dustbin = torch.ones(b, 1, hc, wc, device=cells.device)
    return torch.cat([scores, dustbin], dim=1).argmax(dim=1)


def cell_valid_mask(valid_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``(B, H, W)`` pixel mask to ``(B, H/8, W/8)``: a cell is valid when all pixels are."""
    if valid_mask is None:
        return None
    cells = F.pixel_unshuffle(valid_mask[:, None].float(), CELL)
    return cells.amin(dim=1)


def detector_loss(
    logits: torch.Tensor,
    keypoint_map: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cross-entropy of the 65-way cell classification.

    Args:
        logits: ``(B, 65, H/8, W/8)``.
        keypoint_map: ``(B, H, W)`` with 1 at keypoint pixels.
        valid_mask: optional ``(B, H, W)``; invalid cells do not count.

    Returns:
        Scalar mean loss over valid cells.
    """
    labels = cell_labels(keypoint_map, generator)
    loss = F.cross_entropy(logits.float(), labels, reduction="none")
    weights = cell_valid_mask(valid_mask)
    if weights is None:
        return loss.mean()
    return (loss * weights).sum() / weights.sum().clamp(min=1.0)


def detector_metrics(
    keypoints: list[torch.Tensor],
    keypoint_map: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Pixel-exact precision and recall of detected keypoints (batch totals).

    Args:
        keypoints: per image ``(N_i, 2)`` integer-valued (x, y).
        keypoint_map: ``(B, H, W)`` ground truth.
        valid_mask: optional ``(B, H, W)``; ground truth outside it is ignored.
    """
    gt = keypoint_map > 0.5
    if valid_mask is not None:
        gt = gt & (valid_mask > 0.5)
    detected = torch.zeros_like(gt)
    for b, kpts in enumerate(keypoints):
        k = kpts.round().long()
        detected[b, k[:, 1], k[:, 0]] = True
    true_pos = (detected & gt).sum().float()
    return {
        "precision": true_pos / detected.sum().clamp(min=1),
        "recall": true_pos / gt.sum().clamp(min=1),
    }
