"""R2D2 reliability losses: the differentiable quantised average precision over a neighbourhood
sampler's ranking (the published term) and the HardNet-style triplet variant of the loss study.
See :mod:`losses.r2d2` for how they combine with the repeatability and peakiness terms.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import UserError

EPS = 1e-8


class APLoss(nn.Module):
    """Differentiable average precision by soft quantisation into ``nq`` bins.

    Bin ``k`` (``k = 0`` is the highest) is centred at ``max - k * delta`` with
    ``delta = (max - min) / (nq - 1)``; a score contributes to its two nearest bins with
    triangular weights (a partition of unity), and scores beyond ``max`` / below ``min``
    fall entirely in the first / last bin. Precision and recall per bin then give the AP
    of the ranking, as in Revaud et al., "Learning with average precision" (ICCV 2019).

    Args:
        nq: number of bins (R2D2 uses 20).
        min: lowest bin centre.
        max: highest bin centre.
    """

    def __init__(self, nq: int = 20, min: float = 0.0, max: float = 1.0) -> None:
        super().__init__()
        if nq < 2 or max <= min:
            raise ValueError(
                f"APLoss needs nq >= 2 and max > min, got {nq}, {min}, {max}"
            )
        self.nq, self.min, self.max = nq, float(min), float(max)
        self.register_buffer("centres", torch.linspace(max, min, nq), persistent=False)

    def quantize(self, scores: torch.Tensor) -> torch.Tensor:
        """Soft bin assignments ``(..., M, nq)`` of ``scores (..., M)``."""
        delta = (self.max - self.min) / (self.nq - 1)
        weights = (1 - (scores[..., None] - self.centres).abs() / delta).clamp(min=0)
        top = (scores >= self.max)[..., None]
        bottom = (scores <= self.min)[..., None]
        weights = weights.clone()
        weights[..., :1] = torch.where(
            top, torch.ones_like(weights[..., :1]), weights[..., :1]
        )
        weights[..., -1:] = torch.where(
            bottom, torch.ones_like(weights[..., -1:]), weights[..., -1:]
        )
        return weights

    def forward(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """AP of each row.

        Each score only touches its two nearest bins, so the per-bin sums are built by
        ``scatter_add`` in O(N M) memory instead of the dense (N, M, nq) assignment of
        :meth:`quantize` (gigabytes for a batch of 8 crops).

        Args:
            scores: ``(N, M)`` similarities (higher = more similar).
            labels: ``(N, M)`` 1 for positives, 0 for negatives.

        Returns:
            ``(N,)`` AP in [0, 1]; 0 for rows without positives.
        """
        scores, labels = scores.float(), labels.float()
        delta = (self.max - self.min) / (self.nq - 1)
        position = ((self.max - scores) / delta).clamp(0, self.nq - 1)
        lower = position.detach().floor().long().clamp(max=self.nq - 2)
        upper_weight = position - lower
        per_bin = scores.new_zeros(scores.shape[0], self.nq)
        pos_per_bin = scores.new_zeros(scores.shape[0], self.nq)
        for index, weight in ((lower, 1 - upper_weight), (lower + 1, upper_weight)):
            per_bin = per_bin.scatter_add(1, index, weight)
            pos_per_bin = pos_per_bin.scatter_add(1, index, weight * labels)
        return self.ap_from_bins(per_bin, pos_per_bin)

    @staticmethod
    def ap_from_bins(per_bin: torch.Tensor, pos_per_bin: torch.Tensor) -> torch.Tensor:
        """AP from soft counts ``(N, nq)`` of all items and of positives per bin."""
        precision = pos_per_bin.cumsum(-1) / per_bin.cumsum(-1).clamp(min=EPS)
        n_pos = pos_per_bin.sum(-1, keepdim=True)
        recall_step = pos_per_bin / n_pos.clamp(min=EPS)
        return (precision * recall_step).sum(-1)


def exact_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Exact AP of one ranking (mean precision at each positive), for reference/tests.

    Args:
        scores: ``(M,)``; labels: ``(M,)`` in {0, 1}.

    Returns:
        Scalar tensor.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    hits = labels[order].float()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float32)
    return (precision * hits).sum() / hits.sum().clamp(min=1)


class NghSampler(nn.Module):
    """Sample query pixels and score them against a neighbourhood of their match.

    Distance to the ground truth in image 1:  0 ... ``pos_d`` ... ``neg_d`` ... ``ngh``;
    label:                                    + + + +   (ignored)  - - - - - - -.

    NAVER's ``NghSampler2`` (``nets/sampler.py`` of naver/r2d2) with the arguments of its
    ``train.py``: the same queries, positives, negatives and distractors, drawn from the
    global random stream in the same order (query x, query y, distractor x, distractor
    y), so that both give the same scores for the same seed. The match of a query is
    NAVER's ``int(x + 0.5)`` (truncation: a match up to 1.5 px left of or above image 1
    still lands on its first column or row). Two guards differ from NAVER on tiny images
    only: at least one pixel is drawn, and an image smaller than twice the border
    samples its central pixel(s) instead of nothing.

    Args:
        ngh: neighbourhood radius for negatives (7).
        subq: query sampling; > 0 a regular grid of that step, < 0 ``|subq|^-2`` of the
            pixels (inside the border) drawn at random (-8).
        subd: step of the neighbourhood offsets (1 = all).
        pos_d: positive radius (3 px).
        neg_d: inner radius of negatives (5 px).
        border: queries and distractors stay this far from the image border (16 px).
        subd_neg: distractors drawn from every image 1 of the batch, inside the border,
            same convention as ``subq`` (-8); 0 disables them.
        maxpool_pos: keep only the best positive (the descriptor may be off by a pixel);
            its position is where image 1's reliability is read (see
            :class:`ReliabilityLoss`).
    """

    def __init__(
        self,
        ngh: int = 7,
        subq: int = -8,
        subd: int = 1,
        pos_d: int = 3,
        neg_d: int = 5,
        border: int = 16,
        subd_neg: int = -8,
        maxpool_pos: bool = True,
    ) -> None:
        super().__init__()
        if not 0 <= pos_d < neg_d <= ngh:
            raise UserError(
                f"sampler: need 0 <= pos_d < neg_d <= ngh, got {pos_d}, {neg_d}, {ngh}"
            )
        if subq == 0 or not 1 <= subd <= ngh:
            raise UserError(
                f"sampler: subq must be non-zero and 1 <= subd <= ngh ({subq}, {subd}, "
                f"{ngh})"
            )
        self.ngh, self.subq, self.subd = ngh, subq, subd
        self.pos_d, self.neg_d, self.border = pos_d, neg_d, border
        self.subd_neg, self.maxpool_pos = subd_neg, maxpool_pos
        pos, neg = [], []
        # NAVER's offset lattice: with subd > 1 it is anchored at -(ngh // subd) * ngh,
        # so it need not contain 0 or be symmetric.
        rad = (ngh // subd) * ngh
        for dy in range(-rad, rad + 1, subd):
            for dx in range(-rad, rad + 1, subd):
                d2 = dx * dx + dy * dy
                if d2 <= pos_d**2:
                    pos.append((dx, dy))
                elif neg_d**2 <= d2 <= ngh**2:
                    neg.append((dx, dy))
        self.register_buffer("pos_offsets", torch.tensor(pos), persistent=False)
        self.register_buffer("neg_offsets", torch.tensor(neg), persistent=False)

    def _grid(
        self, step: int, batch: int, shape: tuple[int, int], border: int, device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch index, x and y of sampled pixels (same pattern for every image).

        Random pixels are drawn x first, then y, as NAVER's ``gen_grid``."""
        h, w = shape
        lo_x, hi_x = min(border, (w - 1) // 2), max(w - border, (w + 1) // 2)
        lo_y, hi_y = min(border, (h - 1) // 2), max(h - border, (h + 1) // 2)
        if step > 0:
            xs = torch.arange(lo_x, hi_x, step, device=device)
            ys = torch.arange(lo_y, hi_y, step, device=device)
            ys, xs = torch.meshgrid(ys, xs, indexing="ij")
            xs, ys = xs.reshape(-1), ys.reshape(-1)
        else:
            n = max(1, (hi_x - lo_x) * (hi_y - lo_y) // step**2)
            xs = torch.randint(lo_x, hi_x, (n,), device=device)
            ys = torch.randint(lo_y, hi_y, (n,), device=device)
        n = len(xs)
        b = torch.arange(batch, device=device).repeat_interleave(n)
        return b, xs.repeat(batch), ys.repeat(batch)

    def forward(
        self,
        desc0: torch.Tensor,
        desc1: torch.Tensor,
        aflow: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Sample queries in image 0 and their candidates in image 1.

        Args:
            desc0: ``(B, D, H, W)`` L2-normalised descriptors of image 0.
            desc1: ``(B, D, H1, W1)`` of image 1.
            aflow: ``(B, 2, H, W)`` (x, y) in image 1 of each image-0 pixel, NaN
                unknown.
            mask: optional ``(B, H, W)`` validity of the flow.

        Returns:
            dict with ``scores (N, M)`` (first ``n_pos`` columns positives),
            ``labels (N, M)``, ``valid (N,)`` bool, ``b``, ``x``, ``y`` (query indices),
            ``positive (N, D)`` (descriptor of the best positive), ``anchor (N, D)``,
            ``xy1 (N, 2)`` (rounded match in image 1), ``best_xy (N, 2)`` (pixel of the
            best positive in image 1, clamped to it), ``n_pos``.
        """
        batch, _, h, w = aflow.shape
        h1, w1 = desc1.shape[-2:]
        dev = aflow.device
        b, x, y = self._grid(self.subq, batch, (h, w), self.border, dev)
        anchor = desc0[b, :, y, x]  # (N, D)
        target = aflow[b, :, y, x]  # (N, 2)
        finite = torch.isfinite(target).all(dim=-1)
        # The clamp only keeps the integer conversion defined; it changes no validity.
        xy1 = torch.where(finite[:, None], target, torch.full_like(target, -1e6))
        xy1 = torch.trunc(xy1.clamp(-1e6, 1e6) + 0.5).long()
        valid = finite & (xy1[:, 0] >= 0) & (xy1[:, 0] < w1)
        valid &= (xy1[:, 1] >= 0) & (xy1[:, 1] < h1)
        if mask is not None:
            valid &= mask[b, y, x].bool()

        def clamped(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pts = xy1[:, None, :] + offsets[None]  # (N, K, 2)
            return pts[..., 0].clamp(0, w1 - 1), pts[..., 1].clamp(0, h1 - 1)

        def gather(offsets: torch.Tensor) -> torch.Tensor:
            px, py = clamped(offsets)
            return desc1[b[:, None], :, py, px]  # (N, K, D)

        pos_desc = gather(self.pos_offsets)
        pos_scores = torch.einsum("nd,nkd->nk", anchor, pos_desc)
        best = pos_scores.argmax(dim=1)
        rows = torch.arange(len(best), device=dev)
        positive = pos_desc[rows, best]
        px, py = clamped(self.pos_offsets)
        best_xy = torch.stack([px[rows, best], py[rows, best]], dim=-1)
        if self.maxpool_pos:
            pos_scores = pos_scores.gather(1, best[:, None])
        neg_scores = torch.einsum("nd,nkd->nk", anchor, gather(self.neg_offsets))
        parts = [pos_scores, neg_scores]
        if self.subd_neg:
            bd, xd, yd = self._grid(self.subd_neg, batch, (h1, w1), self.border, dev)
            distractors = desc1[bd, :, yd, xd]  # (K, D)
            dist_scores = anchor @ distractors.t()
            # Distractors near the true match (same image) are not negatives.
            d2 = (xd[None] - xy1[:, :1]) ** 2 + (yd[None] - xy1[:, 1:]) ** 2
            near = (d2 < self.neg_d**2) & (bd[None] == b[:, None])
            parts.append(dist_scores.masked_fill(near, 0.0))
        scores = torch.cat(parts, dim=1)
        labels = torch.zeros_like(scores)
        labels[:, : pos_scores.shape[1]] = 1
        return {
            "scores": scores,
            "labels": labels,
            "valid": valid,
            "b": b,
            "x": x,
            "y": y,
            "anchor": anchor,
            "positive": positive,
            "xy1": xy1,
            "best_xy": best_xy,
            "n_pos": torch.tensor(pos_scores.shape[1]),
        }


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over ``valid`` entries; a graph-carrying 0 when none is valid (no NaN)."""
    weights = valid.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1)


class ReliabilityLoss(nn.Module):
    """``1 - AP * R - (1 - R) * kappa`` averaged over valid queries (AP variant).

    The confidence ``R`` of a query is NAVER's (``NghSampler2`` with ``maxpool_pos``):
    ``(R0(query) + R1(best positive)) / 2``, the mean of image 0's reliability at the
    query and image 1's at the positive that scored highest, so both reliability maps
    are trained; without ``maxpool_pos`` it is ``R0(query)``, as there. A batch without
    a valid query gives a graph-carrying 0 where NAVER's mean over no pixel is NaN.

    Args:
        sampler: the :class:`NghSampler`.
        nq: AP quantisation bins (20).
        kappa: AP threshold below which a pixel should be declared unreliable (0.5).
    """

    def __init__(self, sampler: NghSampler, nq: int = 20, kappa: float = 0.5) -> None:
        super().__init__()
        self.sampler = sampler
        self.ap = APLoss(nq=nq, min=0.0, max=1.0)
        self.kappa = kappa

    def descriptor_quality(self, sample: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-query descriptor loss in [0, 1]: ``1 - AP``."""
        return 1 - self.ap(sample["scores"], sample["labels"])

    def forward(
        self,
        desc0: torch.Tensor,
        desc1: torch.Tensor,
        reliability0: torch.Tensor,
        reliability1: torch.Tensor,
        aflow: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reliability loss.

        Args:
            desc0, desc1: ``(B, D, H, W)`` L2-normalised descriptors.
            reliability0, reliability1: ``(B, 1, H, W)`` in [0, 1] of images 0 and 1.
            aflow: ``(B, 2, H, W)``; mask: ``(B, H, W)`` or None.

        Returns:
            ``(loss, metrics)``; metrics hold ``ap`` (mean AP of valid queries) and
            ``n_valid``.
        """
        sample = self.sampler(desc0.float(), desc1.float(), aflow.float(), mask)
        b = sample["b"]
        rel = reliability0.float()[b, 0, sample["y"], sample["x"]]
        if self.sampler.maxpool_pos:
            x1, y1 = sample["best_xy"].unbind(-1)
            rel = (rel + reliability1.float()[b, 0, y1, x1]) / 2
        desc_loss = self.descriptor_quality(sample)
        # R * (descriptor loss) + (1 - R) * (1 - kappa) == 1 - AP R - (1 - R) kappa.
        pixel_loss = rel * desc_loss + (1 - rel) * (1 - self.kappa)
        valid = sample["valid"]
        with torch.no_grad():
            metric = masked_mean(self.metric(desc_loss), valid)
        return masked_mean(pixel_loss, valid), {
            self.metric_name: metric,
            "n_valid": valid.sum().float(),
        }

    metric_name = "ap"

    def metric(self, desc_loss: torch.Tensor) -> torch.Tensor:
        """Per-query quantity logged as :attr:`metric_name` (here the AP)."""
        return 1 - desc_loss


class HardNetReliabilityLoss(ReliabilityLoss):
    """Reliability loss with a HardNet triplet term in place of ``1 - AP``.

    For valid queries, anchors ``a_i`` (image 0) and their best positives ``p_i`` (image
    1) form a batch; the hardest negative of pair ``i`` is the closest ``p_j`` to
    ``a_i`` or ``a_j`` to ``p_i`` (``j != i``, skipping ``j`` whose match lies within
    ``neg_d`` px of ``i``'s in the same image). The per-query loss is
    ``max(0, margin + |a_i - p_i| - |hardest|)`` (margin 1, Mishchuk et al. 2017), and
    it replaces ``1 - AP`` in ``R * loss + (1 - R) * (1 - kappa)``.
    """

    def __init__(
        self, sampler: NghSampler, margin: float = 1.0, kappa: float = 0.5
    ) -> None:
        super().__init__(sampler, kappa=kappa)
        self.margin = margin

    def descriptor_quality(self, sample: dict[str, torch.Tensor]) -> torch.Tensor:
        anchor, positive, valid = sample["anchor"], sample["positive"], sample["valid"]
        dist = torch.cdist(anchor, positive).clamp(min=0)  # (N, N)
        # sqrt has an infinite derivative at 0: add a tiny epsilon before it.
        dist = torch.sqrt(dist.square() + 1e-8)
        xy, b = sample["xy1"], sample["b"]
        near = ((xy[:, None] - xy[None]) ** 2).sum(-1) < self.sampler.neg_d**2
        excluded = (near & (b[:, None] == b[None])) | ~valid[None] | ~valid[:, None]
        excluded |= torch.eye(len(b), dtype=torch.bool, device=b.device)
        big = dist.detach().max() + 10.0 if dist.numel() else 10.0
        neg = dist.masked_fill(excluded, float(big))
        hardest = torch.minimum(neg.min(dim=1).values, neg.min(dim=0).values)
        return F.relu(self.margin + dist.diagonal() - hardest)

    metric_name = "triplet"

    def metric(self, desc_loss: torch.Tensor) -> torch.Tensor:
        return desc_loss
