"""R2D2 training losses: reliability (AP or HardNet), repeatability, peakiness.

The loss of R2D2 (Revaud et al., NeurIPS 2019) is a weighted sum (default 1 : 1 : 1) of

- a *reliability* term: for query pixels of image 0, a neighbourhood sampler
  (:class:`NghSampler`) scores the query descriptor against image-1 descriptors around
  its ground-truth correspondence (positives within ``pos_d`` px, negatives between
  ``neg_d`` and ``ngh`` px, plus random distractors inside the border); the
  differentiable quantised average precision (:class:`APLoss`, 20 bins) of that
  ranking is combined with the confidence ``R = (R0(query) + R1(best positive)) / 2``
  as ``1 - AP * R - (1 - R) * kappa`` (kappa 0.5);
- a *repeatability* term (:class:`CosimLoss`): image 1's repeatability map is warped
  into image 0 with the absolute flow, both maps are cut into N x N patches (stride
  N/2) and the loss is ``1 - mean similarity`` of corresponding patches;
- a *peakiness* term (:class:`PeakyLoss`): ``1 - mean(maxpool(S) - avgpool(S))`` with
  (N+1) x (N+1) windows after 3x3 smoothing.

Variants of a published loss study are selected by config: the patch similarity
(``cosine`` | ``dice`` | ``jaccard`` | ``czekanowski`` | ``squared_chord``) and the
reliability term (``ap`` | ``hardnet``: triplet margin loss with the hardest in-batch
negative). All arithmetic runs in float32 and every term is NaN-safe when a batch has no
valid query (it then returns a zero that still carries a graph).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from geometry.homography import pixel_to_grid
from losses.r2d2_reliability import (
    EPS,
    HardNetReliabilityLoss,
    NghSampler,
    ReliabilityLoss,
    masked_mean,
)
from utils.config import merge_config
from utils.errors import UserError

SIMILARITIES = ("cosine", "dice", "jaccard", "czekanowski", "squared_chord")
RELIABILITY_KINDS = ("ap", "hardnet")


def patch_similarity(p: torch.Tensor, q: torch.Tensor, kind: str) -> torch.Tensor:
    """Similarity of non-negative patch vectors along the last dimension.

    Args:
        p, q: ``(..., K)`` non-negative.
        kind: ``cosine`` ``<p,q> / (|p| |q|)`` (NAVER's ``CosimLoss``, with its
            normalisation epsilon 1e-12); ``dice`` ``2<p,q> / (|p|^2 + |q|^2)``;
            ``jaccard`` ``<p,q> / (|p|^2 + |q|^2 - <p,q>)``; ``czekanowski``
            ``2 sum min(p,q) / sum(p + q)``; ``squared_chord`` ``1 - sum(sqrt p' -
            sqrt q')^2`` with ``p' = p / sum p``, the loss study's definition.

    Returns:
        ``(...)``, 1 for identical non-zero patches; in [0, 1], except
        ``squared_chord`` in [-1, 1] (-1 for disjoint supports).
    """
    if kind == "cosine":
        return (F.normalize(p, dim=-1) * F.normalize(q, dim=-1)).sum(-1)
    if kind in ("dice", "jaccard"):
        dot = (p * q).sum(-1)
        norms = p.square().sum(-1) + q.square().sum(-1)
        if kind == "dice":
            return 2 * dot / norms.clamp(min=EPS)
        return dot / (norms - dot).clamp(min=EPS)
    if kind == "czekanowski":
        return 2 * torch.minimum(p, q).sum(-1) / (p + q).sum(-1).clamp(min=EPS)
    if kind == "squared_chord":
        pn = p / p.sum(-1, keepdim=True).clamp(min=EPS)
        qn = q / q.sum(-1, keepdim=True).clamp(min=EPS)
        # Epsilon inside the root: d sqrt(x)/dx is infinite at 0.
        chord = (torch.sqrt(pn + EPS) - torch.sqrt(qn + EPS)).square().sum(-1)
        return 1 - chord
    raise UserError(
        f"unknown patch similarity {kind!r} (expected one of {SIMILARITIES})"
    )


def warp_to_image0(
    map1: torch.Tensor, aflow: torch.Tensor, padding_mode: str = "zeros"
) -> torch.Tensor:
    """Sample an image-1 map ``(B, C, H1, W1)`` at the flow targets ``(B, 2, H, W)``.

    A NaN flow coordinate becomes +9e9, as in NAVER's ``FullSampler._aflow_to_grid``:
    0 with zero padding, image 1's last column / row (pixel ``(H1-1, W1-1)`` when both
    are NaN) with ``padding_mode="border"``.
    """
    grid = pixel_to_grid(aflow.permute(0, 2, 3, 1), tuple(map1.shape[-2:]))
    grid = torch.where(torch.isnan(grid), torch.full_like(grid, 9e9), grid)
    return F.grid_sample(
        map1,
        grid.to(map1.dtype),
        mode="bilinear",
        padding_mode=padding_mode,
        align_corners=False,
    )


class CosimLoss(nn.Module):
    """Repeatability loss: ``1 - mean`` patch similarity of S0 and warped S1.

    Args:
        N: patch size (16); patches overlap with stride ``N // 2``.
        similarity: one of :data:`SIMILARITIES`.
        mask_invalid: multiply both maps by the validity mask (finite flow and
            ``mask``) and average only patches with at least one valid pixel.
            ``False`` is NAVER's ``CosimLoss``: the mask is not used, image 1's map is
            sampled with border padding, unknown (NaN) flow reads its last pixel (see
            :func:`warp_to_image0`) and every patch counts. ``True`` is the default
            because those unknown pixels would otherwise pull image 0's patches
            towards one value of image 1 that they do not correspond to.
    """

    def __init__(
        self, N: int = 16, similarity: str = "cosine", mask_invalid: bool = True
    ) -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            raise UserError(
                f"unknown repeatability similarity {similarity!r} "
                f"(expected one of {', '.join(SIMILARITIES)})"
            )
        self.N, self.similarity, self.mask_invalid = N, similarity, mask_invalid

    def patches(self, maps: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> ``(B, P, N*N)`` overlapping patches."""
        return F.unfold(maps, self.N, stride=self.N // 2).transpose(1, 2)

    def forward(
        self,
        rep0: torch.Tensor,
        rep1: torch.Tensor,
        aflow: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss for repeatability maps ``(B, 1, H, W)``, flow ``(B, 2, H, W)``."""
        rep0, rep1, aflow = rep0.float(), rep1.float(), aflow.float()
        if not self.mask_invalid:
            warped = warp_to_image0(rep1, aflow, padding_mode="border")
            sim = patch_similarity(
                self.patches(rep0), self.patches(warped), self.similarity
            )
            return 1 - sim.mean()
        warped = warp_to_image0(rep1, aflow)
        valid = torch.isfinite(aflow).all(dim=1, keepdim=True)
        if mask is not None:
            valid &= mask[:, None].bool()
        valid_f = valid.float()
        sim = patch_similarity(
            self.patches(rep0 * valid_f),
            self.patches(warped * valid_f),
            self.similarity,
        )
        patch_valid = self.patches(valid_f).amax(dim=-1) > 0
        return masked_mean(1 - sim, patch_valid)


class PeakyLoss(nn.Module):
    """Peakiness loss ``1 - mean(maxpool(S) - avgpool(S))``, windows of N+1 px.

    The map is first smoothed by a 3x3 average (zero padding counted, as the reference).
    """

    def __init__(self, N: int = 16) -> None:
        super().__init__()
        self.N = N

    def forward_one(self, rep: torch.Tensor) -> torch.Tensor:
        rep = F.avg_pool2d(rep.float(), 3, stride=1, padding=1)
        k, pad = self.N + 1, self.N // 2
        peak = F.max_pool2d(rep, k, stride=1, padding=pad)
        mean = F.avg_pool2d(rep, k, stride=1, padding=pad)
        return 1 - (peak - mean).mean()

    def forward(self, rep0: torch.Tensor, rep1: torch.Tensor) -> torch.Tensor:
        """Mean over both images' repeatability maps ``(B, 1, H, W)``."""
        return (self.forward_one(rep0) + self.forward_one(rep1)) / 2


class R2D2Loss(nn.Module):
    """Weighted R2D2 loss (reliability + repeatability + peakiness) with study variants.

    Conf keys, with the defaults of NAVER's ``train.py`` (``default_loss``,
    ``default_sampler``): ``reliability_weight``, ``repeatability_weight``,
    ``peaky_weight`` (1, 1, 1), ``N`` (16), ``similarity`` (``cosine``), ``reliability``
    (``ap`` | ``hardnet``), ``kappa`` (0.5, NAVER's ``base``), ``nq`` (20),
    ``hardnet_margin`` (1.0), ``mask_invalid``, ``sampler`` (kwargs of
    :class:`NghSampler`: ngh 7, subq -8, subd 1, pos_d 3, neg_d 5, border 16, subd_neg
    -8, maxpool_pos True).

    ``mask_invalid`` (default True) is the one deliberate difference: the batch ``mask``
    removes reliability queries and, with the NaN flow, repeatability patches (see
    :class:`CosimLoss` for why). With ``mask_invalid: false`` the mask is not used and
    the loss equals NAVER's on the same batch (its loader writes NaN flow where its
    mask is false, as :mod:`datasets.r2d2_sources` does), except that a batch with no
    valid query gives a 0 reliability term instead of NaN.

    ``forward(pred, data)``:

    - pred: ``descriptors0/1 (B, D, H, W)`` (L2-normalised), ``reliability0/1`` and
      ``repeatability0/1 (B, 1, H, W)``.
    - data: ``image0/1 (B, 3, H, W)``, ``aflow (B, 2, H, W)`` (NaN unknown), ``mask
      (B, H, W)``.

    Returns ``(total, terms)`` where ``terms`` holds ``total``, ``reliability``,
    ``repeatability``, ``peaky`` and the metric ``ap`` (or ``triplet``) and ``n_valid``
    (detached).

    Example:
        >>> loss = R2D2Loss({"similarity": "dice", "sampler": {"border": 4}})
    """

    default_conf: dict[str, Any] = {
        "reliability_weight": 1.0,
        "repeatability_weight": 1.0,
        "peaky_weight": 1.0,
        "N": 16,
        "similarity": "cosine",
        "reliability": "ap",
        "kappa": 0.5,
        "nq": 20,
        "hardnet_margin": 1.0,
        "mask_invalid": True,
        "sampler": {
            "ngh": 7,
            "subq": -8,
            "subd": 1,
            "pos_d": 3,
            "neg_d": 5,
            "border": 16,
            "subd_neg": -8,
            "maxpool_pos": True,
        },
    }

    def __init__(self, conf: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.conf = merge_config(self.default_conf, conf or {}, prefix="loss.")
        c = self.conf
        sampler = NghSampler(**c["sampler"])
        if c["reliability"] == "ap":
            self.reliability = ReliabilityLoss(sampler, nq=c["nq"], kappa=c["kappa"])
        elif c["reliability"] == "hardnet":
            self.reliability = HardNetReliabilityLoss(
                sampler, margin=c["hardnet_margin"], kappa=c["kappa"]
            )
        else:
            raise UserError(
                f"unknown reliability loss {c['reliability']!r} "
                f"(expected one of {', '.join(RELIABILITY_KINDS)})"
            )
        self.repeatability = CosimLoss(c["N"], c["similarity"], c["mask_invalid"])
        self.peaky = PeakyLoss(c["N"])

    def forward(
        self, pred: dict[str, torch.Tensor], data: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.conf
        aflow = data["aflow"]
        mask = data.get("mask") if c["mask_invalid"] else None
        rel_loss, metrics = self.reliability(
            pred["descriptors0"],
            pred["descriptors1"],
            pred["reliability0"],
            pred["reliability1"],
            aflow,
            mask,
        )
        rep_loss = self.repeatability(
            pred["repeatability0"], pred["repeatability1"], aflow, mask
        )
        peaky_loss = self.peaky(pred["repeatability0"], pred["repeatability1"])
        total = (
            c["reliability_weight"] * rel_loss
            + c["repeatability_weight"] * rep_loss
            + c["peaky_weight"] * peaky_loss
        )
        terms = {
            "total": total,
            "reliability": rel_loss,
            "repeatability": rep_loss,
            "peaky": peaky_loss,
            **{k: v.detach() for k, v in metrics.items()},
        }
        return total, terms
