"""Cross-layer equalisation before int8 quantisation (``models.quantize``)."""

import copy

import pytest
import torch
from torch import nn

from models.quantize import (
    SuperPointDense,
    calibration_batch,
    equalize_layers,
    fold_batch_norms,
    quantize_static,
    sequential_pairs,
)
from models.r2d2_net import R2D2Net
from models.superpoint import SuperPoint

TINY = {"channels": [8, 8, 16, 16], "head_channels": 16, "descriptor_dim": 16}


def uneven_chain() -> nn.Sequential:
    """conv-ReLU-pool-conv-ReLU-conv whose first activations span a range of magnitudes
    of about 100x across channels, which the second convolution weighs back so that
    every channel contributes alike (as trained networks arrange)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
    ).eval()
    with torch.no_grad():
        scale = torch.logspace(-1.5, 1.5, 8)
        net[0].weight.mul_(scale.view(-1, 1, 1, 1))
        net[0].bias.abs_().mul_(scale)
        net[3].weight.div_(scale.view(1, -1, 1, 1))
    return net


def channel_spread(net: nn.Sequential, inputs) -> float:
    """Ratio of the largest to the smallest per-channel maximum entering ``net[3]``."""
    with torch.inference_mode():
        act = torch.cat([net[:3](x) for x in inputs]).amax(dim=(0, 2, 3))
    return float(act.max() / act.min())


def test_sequential_pairs_skip_what_a_scale_does_not_commute_with():
    assert sequential_pairs(uneven_chain()) == [("0", ("3",)), ("3", ("5",))]
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.Conv2d(2, 2, 1))
    assert sequential_pairs(net) == []
    trunk = R2D2Net(dim=16, mchan=1).eval().fused_trunk()
    convs = [n for n, m in trunk.named_children() if isinstance(m, nn.Conv2d)]
    assert sequential_pairs(trunk) == [(a, (b,)) for a, b in zip(convs, convs[1:])]


def test_equalization_keeps_the_float_network_and_evens_the_ranges():
    net = uneven_chain()
    inputs = calibration_batch(32, 48)
    before = channel_spread(net, inputs)
    equalized = copy.deepcopy(net)
    equalize_layers(equalized, sequential_pairs(equalized), inputs)
    with torch.inference_mode():
        for x in inputs:
            torch.testing.assert_close(equalized(x), net(x), rtol=1e-4, atol=1e-5)
    after = channel_spread(equalized, inputs)
    assert before > 100 and after < before / 10, (before, after)


def test_silent_channels_keep_their_scale():
    net = uneven_chain()
    with torch.no_grad():
        net[0].weight[2].mul_(1e-9)  # about 1e-9 of the other channels' outputs
        net[0].bias[2] = 0.0
    inputs = calibration_batch(32, 48)
    equalized = copy.deepcopy(net)
    equalize_layers(equalized, sequential_pairs(equalized)[:1], inputs)
    assert not torch.equal(equalized[0].weight, net[0].weight)
    torch.testing.assert_close(equalized[0].weight[2], net[0].weight[2])
    torch.testing.assert_close(equalized[3].weight[:, 2], net[3].weight[:, 2])
    assert all(torch.isfinite(p).all() for p in equalized.parameters())
    with torch.inference_mode():
        torch.testing.assert_close(
            equalized(inputs[0]), net(inputs[0]), rtol=1e-4, atol=1e-5
        )


def test_equalization_lowers_the_int8_error():
    net = uneven_chain()
    inputs = calibration_batch(32, 48)
    errors = []
    for equalize in (False, True):
        quantized = quantize_static(net, inputs, equalize=equalize)
        with torch.inference_mode():
            error = sum(
                float((quantized(x) - net(x)).norm() / net(x).norm()) for x in inputs
            )
        errors.append(error / len(inputs))
    assert errors[1] < 0.5 * errors[0], errors


@pytest.mark.parametrize("order", ["bn_relu", "none"])
def test_superpoint_equalization_keeps_its_outputs(order):
    torch.manual_seed(0)
    conf = {**TINY, "descriptor_head": True, "batch_norm": order != "none"}
    model = SuperPoint(conf).eval()
    if order != "none":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    dense = SuperPointDense(model).eval()
    copy_ = copy.deepcopy(dense)
    fold_batch_norms(copy_)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in copy_.modules())
    inputs = calibration_batch(32, 48)
    equalize_layers(copy_, dense.equalize_pairs, inputs)
    with torch.inference_mode():
        for x in inputs[:3]:
            for a, b in zip(copy_(x), dense(x)):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert len(dense.equalize_pairs) == 10


def test_no_superpoint_pairs_when_batch_norm_follows_the_relu():
    model = SuperPoint({**TINY, "batch_norm": True, "batch_norm_order": "relu_bn"})
    assert SuperPointDense(model.eval()).equalize_pairs == []
