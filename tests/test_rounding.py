"""Int8 weight rounding (GPTQ) and its pair limit, which makes 8-bit activations exact on
CPUs without an int8 dot product."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.quantize import calibration_batch
from models.rounding import (
    PAIR_LIMIT,
    pair_overflow,
    pair_sums,
    round_weight,
    round_weights,
    sample_patches,
    weight_scales,
)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(3, 4, 2, dilation=4),
        nn.Conv2d(3, 4, 3, padding=2, dilation=2, stride=2),
    ],
)
def test_sampled_patches_are_the_unfolded_ones(conv):
    x = torch.randn(2, 3, 11, 13, generator=torch.Generator().manual_seed(0))
    cols = F.unfold(
        x,
        conv.kernel_size,
        dilation=conv.dilation,
        padding=conv.padding,
        stride=conv.stride,
    )
    cols = cols.transpose(1, 2).reshape(-1, conv.weight[0].numel())
    every = sample_patches(x, conv, 10**6, torch.Generator().manual_seed(1))
    order = torch.randperm(len(cols), generator=torch.Generator().manual_seed(1))
    assert torch.equal(every, cols[order])
    assert len(sample_patches(x, conv, 5, torch.Generator().manual_seed(1))) == 5


def _nearest(weight, scales):
    steps = torch.clamp(
        torch.round(weight.double() / scales.view(-1, 1, 1, 1)), -128, 127
    )
    return steps * scales.view(-1, 1, 1, 1)


def test_rounding_lowers_the_output_error_on_photographs():
    """On smooth, correlated inputs (photographs under 3x3 filters) nearest-step errors add
    up; GPTQ's rounding moves each error where the next weights cancel it."""
    torch.manual_seed(0)
    original = nn.Conv2d(1, 16, 3, padding=1, bias=False).requires_grad_(False)
    fitted = nn.Sequential(copy.deepcopy(original))
    photos = calibration_batch(48, 64)
    steps, scales = round_weights(fitted, ["0"], photos[:4])["0"]
    rounded = steps.double() * scales.view(-1, 1, 1, 1)
    assert torch.equal(fitted[0].weight, rounded.float())  # rounded in place
    nearest = _nearest(original.weight, weight_scales(original.weight))
    errors = {"nearest": 0.0, "gptq": 0.0}
    for x in photos[4:]:  # held-out images
        exact = F.conv2d(x.double(), original.weight.double(), padding=1)
        errors["nearest"] += float(
            (F.conv2d(x.double(), nearest, padding=1) - exact).norm()
        )
        errors["gptq"] += float(
            (F.conv2d(x.double(), rounded, padding=1) - exact).norm()
        )
    assert errors["gptq"] < 0.5 * errors["nearest"], errors


def test_pair_limited_rounding_keeps_every_pair_in_range():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 6, 3, 3, generator=generator)
    weight[:, 0] = weight[:, 1] = 1.0  # a same-signed pair at every tap
    moment = torch.eye(6 * 9, dtype=torch.float64)
    free, _ = round_weight(weight, moment)
    limited, scales = round_weight(weight, moment, pair_limited=True)
    assert pair_overflow(free) > 0
    assert pair_overflow(limited) == 0
    assert int(pair_sums(limited.int()).max()) <= PAIR_LIMIT
    # Opposite signs never overflow: such pairs may use the full range.
    assert pair_overflow(torch.tensor([[[[127]], [[-128]]]], dtype=torch.int8)) == 0
    assert (scales >= weight_scales(weight)).all()


EXACTNESS_CHECK = """
import json, torch
import torch.nn.functional as F
from torch import nn
from models.quantize import quantize_static
conv = nn.Sequential(nn.Conv2d(16, 4, 3, padding=1)).eval()
generator = torch.Generator().manual_seed(0)
with torch.no_grad():
    # Equal-signed weights times large activations: what overflows int16 pair sums.
    conv[0].weight.copy_(torch.rand(4, 16, 3, 3, generator=generator) * 0.05 + 0.01)
    conv[0].bias.zero_()
x = torch.rand(1, 16, 32, 32, generator=generator) * 0.2 + 0.8
worst = {}
for rounding in (True, False):
    q = quantize_static(conv, [x, torch.ones_like(x)], rounding=rounding, reduce_range=False)
    layer = q.get_submodule("0")
    qx = torch.quantize_per_tensor(
        x, float(getattr(q, "0_input_scale_0")), int(getattr(q, "0_input_zero_point_0")),
        torch.quint8,
    )
    integer = F.conv2d(
        qx.dequantize().double(), layer.weight().dequantize().double(),
        layer.bias().double(), padding=1,
    )
    expected = torch.quantize_per_tensor(
        integer.float(), layer.scale, layer.zero_point, torch.quint8
    ).int_repr().int()
    worst[str(rounding)] = int((layer(qx).int_repr().int() - expected).abs().max())
print(json.dumps(worst))
"""


def test_8bit_activations_are_exact_on_cpus_without_an_int8_dot_product():
    """Under ONEDNN_MAX_CPU_ISA=AVX2 (VPMADDUBSW, saturating int16 pair sums) the int8
    convolution with pair-limited weights equals exact integer arithmetic to one output
    step; nearest rounding with 8-bit activations overflows (the check can fail)."""
    import engine.devices as devices

    if "avx2" not in devices.cpu_info()["flags"]:
        pytest.skip("needs an x86 CPU with AVX2")
    root = str(Path(__file__).resolve().parents[1])
    run = subprocess.run(
        [sys.executable, "-c", EXACTNESS_CHECK],
        cwd=root,
        env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    worst = json.loads(run.stdout.strip().splitlines()[-1])
    assert worst["True"] <= 1, worst
    assert worst["False"] > 10, worst


def test_inputs_silent_in_calibration_keep_their_weights():
    """A channel the calibration images never excite is rounded to the nearest step, not
    dropped: other images may excite it."""
    weight = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    moment = torch.zeros(18, 18, dtype=torch.float64)
    moment[:9, :9] = torch.eye(9, dtype=torch.float64) + 0.5  # channel 0 only
    steps, scales = round_weight(weight, moment)
    nearest = torch.round(weight[:, 1].double() / scales.view(-1, 1, 1)).clamp(
        -128, 127
    )
    assert torch.equal(steps[:, 1].double(), nearest)
    assert steps[:, 1].abs().sum() > 0
