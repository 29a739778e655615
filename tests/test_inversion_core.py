"""Feature inversion, standalone parts: rasterisation and its rounding convention, sparsity,
image-quality metrics against scikit-image, VGG16 loading, networks and losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from datasets.sparse_maps import (
    flip_keypoints,
    pixel_indices,
    rasterize,
    resize_keypoints,
    select_points,
    unpack_binary_descriptors,
)
from losses.image_quality import mae, psnr, ssim
from losses.inversion import GANLoss, PerceptualLoss, ReconstructionLoss
from models.discriminator import build_discriminator
from models.invnet import InvNet
from models.unet import NestedUNet, UNet
from models.vgg import LAYER_INDEX, VGG16, VGG16_CONFIG, load_vgg16_weights
from utils.errors import UserError


def _unique_pixel_keypoints(rng, count: int, height: int, width: int) -> np.ndarray:
    flat = rng.choice(height * width, size=count, replace=False)
    rows, cols = np.divmod(flat, width)
    # Anywhere inside the pixel's cell [c - 0.5, c + 0.5).
    jitter = rng.uniform(-0.5, 0.5 - 1e-6, size=(count, 2))
    return np.stack([cols, rows], 1) + jitter


def test_each_descriptor_lands_at_its_pixel_and_nowhere_else():
    rng = np.random.default_rng(0)
    height, width, dim = 24, 32, 5
    keypoints = _unique_pixel_keypoints(rng, 40, height, width)
    descriptors = rng.standard_normal((40, dim)).astype(np.float32)
    out = rasterize(keypoints, descriptors, (height, width))
    expected = np.zeros((dim, height, width), np.float32)
    for (x, y), d in zip(keypoints, descriptors):
        col, row = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        expected[:, row, col] = d
    np.testing.assert_array_equal(out, expected)
    assert (np.abs(out).sum(0) > 0).sum() == 40


def test_rounding_convention_at_pixel_borders():
    # Pixel c covers [c - 0.5, c + 0.5): exact halves go to the right/bottom pixel.
    points = np.array(
        [[0.49, 0.0], [0.5, 0.0], [-0.5, 1.0], [-0.51, 1.0], [9.49, 2.0], [9.5, 2.0]]
    )
    np.testing.assert_array_equal(pixel_indices(points)[:, 0], [0, 1, 0, -1, 9, 10])
    out = rasterize(points, np.arange(1, 7, dtype=np.float32)[:, None], (3, 10))
    assert out[0, 0, 0] == 1 and out[0, 0, 1] == 2 and out[0, 1, 0] == 3
    assert out[0, 2, 9] == 5
    # (-0.51, 1) and (9.5, 2) are outside [-0.5, W - 0.5): dropped.
    assert (out > 0).sum() == 4


def test_shared_pixel_keeps_the_strongest_and_extra_channels_follow_descriptors():
    points = np.array([[3.1, 2.0], [2.9, 2.2], [0.0, 0.0]])
    descriptors = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], np.float32)
    scores = np.array([0.2, 0.9, 0.5])
    colors = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])
    depths = np.array([5.0, 6.0, 7.0])
    out = rasterize(
        points, descriptors, (4, 5), scores, colors=colors, depths=depths, mask=True
    )
    assert out.shape == (2 + 3 + 1 + 1, 4, 5)
    np.testing.assert_allclose(out[:, 2, 3], [2, 2, 0.4, 0.5, 0.6, 6, 1])
    np.testing.assert_allclose(out[:, 0, 0], [3, 3, 0.7, 0.8, 0.9, 7, 1])
    assert out[-1].sum() == 2


def test_keep_fraction_is_honoured_and_max_points_keeps_the_strongest():
    scores = np.random.default_rng(1).random(200)
    strongest = set(np.argsort(-scores)[:150].tolist())
    for fraction in (0.05, 0.1, 0.25, 0.5, 1.0):
        keep = select_points(
            scores, 150, (fraction, fraction), np.random.default_rng(2)
        )
        assert len(keep) == round(fraction * 150)
        assert set(keep.tolist()) <= strongest
        assert len(set(keep.tolist())) == len(keep)
    drawn = [
        len(select_points(scores, 0, (0.05, 1.0), np.random.default_rng(s))) / 200
        for s in range(2000)
    ]
    # Uniform in [0.05, 1]: mean 0.525, nothing outside the range.
    assert min(drawn) >= 0.05 and max(drawn) <= 1.0
    assert abs(np.mean(drawn) - 0.525) < 0.02
    assert len(select_points(scores, 10, (1.0, 1.0), None)) == 10
    assert len(select_points(np.zeros(0), 10, (0.5, 0.5), None)) == 0


def test_orb_bits_unpack_to_plus_minus_one():
    packed = np.array([[0b10000001, 0xFF], [0, 0b01000000]], np.uint8)
    bits = unpack_binary_descriptors(packed)
    assert bits.shape == (2, 16) and set(np.unique(bits)) == {-1.0, 1.0}
    np.testing.assert_array_equal(bits[0, :8], [1, -1, -1, -1, -1, -1, -1, 1])
    np.testing.assert_array_equal(bits[1, 8:], [-1, 1, -1, -1, -1, -1, -1, -1])


def test_keypoint_transforms_follow_pixel_centres():
    # Doubling a 4-pixel row: pixel 0 (centre 0) spans [-0.5, 0.5) -> [-0.5, 1.5), centre 0.5.
    moved = resize_keypoints(np.array([[0.0, 0.0], [3.0, 1.0]]), (2, 4), (4, 8))
    np.testing.assert_allclose(moved, [[0.5, 0.5], [6.5, 2.5]])
    np.testing.assert_allclose(flip_keypoints(np.array([[0.0, 1.0]]), 10), [[9.0, 1.0]])


@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_ssim_mae_equal_scikit_image(channels):
    rng = np.random.default_rng(channels)
    for _ in range(3):
        a = rng.random((channels, 37, 45))
        b = np.clip(a + 0.15 * rng.standard_normal(a.shape), 0, 1)
        ta, tb = torch.from_numpy(a)[None], torch.from_numpy(b)[None]
        axis = {"channel_axis": 0} if channels == 3 else {}
        sa, sb = (a, b) if channels == 3 else (a[0], b[0])
        assert psnr(tb, ta).item() == pytest.approx(
            peak_signal_noise_ratio(sa, sb, data_range=1.0), abs=1e-10
        )
        assert ssim(tb, ta).item() == pytest.approx(
            structural_similarity(sa, sb, data_range=1.0, **axis), abs=1e-10
        )
        assert ssim(tb, ta, gaussian=True, use_sample_covariance=False).item() == (
            pytest.approx(
                structural_similarity(
                    sa,
                    sb,
                    data_range=1.0,
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    **axis,
                ),
                abs=1e-10,
            )
        )
        assert mae(tb, ta).item() == pytest.approx(np.abs(a - b).mean(), abs=1e-12)
    assert ssim(ta, ta).item() == pytest.approx(1.0)


def test_ssim_gradient_is_finite_and_checks():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.random((1, 1, 9, 9))).requires_grad_()
    b = torch.from_numpy(rng.random((1, 1, 9, 9)))
    assert torch.autograd.gradcheck(lambda x: ssim(x, b), (a,))


def _fake_torchvision_vgg16(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state, index, channels = {}, 0, 3
    for item in VGG16_CONFIG:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = 0.1 * torch.randn(
            int(item), channels, 3, 3, generator=generator
        )
        state[f"features.{index}.bias"] = 0.1 * torch.randn(
            int(item), generator=generator
        )
        channels, index = int(item), index + 2
    # torchvision's classifier (4096 x 25088, ...) is skipped by the loader; small fakes of
    # its keys keep the file light.
    for key in ("classifier.0", "classifier.3", "classifier.6"):
        state[f"{key}.weight"] = torch.zeros(2, 2)
        state[f"{key}.bias"] = torch.zeros(2)
    return state


def test_vgg16_loads_torchvision_layout_and_refuses_mismatches(tmp_path):
    state = _fake_torchvision_vgg16(torch.Generator().manual_seed(0))
    assert max(int(k.split(".")[1]) for k in state if k.startswith("features")) == 28
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    vgg = VGG16()
    load_vgg16_weights(vgg, path)
    assert torch.equal(vgg.features[28].weight, state["features.28.weight"])
    x = torch.rand(1, 3, 16, 16)
    out = vgg(x, ["relu1_2", "relu3_3"])
    manual = torch.relu(
        torch.nn.functional.conv2d(
            torch.relu(
                torch.nn.functional.conv2d(
                    x, state["features.0.weight"], state["features.0.bias"], padding=1
                )
            ),
            state["features.2.weight"],
            state["features.2.bias"],
            padding=1,
        )
    )
    torch.testing.assert_close(out["relu1_2"], manual)
    assert out["relu3_3"].shape == (1, 256, 4, 4)
    assert LAYER_INDEX["relu2_2"] == 8

    cases = {
        "vgg19_extra": ({**state, "features.34.weight": torch.zeros(1)}, "features.34"),
        "shape": (
            {**state, "features.0.weight": torch.zeros(64, 1, 3, 3)},
            "features.0.weight",
        ),
        "missing": (
            {k: v for k, v in state.items() if k != "features.14.bias"},
            "features.14.bias",
        ),
    }
    for name, (bad, key) in cases.items():
        bad_path = tmp_path / f"{name}.pth"
        torch.save(bad, bad_path)
        with pytest.raises(UserError, match=key) as err:
            load_vgg16_weights(VGG16(), bad_path)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError) as err:
        load_vgg16_weights(VGG16(), tmp_path / "absent" / "vgg16-397923af.pth")
    message = str(err.value)
    assert "vgg16-397923af.pth" in message and "loss.perceptual=0" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "network, stride",
    [
        (UNet(7, 3, [4, 8, 8]), 4),
        (NestedUNet(7, 1, [4, 8, 8]), 4),
        (InvNet(7, 3, [4, 4, 8, 8, 8, 8], dropout=0.5), 64),
    ],
)
def test_networks_shapes_and_gradients(network, stride):
    assert network.stride == stride
    x = torch.randn(2, 7, 64, 128, requires_grad=True)
    out = network(x)
    assert out.shape == (
        2,
        network.head.out_channels if hasattr(network, "head") else 3,
        64,
        128,
    )
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for p in network.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize(
    "build",
    [
        lambda: UNet(7, 3, [4, 8, 8]),
        lambda: NestedUNet(7, 1, [4, 8, 8]),
        lambda: InvNet(7, 3, [4, 4, 8, 8, 8, 8], dropout=0.5),
    ],
    ids=["unet", "unetpp", "invnet"],
)
def test_networks_are_pixel_aligned(build):
    """The input pixel an output pixel depends on most is within 2 px of it: a skip
    connection or upsampling that is flipped or shifted by a coarse cell moves it
    (measured 0-2 px on these seeded random networks)."""
    torch.manual_seed(0)
    network = build().eval()
    for row, col in ((20, 37), (33, 90), (50, 64)):
        image = torch.randn(1, 7, 64, 128, requires_grad=True)
        network(image)[0, :, row, col].sum().backward()
        influence = image.grad.abs().sum(1)[0]
        peak_row, peak_col = divmod(int(influence.argmax()), 128)
        assert abs(peak_row - row) <= 2 and abs(peak_col - col) <= 2


def test_invnet_structure_follows_invsfm():
    net = InvNet(5, 3, [8, 8, 16, 16, 32, 32], dropout=0.5, dropout_layers=3)
    convs = [block[0] for block in net.encoder]
    assert len(convs) == 6
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    assert all(isinstance(block[1], torch.nn.BatchNorm2d) for block in net.encoder)
    decoder_convs = [
        b[0] if isinstance(b, torch.nn.Sequential) else b for b in net.decoder
    ]
    assert all(c.kernel_size == (3, 3) for c in decoder_convs)
    drops = [isinstance(d, torch.nn.Dropout) for d in net.dropout]
    assert drops == [True, True, True, False, False, False]


def test_gan_losses_known_values():
    zeros = torch.zeros(4, 1)
    vanilla, ls, hinge = GANLoss("vanilla"), GANLoss("lsgan"), GANLoss("hinge")
    assert vanilla.discriminator(zeros, zeros).item() == pytest.approx(np.log(2))
    assert vanilla.generator(zeros).item() == pytest.approx(np.log(2))
    big = torch.full((4, 1), 20.0)
    assert vanilla.discriminator(big, -big).item() < 1e-6
    assert ls.discriminator(torch.ones(3), torch.zeros(3)).item() == 0.0
    assert ls.generator(torch.zeros(3)).item() == 1.0
    assert hinge.discriminator(torch.ones(3), -torch.ones(3)).item() == 0.0
    assert hinge.generator(torch.full((3,), 2.0)).item() == -2.0
    with pytest.raises(ValueError):
        GANLoss("wgan")


def test_reconstruction_loss_terms_and_discriminators():
    target = torch.rand(2, 3, 32, 32)
    loss = ReconstructionLoss(l1=1.0, perceptual=0.0, ssim_weight=0.5)
    perfect = loss(target, target)
    assert perfect["total"].item() == pytest.approx(0.0, abs=1e-6)
    worse = loss(torch.zeros_like(target), target)
    assert worse["l1"].item() == pytest.approx(target.mean().item(), rel=1e-5)
    assert worse["total"].item() == pytest.approx(
        worse["l1"].item() + 0.5 * worse["ssim"].item(), rel=1e-5
    )
    with pytest.raises(ValueError):
        ReconstructionLoss(perceptual=1.0)
    image = torch.rand(2, 3, 64, 64)
    assert build_discriminator("invsfm", 3, [4, 8], "batch")(image).shape == (2, 1)
    patch = build_discriminator("patchgan", 3, [4, 8, 8], "instance")(image)
    assert patch.shape == (2, 1, 14, 14)
    disc = build_discriminator("patchgan", 3, [4, 8], "batch")
    assert len(list(disc.buffers())) == 0


def test_perceptual_loss_equals_the_formula():
    """Sum over the layers of the mean squared difference of VGG16 activations on
    ImageNet-normalised input (grey repeated to RGB), computed here by hand with
    torchvision's layer indices (relu1_2 = features[3], relu2_2 = features[8])."""
    torch.manual_seed(0)
    vgg = VGG16().eval()
    loss = PerceptualLoss(vgg, ["relu1_2", "relu2_2"])
    prediction, target = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def activations(image, last):
        return vgg.features[: last + 1]((image.repeat(1, 3, 1, 1) - mean) / std)

    with torch.no_grad():
        expected = sum(
            (activations(prediction, i) - activations(target, i)).square().mean()
            for i in (3, 8)
        )
        value = loss(prediction, target)
    assert float(expected) > 0
    assert float(value) == pytest.approx(float(expected), rel=1e-5)


def test_perceptual_loss_is_frozen_unsaved_and_takes_any_float_dtype():
    torch.manual_seed(0)
    loss = PerceptualLoss(VGG16(), ["relu1_2", "relu2_2"])
    criterion = ReconstructionLoss(1.0, 5.0, 0.0, loss)
    assert len(criterion.state_dict()) == 0 and len(list(criterion.parameters())) == 0
    target = torch.rand(2, 1, 32, 32)
    assert loss(target, target).item() == 0.0
    prediction = torch.rand(2, 1, 32, 32, requires_grad=True)
    terms = criterion(prediction, target)
    assert terms["total"].item() == pytest.approx(
        terms["l1"].item() + 5 * terms["perceptual"].item(), rel=1e-5
    )
    terms["total"].backward()
    assert torch.isfinite(prediction.grad).all()
    # A bf16 prediction (from an autocast forward) works outside and inside autocast.
    half = prediction.detach().bfloat16()
    outside = loss(half, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss(half, target)
    assert torch.isfinite(outside) and torch.isfinite(inside)


@pytest.mark.parametrize("arch", ["unet", "invnet"])
def test_residual_refiner_starts_at_the_coarse_image(arch):
    from models.refiner import RefinerModel

    widths = [4, 8] if arch == "unet" else [4, 4, 4, 4, 4, 4]
    conf = {
        "arch": arch,
        "in_channels": 5,
        "widths": widths,
        "coarse": {"arch": "unet", "in_channels": 5, "widths": [4, 8]},
        "discriminator": {"widths": [4, 8]},
    }
    torch.manual_seed(0)
    sparse = {"input": torch.randn(2, 5, 64, 64)}
    refiner = RefinerModel(conf, {"perceptual": 0.0}).eval()
    pred = refiner(sparse)
    torch.testing.assert_close(pred["image"], pred["coarse"], rtol=0, atol=1e-6)
    plain = RefinerModel({**conf, "residual": False}, {"perceptual": 0.0}).eval()
    pred = plain(sparse)
    assert (pred["image"] - pred["coarse"]).abs().max() > 1e-3
