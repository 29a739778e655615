"""Tests of the R2D2 networks, the constructor whitelist, checkpoints and extraction."""

from __future__ import annotations

import pytest
import torch

from benchmarks.bench_r2d2_extract import agreement, reference_extract
from models.r2d2 import R2D2Extractor, num_parameters
from models.r2d2_net import R2D2Net, build_from_constructor, load_r2d2_checkpoint
from utils.constructor_parser import parse_constructor
from utils.errors import UserError


def _randomise_batch_norm(net: R2D2Net, seed: int = 0) -> R2D2Net:
    """Non-trivial running statistics, so that folding batch norm is really tested."""
    g = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(
                torch.randn(module.num_features, generator=g) * 0.1
            )
            module.running_var.copy_(
                torch.rand(module.num_features, generator=g) + 0.05
            )
    return net.eval()


def photograph() -> torch.Tensor:
    """scikit-image's astronaut as ``(1, 3, 64, 96)`` RGB in [0, 1]."""
    import cv2
    import skimage.data

    small = cv2.resize(skimage.data.astronaut(), (96, 64), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255.0


def test_state_dict_layout_matches_published_names_and_shapes():
    sd = R2D2Net().state_dict()
    assert sd["ops.0.weight"].shape == (32, 3, 3, 3)
    assert sd["ops.1.running_mean"].shape == (32,)
    assert "ops.1.weight" not in sd  # batch norm without affine parameters
    assert sd["ops.15.weight"].shape == (128, 128, 3, 3)
    assert sd["ops.18.weight"].shape == (128, 128, 2, 2)
    assert sd["ops.22.weight"].shape == (128, 128, 2, 2)
    assert sd["clf.weight"].shape == (2, 128, 1, 1)
    assert sd["sal.weight"].shape == (1, 128, 1, 1)
    conv_keys = [k for k in sd if k.endswith(".weight") and k.startswith("ops.")]
    assert [int(k.split(".")[1]) for k in conv_keys] == [0, 3, 6, 9, 12, 15, 18, 20, 22]
    fast = R2D2Net(fast=True).state_dict()
    fast_convs = [k for k in fast if k.endswith(".weight") and k.startswith("ops.")]
    assert [int(k.split(".")[1]) for k in fast_convs] == [
        0,
        3,
        6,
        10,
        13,
        16,
        19,
        21,
        23,
    ]
    # NAVER's README: 0.5M weights for R2D2, 1.0M for the "big" (mchan=6) models.
    assert round(num_parameters(R2D2Net()) / 1e5) == 5
    assert round(num_parameters(R2D2Net(mchan=6)) / 1e5) == 10


@pytest.mark.parametrize("fast", [False, True])
def test_forward_keeps_resolution_and_computes_the_published_heads(fast):
    """Outputs at full resolution, computed as R2D2 defines them from the raw features
    ``f``: descriptors ``f / |f|``, reliability the second channel of the 2-way softmax
    of ``clf(f^2)``, repeatability ``s / (1 + s)`` with ``s = softplus(sal(f^2))``."""
    torch.manual_seed(0)
    net = _randomise_batch_norm(R2D2Net(dim=16, mchan=1, fast=fast))
    image = torch.rand(2, 3, 37, 50)
    with torch.no_grad():
        out = net(image)
        raw = net.features(net.normalize(image))
        if raw.shape[-2:] != image.shape[-2:]:  # Fast-R2D2 upsamples its output
            raw = torch.nn.functional.interpolate(
                raw, size=image.shape[-2:], mode="bilinear", align_corners=False
            )
        squared = raw.square()
        reliability = torch.softmax(net.clf(squared), dim=1)[:, 1:2]
        soft = torch.nn.functional.softplus(net.sal(squared))
    assert out["descriptors"].shape == (2, 16, 37, 50)
    assert out["reliability"].shape == out["repeatability"].shape == (2, 1, 37, 50)
    expected = torch.nn.functional.normalize(raw, dim=1)
    torch.testing.assert_close(out["descriptors"], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["reliability"], reliability, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        out["repeatability"], soft / (1 + soft), atol=1e-5, rtol=1e-4
    )


def test_dilations_follow_strides():
    net = R2D2Net(dim=16, mchan=1)
    convs = [m for m in net.ops if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1, 1, 1, 2, 2, 4, 4, 8, 16]
    assert all(c.stride == (1, 1) for c in convs)


def test_fused_trunk_equals_unfused_features():
    torch.manual_seed(0)
    net = _randomise_batch_norm(R2D2Net(dim=16, mchan=1))
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        expected = net.features(x)
        fused = net.fused_trunk()(x)
    assert torch.allclose(fused, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "text, name, kwargs",
    [
        ("Quad_L2Net_ConfCFS()", "Quad_L2Net_ConfCFS", {}),
        ("Fast_Quad_L2Net_ConfCFS()", "Fast_Quad_L2Net_ConfCFS", {}),
        ("Quad_L2Net_ConfCFS(mchan=6)", "Quad_L2Net_ConfCFS", {"mchan": 6}),
        (
            " Fast_Quad_L2Net_ConfCFS( mchan = 6 ) ",
            "Fast_Quad_L2Net_ConfCFS",
            {"mchan": 6},
        ),
        ("Quad_L2Net_ConfCFS(dim=128, relu22=False)", "Quad_L2Net_ConfCFS", None),
    ],
)
def test_parser_accepts_published_constructors(text, name, kwargs):
    from models.r2d2_net import ACCEPTED_CONSTRUCTORS

    parsed_name, parsed_kwargs = parse_constructor(text, ACCEPTED_CONSTRUCTORS)
    assert parsed_name == name
    if kwargs is not None:
        assert parsed_kwargs == kwargs
    net = build_from_constructor(text)
    assert net.fast == name.startswith("Fast_")


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('echo hacked')",
        "os.system('ls')",
        "Quad_L2Net_ConfCFS(mchan=__import__('os'))",
        "Quad_L2Net_ConfCFS(4)",
        "Quad_L2Net_ConfCFS(**{'mchan': 4})",
        "Quad_L2Net_ConfCFS(evil=1)",
        "L2_Net()",
        "Quad_L2Net_ConfCFS().eval()",
        "Quad_L2Net_ConfCFS(); import os",
        "Quad_L2Net_ConfCFS(mchan=1+2)",
        "[Quad_L2Net_ConfCFS()]",
        "Quad_L2Net_ConfCFS",
        "lambda: Quad_L2Net_ConfCFS()",
        "",
    ],
)
def test_parser_refuses_anything_else(text):
    with pytest.raises(UserError, match="constructor"):
        build_from_constructor(text)


def _write_published_checkpoint(path, net: R2D2Net, constructor: str) -> None:
    """Save like NAVER's train.py: DataParallel prefixes, no num_batches_tracked."""
    state = {
        f"module.{k}": v
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    torch.save({"net": constructor, "state_dict": state}, path)


@pytest.mark.parametrize(
    "constructor, fast",
    [("Quad_L2Net_ConfCFS()", False), ("Fast_Quad_L2Net_ConfCFS()", True)],
)
def test_fake_published_checkpoint_loads(tmp_path, constructor, fast):
    torch.manual_seed(1)
    net = _randomise_batch_norm(R2D2Net(fast=fast))
    path = tmp_path / "r2d2_fake.pt"
    _write_published_checkpoint(path, net, constructor)
    loaded = load_r2d2_checkpoint(path)
    assert loaded.fast == fast and not loaded.training
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        a, b = net(x), loaded(x)
    for key in a:
        assert torch.equal(a[key], b[key])


def test_training_checkpoint_loads_like_a_published_one(tmp_path):
    """``train_r2d2.py`` checkpoints (``net.`` keys, the config beside them) load wherever
    weights are taken: the extractor's ``weights`` and the benchmark's ``--weights``."""
    from models.r2d2 import R2D2, R2D2Extractor, load_r2d2_net

    torch.manual_seed(2)
    conf = {"name": "r2d2", "dim": 16, "mchan": 1}
    model = R2D2(conf)
    _randomise_batch_norm(model.net)
    path = tmp_path / "last_00000010.pt"
    torch.save({"model": model.state_dict(), "config": {"model": conf}}, path)
    published = tmp_path / "published.pt"
    _write_published_checkpoint(
        published, model.net, "Quad_L2Net_ConfCFS(dim=16, mchan=1)"
    )
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        expected = model.net.eval()(x)
        for net in (
            load_r2d2_net(path),
            load_r2d2_net(published),
            R2D2Extractor({"weights": str(path)}).net,
        ):
            out = net(x)
            assert all(torch.equal(expected[k], out[k]) for k in expected)


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_r2d2_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt.pt"):
        load_r2d2_checkpoint(corrupt)
    evil = tmp_path / "evil.pt"
    torch.save({"net": "exec('import os')", "state_dict": {}}, evil)
    with pytest.raises(UserError, match="evil.pt.*not an accepted network"):
        load_r2d2_checkpoint(evil)
    wrong = tmp_path / "wrong.pt"
    _write_published_checkpoint(wrong, R2D2Net(mchan=6), "Quad_L2Net_ConfCFS()")
    with pytest.raises(UserError, match="wrong.pt.*shape"):
        load_r2d2_checkpoint(wrong)
    with pytest.raises(UserError) as info:
        load_r2d2_checkpoint(wrong)
    assert "\n" not in str(info.value)


def _tiny_extractor(**conf) -> R2D2Extractor:
    torch.manual_seed(0)
    net = _randomise_batch_norm(R2D2Net(dim=16, mchan=1))
    base = {"min_size": 32, "reliability_thr": 0.0, "repeatability_thr": 0.0}
    return R2D2Extractor({**base, **conf}, net=net)


def test_extractor_contract():
    extractor = _tiny_extractor(top_k=100)
    assert extractor.grayscale is False and extractor.tag == "r2d2"
    out = extractor(torch.rand(1, 3, 72, 96))
    n = len(out["keypoints"])
    assert 0 < n <= 100
    assert out["keypoints"].shape == (n, 2) and out["descriptors"].shape == (n, 16)
    assert out["scales"].shape == out["keypoint_scores"].shape == (n,)
    assert torch.all(out["keypoint_scores"][:-1] >= out["keypoint_scores"][1:])
    norms = out["descriptors"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    kp = out["keypoints"]
    assert kp[:, 0].min() >= -0.5 and kp[:, 0].max() <= 95.5
    assert kp[:, 1].min() >= -0.5 and kp[:, 1].max() <= 71.5
    # Keypoints of the full-resolution level (scale 32) sit on pixel centres.
    full = kp[out["scales"] == 32]
    assert len(full) and torch.equal(full, full.round())
    with pytest.raises(ValueError, match="1, 3, H, W"):
        extractor(torch.rand(2, 3, 32, 32))
    with pytest.raises(UserError, match="'topk'; did you mean 'top_k'"):
        R2D2Extractor({"topk": 3})
    with pytest.raises(UserError, match="'min_size' expects int"):
        R2D2Extractor({"min_size": "big"})


def test_extractor_scores_and_descriptors_are_read_at_the_keypoints():
    """Full-resolution keypoints: score = reliability x repeatability and descriptor =
    the normalised feature, both at the keypoint's pixel of the dense maps."""
    extractor = _tiny_extractor(top_k=0)
    image = photograph()
    out = extractor(image)
    with torch.inference_mode():
        feats, reliability, repeatability = extractor.dense(
            extractor.net.normalize(image)
        )
    full = out["scales"] == 32
    assert full.sum() > 20
    x, y = out["keypoints"][full].long().unbind(1)
    expected = reliability[0, 0, y, x] * repeatability[0, 0, y, x]
    torch.testing.assert_close(out["keypoint_scores"][full], expected)
    descriptors = torch.nn.functional.normalize(feats[0, :, y, x].t(), dim=1)
    torch.testing.assert_close(out["descriptors"][full], descriptors)


@pytest.mark.parametrize("fast", [False, True])
def test_extractor_matches_reference_loop(fast):
    torch.manual_seed(0)
    net = _randomise_batch_norm(R2D2Net(dim=16, mchan=1, fast=fast))
    conf = {"min_size": 32, "reliability_thr": 0.3, "repeatability_thr": 0.3}
    image = torch.rand(1, 3, 64, 88)
    ours = R2D2Extractor({**conf, "top_k": 0}, net=net)(image)
    ref = reference_extract(
        net, image, min_size=32, reliability_thr=0.3, repeatability_thr=0.3, top_k=10**9
    )
    assert len(ref["keypoints"]) > 20
    recall, precision = agreement(ours, ref, tol=1e-3)
    assert recall >= 0.99 and precision >= 0.99


def test_extractor_bf16_within_tolerance_of_fp32_on_a_photograph():
    """``precision=bf16`` runs the trunk in bf16 (its features come out in bf16) and
    stays close to fp32 on a photograph: features within 2% (relative L2), confidence
    maps within 0.5%, 90% of the 200 best fp32 keypoints within 1 px (measured: 0.4%,
    0.03%, 97%)."""
    extractor = _tiny_extractor(top_k=200, reliability_thr=0.3, repeatability_thr=0.3)
    bf16 = R2D2Extractor({**extractor.conf, "precision": "bf16"}, net=extractor.net)
    assert bf16.precision == "bf16" and bf16.tag == "r2d2-bf16"
    image = photograph()
    with torch.inference_mode():
        exact = extractor.dense(extractor.net.normalize(image))
        approx = bf16.dense(bf16.net.normalize(image))
    assert exact[0].dtype == torch.float32 and approx[0].dtype == torch.bfloat16
    for a, b, tolerance in zip(exact, approx, (0.02, 0.005, 0.005)):
        error = float((b.float() - a).norm() / a.norm())
        assert error < tolerance
    fp32, reduced = extractor(image), bf16(image)
    assert reduced["descriptors"].dtype == torch.float32
    assert len(fp32["keypoints"]) == 200
    recall, _ = agreement(reduced, fp32, tol=1.0)
    assert recall >= 0.9
