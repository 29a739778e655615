"""Tests of the R2D2 losses: quantised AP, similarities, cosim, peakiness, variants."""

from __future__ import annotations

import glob

import pytest
import torch
import yaml

from geometry.homography import pixel_grid
from losses.r2d2 import (
    SIMILARITIES,
    CosimLoss,
    PeakyLoss,
    R2D2Loss,
    patch_similarity,
)
from losses.r2d2_reliability import APLoss, NghSampler, exact_average_precision
from models.r2d2_net import R2D2Net
from utils.errors import UserError


def _identity_flow(b: int, h: int, w: int) -> torch.Tensor:
    return pixel_grid((h, w)).permute(2, 0, 1)[None].repeat(b, 1, 1, 1)


@pytest.mark.parametrize("kind", SIMILARITIES)
def test_similarity_identical_is_one_and_range_is_unit(kind):
    g = torch.Generator().manual_seed(0)
    p = torch.rand(50, 64, generator=g)
    p[:10, :32] = 0  # sparse patches too
    q = torch.rand(50, 64, generator=g) * (torch.rand(50, 64, generator=g) > 0.5)
    assert torch.allclose(patch_similarity(p, p, kind), torch.ones(50), atol=1e-5)
    sim = patch_similarity(p, q, kind)
    lowest = -1.0 if kind == "squared_chord" else 0.0
    assert sim.min() >= lowest - 1e-6 and sim.max() <= 1 + 1e-6
    assert torch.allclose(sim, patch_similarity(q, p, kind), atol=1e-6)
    # Disjoint supports are maximally dissimilar.
    a = torch.tensor([[1.0, 2.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 3.0, 1.0]])
    assert patch_similarity(a, b, kind).item() == pytest.approx(lowest, abs=1e-3)


def test_similarities_match_their_formulas_elementwise():
    p = torch.tensor([0.2, 0.0, 0.5, 0.3])
    q = torch.tensor([0.1, 0.4, 0.4, 0.1])
    dot = sum(float(a * b) for a, b in zip(p, q))
    pp = sum(float(a * a) for a in p)
    qq = sum(float(b * b) for b in q)
    expected = {
        "cosine": dot / (pp**0.5 * qq**0.5),
        "dice": 2 * dot / (pp + qq),
        "jaccard": dot / (pp + qq - dot),
        "czekanowski": 2
        * sum(min(float(a), float(b)) for a, b in zip(p, q))
        / float((p + q).sum()),
        # The study's epsilon inside the root (1e-8 here) counts at p = 0.
        "squared_chord": 1
        - sum(
            (float(a / p.sum() + 1e-8) ** 0.5 - float(b / q.sum() + 1e-8) ** 0.5) ** 2
            for a, b in zip(p, q)
        ),
    }
    for kind, value in expected.items():
        assert patch_similarity(p, q, kind).item() == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("kind", SIMILARITIES)
def test_cosim_loss_zero_for_identical_maps(kind):
    g = torch.Generator().manual_seed(1)
    rep = torch.rand(2, 1, 48, 40, generator=g)
    flow = _identity_flow(2, 48, 40)
    for mask_invalid in (True, False):
        loss = CosimLoss(16, kind, mask_invalid)(rep, rep.clone(), flow)
        assert loss.item() == pytest.approx(0.0, abs=1e-5)
    other = torch.rand(2, 1, 48, 40, generator=g)
    assert CosimLoss(16, kind)(rep, other, flow).item() > 0.01


def test_cosim_loss_follows_the_flow():
    """A shifted map with the matching flow gives loss 0; ignoring the flow does not."""
    g = torch.Generator().manual_seed(2)
    rep0 = torch.rand(1, 1, 40, 48, generator=g)
    rep1 = torch.zeros(1, 1, 40, 48)
    rep1[..., 3:, 5:] = rep0[..., :-3, :-5]  # image 1 = image 0 moved by (+5, +3)
    flow = _identity_flow(1, 40, 48) + torch.tensor([5.0, 3.0]).view(1, 2, 1, 1)
    flow[:, :, -3:] = float("nan")
    flow[:, :, :, -5:] = float("nan")
    loss = CosimLoss(16, "cosine")
    assert loss(rep0, rep1, flow).item() == pytest.approx(0.0, abs=1e-5)
    assert loss(rep0, rep1, _identity_flow(1, 40, 48)).item() > 0.05


def test_quantised_ap_equals_exact_ap_at_bin_centres():
    ap = APLoss(nq=20)
    centres = torch.linspace(1, 0, 20)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        scores = centres[torch.randperm(20, generator=g)[:12]]
        labels = (torch.rand(12, generator=g) < 0.4).float()
        labels[0] = 1
        exact = exact_average_precision(scores, labels)
        assert ap(scores[None], labels[None]).item() == pytest.approx(
            exact.item(), abs=1e-5
        )


def _tied_ap(scores: torch.Tensor, labels: torch.Tensor, width: float, best: bool):
    """Exact AP once scores are coarsened to cells of ``width``, ties broken with the
    positives first (``best``) or last."""
    cell = torch.floor(scores / width)
    tie_break = labels if best else 1 - labels
    return exact_average_precision(cell * 10 + 0.5 * tie_break, labels)


@pytest.mark.parametrize("nq", [20, 100])
def test_quantised_ap_within_quantisation_error(nq):
    """Soft bins of half-width delta cannot order scores closer than 2 delta: the
    quantised AP lies between the exact APs with such ties broken worst and best."""
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(30, 200, generator=g)
    labels = (torch.rand(30, 200, generator=g) < 0.2).float()
    scores = (scores + 0.3 * labels).clamp(0, 1)  # informative rankings
    quantised = APLoss(nq=nq)(scores, labels)
    width = 2 / (nq - 1)
    for s, y, q in zip(scores, labels, quantised):
        worst, best = _tied_ap(s, y, width, False), _tied_ap(s, y, width, True)
        assert worst - 1e-5 <= q <= best + 1e-5
    exact = torch.stack([exact_average_precision(s, y) for s, y in zip(scores, labels)])
    error = (quantised - exact).abs().mean()
    assert error < {20: 0.1, 100: 0.03}[nq]


def test_ap_scatter_equals_dense_quantisation():
    """The O(NM) scatter implementation equals the dense triangular assignment."""
    g = torch.Generator().manual_seed(5)
    ap = APLoss(nq=20)
    scores = torch.rand(8, 60, generator=g) * 1.4 - 0.2  # also beyond [min, max]
    labels = (torch.rand(8, 60, generator=g) < 0.3).float()
    q = ap.quantize(scores)
    dense = APLoss.ap_from_bins(q.sum(1), (q * labels[..., None]).sum(1))
    assert torch.allclose(ap(scores, labels), dense, atol=1e-6)
    assert torch.allclose(q.sum(-1), torch.ones(8, 60))  # a partition of unity


def test_ap_gradient_is_finite_and_improves_ap():
    g = torch.Generator().manual_seed(7)
    scores = torch.rand(4, 30, generator=g).requires_grad_()
    labels = (torch.rand(4, 30, generator=g) < 0.3).float()
    labels[:, 0] = 1
    ap = APLoss()
    before = ap(scores, labels)
    (1 - before).sum().backward()
    assert torch.isfinite(scores.grad).all()
    after = ap(scores.detach() - 0.02 * scores.grad, labels)
    assert torch.all(after > before.detach())


def test_sampler_offsets_and_shapes():
    sampler = NghSampler(ngh=7, subq=-8, pos_d=3, neg_d=5, border=16, subd_neg=-8)
    d2_pos = (sampler.pos_offsets**2).sum(1)
    d2_neg = (sampler.neg_offsets**2).sum(1)
    assert d2_pos.max() <= 9 and len(sampler.pos_offsets) == 29
    assert d2_neg.min() >= 25 and d2_neg.max() <= 49
    desc = torch.nn.functional.normalize(torch.randn(2, 8, 64, 64), dim=1)
    out = sampler(desc, desc, _identity_flow(2, 64, 64))
    n = 2 * (32 * 32 // 64)
    assert out["scores"].shape[0] == n == out["valid"].sum()
    # identical descriptors and identity flow: the positive is the best score.
    assert torch.all(
        out["scores"][:, 0] >= out["scores"][:, 1:].max(dim=1).values - 1e-6
    )


def _pair_batch(b: int = 2, h: int = 48, w: int = 48, seed: int = 0):
    torch.manual_seed(seed)
    image = torch.rand(b, 3, h, w)
    return {
        "image0": image,
        "image1": image.clone(),
        "aflow": _identity_flow(b, h, w),
        "mask": torch.ones(b, h, w, dtype=torch.bool),
    }


CONFIG_FILES = sorted(glob.glob("configs/r2d2_*.yaml"))
# NAVER's train.py: default_loss (weights 1, base 0.5, nq 20, N 16) and default_sampler.
NAVER_LOSS = {
    "reliability_weight": 1.0,
    "repeatability_weight": 1.0,
    "peaky_weight": 1.0,
    "N": 16,
    "kappa": 0.5,
    "nq": 20,
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
STUDY_ROWS = {
    "original": ("cosine", "ap"),
    "hardnet": ("cosine", "hardnet"),
    "hardnet_dice": ("dice", "hardnet"),
}


def test_loss_defaults_and_reference_configs_hold_navers_settings():
    """The code defaults and every reference config carry NAVER's loss settings;
    reference configs use its exact loss (mask_invalid false), the code default and
    the demo the masked one. Catches a config or default drifting from the reference
    (a border, a weight, a margin) or a study row training the wrong variant."""
    defaults = R2D2Loss.default_conf
    assert {k: defaults[k] for k in NAVER_LOSS} == NAVER_LOSS
    assert (defaults["similarity"], defaults["reliability"]) == ("cosine", "ap")
    assert defaults["mask_invalid"] is True
    for path in CONFIG_FILES:
        with open(path) as f:
            conf = yaml.safe_load(f)
        loss = conf["loss"]
        assert {k: loss[k] for k in NAVER_LOSS} == NAVER_LOSS, path
        name = path.split("/")[-1][: -len(".yaml")]
        if name.startswith("r2d2_study_"):
            row = name[len("r2d2_study_") :]
            expected = STUDY_ROWS.get(row, (row, "ap"))
            assert (loss["similarity"], loss["reliability"]) == expected, path
            assert conf["model"]["fast"] is True and loss["mask_invalid"] is False
        elif name == "r2d2_default":
            assert (loss["similarity"], loss["reliability"]) == ("cosine", "ap")
            assert conf["model"]["fast"] is False and loss["mask_invalid"] is False
        else:
            assert name == "r2d2_demo_builtin" and loss["mask_invalid"] is True


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_config_loss_trains_with_finite_gradients(path):
    """The total is the 1 : 1 : 1 sum of its terms (a dropped or doubled term fails);
    the two images are the same, so every similarity gives repeatability 0."""
    with open(path) as f:
        loss_conf = yaml.safe_load(f)["loss"]
    loss_conf["sampler"] = {**loss_conf["sampler"], "border": 8}
    criterion = R2D2Loss(loss_conf)
    net = R2D2Net(dim=16, mchan=1)
    data = _pair_batch()
    total, terms = criterion(net.forward_pair(data), data)
    total.backward()
    assert torch.isfinite(total)
    parts = terms["reliability"] + terms["repeatability"] + terms["peaky"]
    torch.testing.assert_close(total, parts)
    assert 0 < terms["reliability"] < 1 and 0 < terms["peaky"] <= 1
    assert terms["repeatability"].item() == pytest.approx(0.0, abs=1e-5)
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("reliability", ["ap", "hardnet"])
def test_no_nan_without_valid_pixels_or_with_tiny_batches(reliability):
    """No valid query or patch: reliability and repeatability are exactly 0 (not NaN)
    and the total is the peakiness alone; bf16 predictions give the float32 result of
    the same values."""
    net = R2D2Net(dim=16, mchan=1)
    criterion = R2D2Loss({"reliability": reliability})
    data = _pair_batch(b=1, h=20, w=20)  # smaller than twice the 16 px border
    data["aflow"][:] = float("nan")
    data["mask"][:] = False
    pred = net.forward_pair(data)
    total, terms = criterion(pred, data)
    total.backward()
    assert terms["n_valid"] == 0
    assert terms["reliability"].item() == 0.0 and terms["repeatability"].item() == 0.0
    peaky = PeakyLoss(16)(pred["repeatability0"], pred["repeatability1"])
    torch.testing.assert_close(total, peaky)
    assert all(
        torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None
    )
    pred = {
        k: v.detach().bfloat16() for k, v in net.forward_pair(_pair_batch(1)).items()
    }
    torch.manual_seed(0)
    total, _ = criterion(pred, _pair_batch(1))
    torch.manual_seed(0)
    exact, _ = criterion({k: v.float() for k, v in pred.items()}, _pair_batch(1))
    assert total.dtype == torch.float32 and torch.equal(total, exact)


def test_reliability_terms_respond_to_descriptor_quality():
    """Identical descriptors and the identity flow: every query's AP is 1, so the AP
    term is 1 - R - (1 - R) kappa = 0.05 at R = 0.9 (a flipped kappa or R term fails);
    shuffled image-1 descriptors give a worse term for both variants."""
    torch.manual_seed(6)
    desc = torch.nn.functional.normalize(torch.randn(2, 32, 48, 48), dim=1)
    rel = torch.full((2, 1, 48, 48), 0.9)
    rep = torch.rand(2, 1, 48, 48)
    pred = {
        "descriptors0": desc,
        "descriptors1": desc,
        "reliability0": rel,
        "reliability1": rel,
        "repeatability0": rep,
        "repeatability1": rep,
    }
    data = _pair_batch(h=48, w=48)
    for kind in ("ap", "hardnet"):
        criterion = R2D2Loss({"reliability": kind, "sampler": {"border": 8}})
        _, terms_good = criterion(pred, data)
        shuffled = desc.flatten(2)[..., torch.randperm(48 * 48)].view_as(desc)
        _, terms_bad = criterion({**pred, "descriptors1": shuffled}, data)
        assert terms_good["reliability"] < terms_bad["reliability"] - 0.05
        if kind == "ap":
            assert terms_good["ap"].item() == pytest.approx(1.0, abs=1e-6)
            assert terms_good["reliability"].item() == pytest.approx(0.05, abs=1e-6)
    assert terms_good["repeatability"].item() == pytest.approx(0.0, abs=1e-5)


def test_peaky_loss_prefers_peaks():
    flat = torch.full((1, 1, 40, 40), 0.1)
    peaks = torch.zeros(1, 1, 40, 40)
    peaks[..., 4::10, 4::10] = 1
    loss = PeakyLoss(N=8)
    zero = torch.zeros(1, 1, 40, 40)
    assert loss(zero, zero).item() == pytest.approx(1.0, abs=1e-7)
    # A flat map only has "peaks" at the zero-padded border; real peaks score better.
    assert loss(peaks, peaks).item() < loss(flat, flat).item() - 0.05


def test_bad_loss_config_names_the_key():
    with pytest.raises(UserError, match="similarty"):
        R2D2Loss({"similarty": "dice"})
    with pytest.raises(UserError, match="cosinus"):
        R2D2Loss({"similarity": "cosinus"})
    with pytest.raises(UserError, match="triplet"):
        R2D2Loss({"reliability": "triplet"})
    with pytest.raises(UserError, match="ngb"):
        R2D2Loss({"sampler": {"ngb": 3}})
