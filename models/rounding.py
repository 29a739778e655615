"""Int8 weight rounding that minimises each convolution's output error, not its weight error.

Rounding every weight to its nearest int8 step is what post-training quantisation does by
default; each error is small, but a convolution sums hundreds of them, and where the inputs
are correlated (neighbouring pixels, a smooth image under a 3x3 edge filter) they add up
rather than cancel. GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023, after Optimal Brain Quantization) rounds one
input column at a time and moves its error onto the columns not yet rounded, weighted by the
inverse second moment ``H = E[x x^T]`` of the layer's input patches, so that ``W x`` changes
as little as possible on the calibration data: a trained MagicPoint whose int8 weights are
rounded this way (float activations) keeps more of its fp32 keypoints than with nearest
rounding.

On CPUs without an int8 dot product (AVX2 without VNNI) oneDNN multiplies uint8 activations
by int8 weights with VPMADDUBSW, which adds the products of input channels ``2j`` and
``2j + 1`` (same output channel, same kernel tap) in *saturating* int16: with 8-bit
activations up to 255, two same-signed weights whose magnitudes add up to more than 128
overflow it (255 * 128 = 32640 is the largest safe sum). ``pair_limited`` rounding keeps every
such pair within 128 (an output channel whose largest pair would exceed it takes a coarser
step, and a pair that rounding still pushes over is clipped, the error moved on like any
rounding error), so the int8 convolution is exact integer arithmetic and the activations
keep all 8 bits (``tests/test_rounding.py`` checks this under
``ONEDNN_MAX_CPU_ISA=AVX2``). Without it, those CPUs need 7-bit activations
(``models.quantize.quantize_static`` uses them for layers this rounding does not cover),
which halve the activation resolution and lose keypoint agreement.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

# Largest same-signed |w1| + |w2| of an input-channel pair that 8-bit activations cannot
# overflow in int16 (255 * 128 <= 32767).
PAIR_LIMIT = 128
# Input patches sampled for H per calibration input and layer, at random positions (H is a
# mean: a few thousand patches per image estimate it about as well as all of them, and keep
# calibration fast).
HESSIAN_SAMPLES = 4096
# Columns rounded per lazy-update block (GPTQ's default).
BLOCK = 128
# Dampening of H's diagonal, a fraction of its mean (GPTQ's default).
DAMP = 0.01


def sample_patches(
    x: torch.Tensor, conv: nn.Conv2d, count: int, generator: torch.Generator
) -> torch.Tensor:
    """The input patches of ``conv`` at ``count`` random output positions (all of them
    where there are fewer).

    Returns:
        ``(N, C_in * kh * kw)``, the columns in the order of ``weight.flatten(1)``.
    """
    b, c, h, w = x.shape
    (kh, kw), (dh, dw), (sh, sw) = conv.kernel_size, conv.dilation, conv.stride
    ph, pw = conv.padding
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    total = b * out_h * out_w
    keep = torch.randperm(total, generator=generator)[:count]
    image, rest = keep // (out_h * out_w), keep % (out_h * out_w)
    y, x0 = rest // out_w * sh, rest % out_w * sw
    padded = F.pad(x, (pw, pw, ph, ph))
    taps = [
        padded[image, :, y + i * dh, x0 + j * dw] for i in range(kh) for j in range(kw)
    ]
    return torch.stack(taps, dim=2).reshape(len(keep), c * kh * kw)


def input_moments(
    module: nn.Module, names: Iterable[str], inputs: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``E[x x^T]`` of the input patches of the named convolutions over ``inputs``
    (:data:`HESSIAN_SAMPLES` positions per input, drawn with a fixed seed).

    Returns:
        For each name, a ``(C_in * kh * kw, C_in * kh * kw)`` float64 matrix, the columns in
        the order of ``weight.flatten(1)``.
    """
    layers = dict(module.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    generator = torch.Generator().manual_seed(0)

    def observe(name: str, conv: nn.Conv2d):
        def hook(_module, args):
            cols = sample_patches(
                args[0].detach().float(), conv, HESSIAN_SAMPLES, generator
            )
            moment = (cols.T @ cols).double()
            sums[name] = moment if name not in sums else sums[name] + moment
            counts[name] = counts.get(name, 0) + cols.shape[0]

        return hook

    hooks = {}
    for name in names:
        conv = layers[name]
        if not roundable(conv):
            raise ValueError(f"{name}: only ungrouped, zero-padded 2-D convolutions")
        hooks[name] = observe(name, conv)
    observe_inputs(module, hooks, inputs)
    return {name: sums[name] / counts[name] for name in sums}


def observe_inputs(module: nn.Module, hooks: dict, inputs: list[torch.Tensor]) -> None:
    """Run ``module`` over ``inputs`` (inference mode) with ``hooks[name](layer, args)``
    as forward pre-hooks of the named submodules; they are removed afterwards, also on
    error."""
    layers = dict(module.named_modules())
    handles = [layers[name].register_forward_pre_hook(h) for name, h in hooks.items()]
    try:
        with torch.inference_mode():
            for x in inputs:
                module(x)
    finally:
        for handle in handles:
            handle.remove()


def pair_sums(values: torch.Tensor) -> torch.Tensor:
    """The larger same-signed magnitude sum of each input-channel pair ``(2j, 2j + 1)`` of
    ``(C_out, C_in, ...)`` weights, ``(C_out, C_in // 2, ...)``: what one VPMADDUBSW adds
    per unit of activation (an unpaired last channel cannot overflow)."""
    pairs = values.shape[1] // 2 * 2
    even, odd = values[:, 0:pairs:2], values[:, 1:pairs:2]
    positive = even.clamp(min=0) + odd.clamp(min=0)
    negative = (-even).clamp(min=0) + (-odd).clamp(min=0)
    return torch.maximum(positive, negative)


def weight_scales(weight: torch.Tensor, pair_limited: bool = False) -> torch.Tensor:
    """Per-output-channel int8 steps, float64: the largest magnitude over 127.5, as
    PyTorch's symmetric per-channel observer sets them, and with ``pair_limited`` at least
    the largest pair sum (:func:`pair_sums`) over :data:`PAIR_LIMIT`."""
    flat = weight.detach().double()
    scales = flat.flatten(1).abs().amax(1) / 127.5
    if pair_limited and flat.shape[1] > 1:
        scales = torch.maximum(scales, pair_sums(flat).flatten(1).amax(1) / PAIR_LIMIT)
    return torch.where(scales > 0, scales, torch.ones_like(scales))


def round_weight(
    weight: torch.Tensor,
    moment: torch.Tensor,
    pair_limited: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ rounding of one convolution's weight.

    Args:
        weight: ``(C_out, C_in, kh, kw)`` float weight.
        moment: :func:`input_moments` of its input.
        pair_limited: keep same-signed input-channel pairs ``(2j, 2j + 1)`` of one tap
            within :data:`PAIR_LIMIT` steps (exact on VPMADDUBSW).

    Returns:
        ``(steps, scales)``: int8 steps shaped like ``weight`` and the per-output-channel
        float64 scales; ``steps * scales`` is the rounded weight.
    """
    c_out, c_in, kh, kw = weight.shape
    taps = kh * kw
    # Channels with a pair of large same-signed weights take a coarser step, so that
    # rounding rarely has to clip a pair (the clipped error then moves on like any other).
    scales = weight_scales(weight, pair_limited)
    w = weight.detach().flatten(1).double() / scales[:, None]  # in steps
    h = moment.double().clone()
    n = h.shape[0]
    # Inputs silent on the calibration images: their weights are rounded to the nearest
    # step (unit, uncorrelated moment: no error flows in or out), not zeroed as GPTQ does
    # for language models; other images may well use them.
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    # Columns with the largest input energy first (GPTQ's "act order").
    order = torch.argsort(torch.diagonal(h), descending=True)
    h = h[order][:, order]
    h += DAMP * torch.diagonal(h).mean() * torch.eye(n, dtype=h.dtype)
    hinv = torch.linalg.cholesky(
        torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True
    )
    w = w[:, order]
    steps = torch.zeros_like(w)
    position = torch.empty_like(order)
    position[order] = torch.arange(n)
    # GPTQ's lazy batches: errors spread within a block column by column, and onto the
    # columns after it in one product (the same result, far less memory traffic).
    for start in range(0, n, BLOCK):
        end = min(start + BLOCK, n)
        block, inverse = w[:, start:end].clone(), hinv[start:end, start:end]
        errors = torch.zeros_like(block)
        for j in range(end - start):
            q = torch.clamp(torch.round(block[:, j]), -128, 127)
            column = int(order[start + j])
            channel, tap = divmod(column, taps)
            partner = (channel ^ 1) * taps + tap
            # The partner is already rounded when it comes earlier in the order.
            if pair_limited and channel ^ 1 < c_in and position[partner] < start + j:
                other = steps[:, position[partner]]
                room = (PAIR_LIMIT - other.abs()).clamp(min=0)
                same = torch.sign(q) * torch.sign(other) > 0
                q = torch.where(same, torch.sign(q) * torch.minimum(q.abs(), room), q)
            steps[:, start + j] = q
            errors[:, j] = (block[:, j] - q) / inverse[j, j]
            block[:, j:] -= errors[:, j : j + 1] * inverse[j, j:][None]
        w[:, end:] -= errors @ hinv[start:end, end:]
    steps = steps[:, position].view(c_out, c_in, kh, kw)
    return steps.to(torch.int8), scales


def round_weights(
    module: nn.Module,
    names: list[str],
    inputs: list[torch.Tensor],
    pair_limited: bool = False,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Round the named convolutions of ``module`` in place (their float weights become the
    rounded values) and return ``{name: (steps, scales)}`` (:func:`round_weight`).

    The input moments are observed on the float network in one pass over ``inputs``.
    """
    if not names:
        return {}
    moments = input_moments(module, names, inputs)
    layers = dict(module.named_modules())
    rounded = {}
    with torch.no_grad():
        for name in names:
            conv = layers[name]
            steps, scales = round_weight(conv.weight, moments[name], pair_limited)
            conv.weight.copy_(steps.double().mul(scales.view(-1, 1, 1, 1)).float())
            rounded[name] = (steps, scales)
    return rounded


def pair_overflow(steps: torch.Tensor) -> int:
    """Input-channel pairs of int8 ``steps`` that can overflow VPMADDUBSW (0 after
    pair-limited rounding)."""
    return int((pair_sums(steps.int()) > PAIR_LIMIT).sum())


def roundable(layer: nn.Module) -> bool:
    """Whether :func:`round_weights` handles ``layer`` (an ungrouped, zero-padded 2-D
    convolution)."""
    return (
        isinstance(layer, nn.Conv2d)
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    )
