"""The R2D2 loss against small transcriptions of NAVER's published code (naver/r2d2).

The functions prefixed ``naver_`` restate, in plain tensor code, what ``nets/ap_loss.py``
(``APLoss``), ``nets/sampler.py`` (``NghSampler2``, ``FullSampler._aflow_to_grid``),
``nets/reliability_loss.py`` (``ReliabilityLoss``) and ``nets/repeatability_loss.py``
(``CosimLoss``, ``PeakyLoss``) compute, with the arguments of NAVER's ``train.py``
(``default_sampler``, ``default_loss``). Each test compares value and gradients on fixed
inputs; with a random sampler both sides draw from the same seeded global stream.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geometry.homography import pixel_grid
from losses.r2d2 import CosimLoss, R2D2Loss
from losses.r2d2_reliability import NghSampler, ReliabilityLoss

NAVER_SAMPLER = dict(
    ngh=7, subq=-8, subd=1, pos_d=3, neg_d=5, border=16, subd_neg=-8, maxpool_pos=True
)


def naver_ap(x: torch.Tensor, label: torch.Tensor, nq: int = 20) -> torch.Tensor:
    """APLoss(nq, min=0, max=1): 2 nq lines of slope -+(nq - 1) through the bin
    centres, the outer two flat at 1; per bin the lower line clamped at 0."""
    a = nq - 1
    centres = torch.arange(nq - 1, -1, -1, dtype=x.dtype) / a
    d = a * (x[:, None, :] - centres[None, :, None])  # (N, nq, M)
    falling, rising = 1 - d, 1 + d
    falling[:, 0] = 1
    rising[:, -1] = 1
    q = torch.minimum(falling, rising).clamp(min=0)
    nbs = q.sum(-1)
    rec = (q * label[:, None, :].float()).sum(-1)
    prec = rec.cumsum(-1) / (1e-16 + nbs.cumsum(-1))
    rec = rec / rec.sum(-1, keepdim=True)
    return (prec * rec).sum(-1)


def naver_offsets(ngh, subd, pos_d, neg_d):
    rad = (ngh // subd) * ngh
    pos, neg = [], []
    for j in range(-rad, rad + 1, subd):
        for i in range(-rad, rad + 1, subd):
            d2 = i * i + j * j
            if d2 <= pos_d**2:
                pos.append((i, j))
            elif neg_d**2 <= d2 <= ngh**2:
                neg.append((i, j))
    return torch.tensor(pos).t(), torch.tensor(neg).t()  # (2, K)


def naver_grid(step: int, border: int, B: int, H: int, W: int):
    """gen_grid: a regular grid inside the border, or n random pixels (x, then y)."""
    if step > 0:
        xs = torch.arange(border, W - border, step)
        ys = torch.arange(border, H - border, step)
        shape = (B, len(ys), len(xs))
        x = xs[None, None, :].expand(shape).reshape(-1)
        y = ys[None, :, None].expand(shape).reshape(-1)
        b = torch.arange(B)[:, None, None].expand(shape).reshape(-1)
        return b, y, x
    n = (H - 2 * border) * (W - 2 * border) // step**2
    xs = torch.randint(border, W - border, (n,))
    ys = torch.randint(border, H - border, (n,))
    b = torch.arange(B)[:, None].expand(B, n).reshape(-1)
    return b, ys[None].expand(B, n).reshape(-1), xs[None].expand(B, n).reshape(-1)


def naver_reliability(
    feat1, feat2, conf1, conf2, aflow, base=0.5, nq=20, **sampler
) -> torch.Tensor:
    """NghSampler2.forward followed by ReliabilityLoss (PixelAPLoss.forward)."""
    s = {**NAVER_SAMPLER, **sampler}
    B, _, H, W = aflow.shape
    pos_off, neg_off = naver_offsets(s["ngh"], s["subd"], s["pos_d"], s["neg_d"])
    b1, y1, x1 = naver_grid(s["subq"], s["border"], B, H, W)
    f1 = feat1[b1, :, y1, x1]
    qconf = conf1[b1, 0, y1, x1]
    # NAVER converts NaN with .long() (undefined; its rows are masked out either way).
    xy2 = (torch.nan_to_num(aflow[b1, :, y1, x1], nan=-1e9) + 0.5).long().t()
    mask = (0 <= xy2[0]) & (0 <= xy2[1]) & (xy2[0] < W) & (xy2[1] < H)

    def clamp(xy):
        return torch.stack([xy[0].clamp(0, W - 1), xy[1].clamp(0, H - 1)])

    p = clamp(xy2[:, None, :] + pos_off[:, :, None])
    pscores = (f1[None] * feat2[b1, :, p[1], p[0]]).sum(-1).t()
    if s["maxpool_pos"]:
        pscores, pos = pscores.max(dim=1, keepdim=True)
        sel = clamp(xy2 + pos_off[:, pos.view(-1)])
        qconf = (qconf + conf2[b1, 0, sel[1], sel[0]]) / 2
    n = clamp(xy2[:, None, :] + neg_off[:, :, None])
    nscores = (f1[None] * feat2[b1, :, n[1], n[0]]).sum(-1).t()
    parts = [pscores, nscores]
    if s["subd_neg"]:
        b3, y3, x3 = naver_grid(s["subd_neg"], s["border"], B, H, W)
        dscores = f1 @ feat2[b3, :, y3, x3].t()
        dis2 = (x3 - xy2[0][:, None]) ** 2 + (y3 - xy2[1][:, None]) ** 2
        dis2 = dis2 + (b3 != b1[:, None]).long() * s["neg_d"] ** 2
        parts.append(dscores.masked_fill(dis2 < s["neg_d"] ** 2, 0))
    scores = torch.cat(parts, dim=1)
    gt = torch.zeros_like(scores)
    gt[:, : pscores.shape[1]] = 1
    ap = naver_ap(scores, gt, nq)
    pixel_loss = 1 - ap * qconf - (1 - qconf) * base
    return pixel_loss[mask].mean()


def naver_aflow_to_grid(aflow: torch.Tensor) -> torch.Tensor:
    H, W = aflow.shape[2:]
    grid = aflow.permute(0, 2, 3, 1).clone()
    grid[..., 0] *= 2 / (W - 1)
    grid[..., 1] *= 2 / (H - 1)
    grid -= 1
    grid[torch.isnan(grid)] = 9e9
    return grid


def naver_cosim(sali1, sali2, aflow, N=16) -> torch.Tensor:
    # x * 2 / (W - 1) - 1 is the normalisation of align_corners=True, grid_sample's
    # behaviour in the PyTorch versions (1.1+) NAVER's code was written for.
    sali2 = F.grid_sample(
        sali2,
        naver_aflow_to_grid(aflow),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )

    def patches(sal):
        return F.normalize(F.unfold(sal, N, stride=N // 2).transpose(1, 2), p=2, dim=2)

    return 1 - (patches(sali1) * patches(sali2)).sum(dim=2).mean()


def naver_peaky(sali1, sali2, N=16) -> torch.Tensor:
    def one(sali):
        sali = F.avg_pool2d(sali, 3, stride=1, padding=1)
        peak = F.max_pool2d(sali, N + 1, stride=1, padding=N // 2)
        return 1 - (peak - F.avg_pool2d(sali, N + 1, stride=1, padding=N // 2)).mean()

    return (one(sali1) + one(sali2)) / 2


def _inputs(seed: int, b: int = 2, h: int = 48, w: int = 56, dim: int = 16):
    """Descriptors, reliability and repeatability maps of two images, and a flow (scale
    and shift) whose right part leaves image 1 and with an unknown (NaN) band."""
    g = torch.Generator().manual_seed(seed)
    desc0 = F.normalize(torch.randn(b, dim, h, w, generator=g), dim=1)
    desc1 = F.normalize(
        desc0 + 0.8 * torch.randn(b, dim, h, w, generator=g), dim=1
    ).roll(shifts=(2, 3), dims=(2, 3))
    maps = [torch.rand(b, 1, h, w, generator=g) for _ in range(4)]
    flow = pixel_grid((h, w)).permute(2, 0, 1)[None].repeat(b, 1, 1, 1)
    flow = flow * torch.tensor([1.1, 0.95]).view(1, 2, 1, 1)
    flow = flow + torch.tensor([3.0, 2.0]).view(1, 2, 1, 1)
    flow = flow + 0.3 * torch.rand(b, 2, h, w, generator=g)
    flow[:, :, 18:23] = float("nan")
    # Matches 1 to 1.4 px left of image 1: int(x + 0.5) = 0 keeps them, floor does not.
    flow[:, 0, 24:28] = -1.0 - 0.4 * torch.rand(b, 4, w, generator=g)
    # The pair dataset's mask: known flow that lands inside image 1.
    mask = (flow[:, 0] >= -0.5) & (flow[:, 0] < w - 0.5)
    mask &= (flow[:, 1] >= -0.5) & (flow[:, 1] < h - 0.5)
    pred = {
        "descriptors0": desc0,
        "descriptors1": desc1,
        "reliability0": maps[0],
        "reliability1": maps[1],
        "repeatability0": maps[2],
        "repeatability1": maps[3],
    }
    return pred, {"aflow": flow, "mask": mask}


def _grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


@pytest.mark.parametrize(
    ("seed", "sampler"),
    [(0, {}), (1, {}), (2, {"subq": 3, "subd": 3, "subd_neg": 4})],
)
def test_reliability_loss_equals_naver_value_and_gradients(seed, sampler):
    """NAVER's sampler and confidence: catches R0 alone as the confidence, distractors
    over the whole image, floor instead of int(x + 0.5), a symmetric offset lattice
    with subd > 1."""
    pred, data = _inputs(seed)
    leaves = [pred[k].requires_grad_() for k in sorted(pred) if "repeat" not in k]
    desc0, desc1, rel0, rel1 = (
        pred["descriptors0"],
        pred["descriptors1"],
        pred["reliability0"],
        pred["reliability1"],
    )
    torch.manual_seed(100 + seed)
    ours = ReliabilityLoss(NghSampler(**{**NAVER_SAMPLER, **sampler}))(
        desc0, desc1, rel0, rel1, data["aflow"]
    )[0]
    torch.manual_seed(100 + seed)
    theirs = naver_reliability(desc0, desc1, rel0, rel1, data["aflow"], **sampler)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    for a, b in zip(_grads(ours, leaves), _grads(theirs, leaves)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_image1_reliability_is_read_at_the_best_positive():
    """R1 receives gradient -(AP - kappa) / 2 / n at each query's best positive and
    nowhere else: catches a confidence of R0 alone (no gradient to R1) and R1 read at
    the rounded match instead of the best positive."""
    pred, data = _inputs(3)
    rel1 = pred["reliability1"].requires_grad_()
    grids = {"subq": 6, "subd_neg": 5}
    loss_fn = ReliabilityLoss(NghSampler(**{**NAVER_SAMPLER, **grids}), kappa=0.5)
    loss = loss_fn(
        pred["descriptors0"],
        pred["descriptors1"],
        pred["reliability0"],
        rel1,
        data["aflow"],
    )[0]
    (grad,) = torch.autograd.grad(loss, rel1)
    sample = loss_fn.sampler(pred["descriptors0"], pred["descriptors1"], data["aflow"])
    valid = sample["valid"]
    ap = loss_fn.ap(sample["scores"], sample["labels"])
    expected = torch.zeros_like(grad)
    x1, y1 = sample["best_xy"][valid].unbind(-1)
    values = -(ap[valid] - 0.5) / 2 / valid.sum()
    expected.index_put_((sample["b"][valid], 0 * x1, y1, x1), values, accumulate=True)
    assert valid.sum() > 10 and (sample["best_xy"] != sample["xy1"]).any()
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-8)
    torch.manual_seed(0)
    theirs = naver_reliability(
        pred["descriptors0"],
        pred["descriptors1"],
        pred["reliability0"],
        rel1,
        data["aflow"],
        **grids,
    )
    torch.testing.assert_close(loss, theirs, rtol=0, atol=1e-6)


def test_distractors_stay_inside_the_border():
    """Image 1 holds descriptor e0 inside the 16 px border and e1 on it; queries are e1.
    Distractors inside the border score 0, any on it would score 1: catches distractors
    drawn over the whole image (border 0)."""
    b, h, w = 2, 48, 48
    desc1 = torch.zeros(b, 4, h, w)
    desc1[:, 1] = 1
    desc1[:, 1, 16:-16, 16:-16] = 0
    desc1[:, 0, 16:-16, 16:-16] = 1
    desc0 = torch.zeros(b, 4, h, w)
    desc0[:, 1] = 1
    flow = pixel_grid((h, w)).permute(2, 0, 1)[None].repeat(b, 1, 1, 1)
    sampler = NghSampler(**{**NAVER_SAMPLER, "subd_neg": 2})
    assert sampler.border == NghSampler().border == 16
    out = sampler(desc0, desc1, flow)
    distractors = out["scores"][:, 1 + len(sampler.neg_offsets) :]
    assert distractors.shape[1] == b * 8 * 8  # a step-2 grid over x, y in [16, 32)
    assert torch.all(distractors == 0)
    rel = torch.full((b, 1, h, w), 0.7)
    torch.manual_seed(1)
    ours = ReliabilityLoss(sampler)(desc0, desc1, rel, rel, flow)[0]
    torch.manual_seed(1)
    naver = naver_reliability(desc0, desc1, rel, rel, flow, subd_neg=2)
    torch.testing.assert_close(ours, naver, rtol=0, atol=1e-6)


def test_unknown_flow_reads_the_last_pixel_without_masking():
    """mask_invalid=False is NAVER's CosimLoss: NaN flow reads image 1's pixel
    (H-1, W-1) with border padding. Catches NaN sent to pixel (0, 0) or to zeros."""
    pred, data = _inputs(4)
    rep0, rep1 = pred["repeatability0"], pred["repeatability1"]
    rep1.data[:, :, 0, 0] = 0.0
    rep1.data[:, :, -1, -1] = 1.0
    rep0.requires_grad_()
    rep1.requires_grad_()
    for shape in [(48, 56), (40, 40)]:
        r0, r1 = rep0[..., : shape[0], : shape[1]], rep1[..., : shape[0], : shape[1]]
        flow = data["aflow"][..., : shape[0], : shape[1]]
        mask = data["mask"][..., : shape[0], : shape[1]]
        ours = CosimLoss(16, "cosine", mask_invalid=False)(r0, r1, flow, mask)
        theirs = naver_cosim(r0, r1, flow)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        for a, b in zip(_grads(ours, [rep0, rep1]), _grads(theirs, [rep0, rep1])):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    (grad1,) = torch.autograd.grad(
        CosimLoss(16, "cosine", mask_invalid=False)(rep0, rep1, data["aflow"]), rep1
    )
    assert grad1[:, :, -1, -1].abs().min() > 1e-4 and torch.all(grad1[:, :, 0, 0] == 0)


def test_whole_loss_with_mask_invalid_false_equals_naver():
    """R2D2Loss(mask_invalid=False) is NAVER's MultiLoss(1, reliability, 1, cosim, 1,
    peaky) on the same batch (the mask is not used): catches any of the three terms or
    their weights drifting from the reference."""
    pred, data = _inputs(5)
    leaves = [v.requires_grad_() for v in pred.values()]
    torch.manual_seed(7)
    total, terms = R2D2Loss({"mask_invalid": False})(pred, data)
    torch.manual_seed(7)
    rel = naver_reliability(
        pred["descriptors0"],
        pred["descriptors1"],
        pred["reliability0"],
        pred["reliability1"],
        data["aflow"],
    )
    rep = naver_cosim(pred["repeatability0"], pred["repeatability1"], data["aflow"])
    peaky = naver_peaky(pred["repeatability0"], pred["repeatability1"])
    torch.testing.assert_close(terms["reliability"], rel, rtol=0, atol=1e-6)
    torch.testing.assert_close(terms["repeatability"], rep, rtol=0, atol=1e-6)
    torch.testing.assert_close(terms["peaky"], peaky, rtol=0, atol=1e-6)
    for a, b in zip(_grads(total, leaves), _grads(rel + rep + peaky, leaves)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
