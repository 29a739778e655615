"""Static int8 quantisation of the convolutional trunks, the fast inference path of CPUs
without native bf16.

On an AVX2-only CPU bf16 is emulated (many times slower than fp32), and fp32 convolutions are
bound by the two 256-bit FMA units; int8 convolutions through oneDNN multiply four times as
many values per instruction. Post-training static quantisation (PyTorch FX: per-channel
symmetric int8 weights, uint8 activations with histogram-calibrated ranges) uses them.
``benchmarks/bench_superpoint_inference.py`` times it beside the plain fp32 path and reports
the keypoint agreement.

Weights are rounded by GPTQ (``models.rounding``: each rounding error is moved onto the
weights not yet rounded, so that the layer's output on the calibration images changes least)
with a pair limit that keeps the AVX2 kernels exact: without an int8 dot product (VNNI, AMX)
oneDNN adds the products of input-channel pairs in saturating int16, which 8-bit activations
times two large same-signed weights overflow. With the limit, activations are 8-bit and the
results exact integer arithmetic on every CPU (7-bit activations are used only for layers
the limit does not cover, on CPUs without an int8 dot product,
``engine.devices.cpu_has_int8_dot_product``).

Before rounding, cross-layer equalisation (Nagel et al., "Data-Free Quantization Through
Weight Equalization and Bias Correction", ICCV 2019; the activation/weight balance of Xiao et
al.'s SmoothQuant) rescales the channels between consecutive convolutions: ReLU and max-pool
commute with a positive per-channel scale, so dividing a convolution's output channel by
``s`` and multiplying the next convolution's matching input channel by ``s`` leaves the float
network unchanged, while the activation ranges, quantised per tensor, become even.

Equalisation and rounding change the int8 weights, not the time of the int8 network; each
raises the share of fp32 keypoints the int8 path keeps (``quantize_static``'s ``equalize``
and ``rounding`` switch them off). With both, a full-width MagicPoint trained 2800 steps on
Synthetic Shapes keeps 96.2% of its fp32 keypoints at 480x640 over six photographs on a
2-core AMD EPYC Zen 4, and 96.3% with its instruction set capped at AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``):
``python benchmarks/bench_superpoint_inference.py --detector CKPT --agreement-photos 6``.

Calibration uses the photographs bundled with scikit-image (a fixed, local set: the result
does not depend on the images being extracted), resized to one fixed size per network
(:func:`calibration_batch`: 240x320 for SuperPoint, 256x320 for R2D2). Only the
convolutions are quantised; softmax, descriptor normalisation and keypoint selection stay in
float32.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.devices import cpu_has_int8_dot_product
from models.fusion import fold_batch_norms
from models.rounding import observe_inputs, round_weights, roundable

# oneDNN: the int8 engine whose kernels follow the CPU (AVX2 VPMADDUBSW up to AVX512-VNNI
# and AMX), and which honours ONEDNN_MAX_CPU_ISA like the fp32 convolutions do.
ENGINE = "onednn"
CALIBRATION_IMAGES = 8
# Equalisation strength: per-channel scale s = r^a / w^(1 - a) of activation range r and
# next-layer weight range w (0: activations untouched, 0.5: both ranges made equal, 1: all
# the activation spread moved into the weights). 0.85 keeps the most keypoints of trained
# SuperPoint and R2D2 detectors among 0.5-1.0 without a bad photograph: 1.0 keeps about as
# many on average but loses several points on some photographs.
EQUALIZE_ALPHA = 0.85

# (producer convolution, its consumer convolutions): dotted module names.
Pairs = Sequence[tuple[str, Sequence[str]]]


@functools.cache
def _calibration_photos() -> tuple[np.ndarray, ...]:
    """RGB float photographs of scikit-image in [0, 1], the calibration set (loaded once)."""
    from datasets.hpatches_demo import load_photos

    photos = load_photos("builtin")[:CALIBRATION_IMAGES]
    return tuple(rgb.astype(np.float32) / 255.0 for _, rgb in photos)


def calibration_batch(height: int, width: int, channels: int = 1) -> list[torch.Tensor]:
    """The calibration images as ``(1, channels, height, width)`` tensors in [0, 1]
    (``channels`` 1: grey, 3: RGB)."""
    images = []
    for photo in _calibration_photos():
        tensor = torch.from_numpy(photo).permute(2, 0, 1)[None]
        if channels == 1:
            weights = tensor.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            tensor = (tensor * weights).sum(1, keepdim=True)
        tensor = F.interpolate(
            tensor, (height, width), mode="bilinear", align_corners=False
        )
        images.append(tensor.contiguous())
    return images


def precision_label(precision: str) -> str:
    """The provenance label of a resolved precision (``fp32``, ``bf16``, ``fp16``,
    ``int8``), written into feature and label files: int8 is named by its method,
    ``int8-cle-gptq`` (cross-layer equalised, pair-limited GPTQ weights, 8-bit
    activations on every CPU), so that files of another int8 method are not reused."""
    if precision not in ("fp32", "bf16", "fp16", "int8"):
        raise ValueError(f"precision {precision!r} is not resolved (auto?)")
    return "int8-cle-gptq" if precision == "int8" else precision


def sequential_pairs(seq: nn.Sequential) -> list[tuple[str, tuple[str]]]:
    """Consecutive convolutions of a ``Sequential`` with only ReLU, max-pool or identity
    between them: the pairs :func:`equalize_layers` may rescale."""
    pairs, producer = [], None
    for name, layer in seq.named_children():
        if isinstance(layer, nn.Conv2d):
            if producer is not None:
                pairs.append((producer, (name,)))
            producer = name
        elif not isinstance(layer, (nn.ReLU, nn.MaxPool2d, nn.Identity)):
            producer = None
    return pairs


def equalize_layers(
    module: nn.Module,
    pairs: Pairs,
    inputs: list[torch.Tensor],
    alpha: float = EQUALIZE_ALPHA,
) -> None:
    """Cross-layer equalisation of ``module``'s convolutions, in place.

    Args:
        module: the float network (batch norms already folded into the producers).
        pairs: ``(producer, consumers)`` names of convolutions where every path from the
            producer's output to the consumers' input goes through operations that
            commute with a positive per-channel scale (ReLU, max-pool), and the consumers
            read nothing else.
        inputs: example inputs of ``module``; the activation ranges are observed on them.
        alpha: :data:`EQUALIZE_ALPHA`.
    """
    layers = dict(module.named_modules())
    ranges: dict[str, torch.Tensor] = {}

    def observe(name: str):
        def hook(_module, args):
            r = args[0].detach().abs().amax(dim=(0, 2, 3)).float()
            ranges[name] = r if name not in ranges else torch.maximum(ranges[name], r)

        return hook

    observe_inputs(
        module,
        {consumers[0]: observe(producer) for producer, consumers in pairs},
        inputs,
    )
    with torch.no_grad():
        for producer, consumers in pairs:
            conv = layers[producer]
            nexts = [layers[name] for name in consumers]
            act = ranges[producer]
            weight = torch.stack(
                [c.weight.abs().amax(dim=(0, 2, 3)) for c in nexts]
            ).amax(0)
            # Channels (nearly) silent on the calibration images keep their scale: a
            # huge factor on a producer row would only magnify what the images missed.
            live = (act > 1e-6 * act.max()) & (weight > 0)
            scale = torch.ones_like(act)
            scale[live] = act[live] ** alpha / weight[live] ** (1 - alpha)
            conv.weight.div_(scale.view(-1, 1, 1, 1))
            if conv.bias is not None:
                conv.bias.div_(scale)
            for c in nexts:
                c.weight.mul_(scale.view(1, -1, 1, 1))


def _is_float(name: str, float_layers: Sequence[str]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in float_layers)


def quantize_static(
    module: nn.Module,
    calibration: list[torch.Tensor],
    preprocess=None,
    reduce_range: bool | None = None,
    equalize: bool = True,
    rounding: bool = True,
) -> nn.Module:
    """Int8 copy of ``module`` (convolutions, linear layers, ReLUs) calibrated on images.

    Args:
        module: a traceable module ``(B, C, H, W) -> tensor or tuple`` in eval mode.
        calibration: example inputs; the activation ranges are observed on them.
        preprocess: optional function applied to each calibration input first.
        reduce_range: 7-bit activations; None: only where the CPU lacks an int8 dot
            product and some quantised layer is not pair-limited.
        equalize: cross-layer equalisation first (:func:`equalize_layers`) of the pairs
            ``module.equalize_pairs`` names, or of a ``Sequential``'s consecutive
            convolutions (:func:`sequential_pairs`).
        rounding: round the convolution weights by :func:`models.rounding.round_weights`
            (pair-limited, so 8-bit activations are exact on every CPU) instead of to the
            nearest step.

    Returns:
        A quantised module with the same call signature, float inputs and outputs. Layers
        that ``module.float_layers`` names (if it has that attribute) stay in float32.
    """
    inputs = calibration if preprocess is None else [preprocess(x) for x in calibration]
    module = copy.deepcopy(module).eval()
    if equalize:
        if hasattr(module, "equalize_pairs"):
            pairs = module.equalize_pairs
        elif isinstance(module, nn.Sequential):
            pairs = sequential_pairs(module)
        else:
            pairs = ()
        if pairs:
            fold_batch_norms(module)
            equalize_layers(module, pairs, inputs)
    float_layers = tuple(getattr(module, "float_layers", ()))
    weighted = {
        name: layer
        for name, layer in module.named_modules()
        if isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd))
        and not _is_float(name, float_layers)
    }
    rounded = {}
    if rounding:
        names = [n for n, layer in weighted.items() if roundable(layer)]
        rounded = round_weights(module, names, inputs, pair_limited=True)
    if reduce_range is None:
        reduce_range = len(rounded) < len(weighted) and not cpu_has_int8_dot_product()
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping, quantize_fx

    torch.backends.quantized.engine = ENGINE
    mapping = get_default_qconfig_mapping(ENGINE)
    default = mapping.global_qconfig
    reduced = default.activation.with_args(reduce_range=reduce_range)
    mapping.set_global(QConfig(activation=reduced, weight=default.weight))
    for name in float_layers:
        mapping.set_module_name(name, None)
    with warnings.catch_warnings():
        # torch.ao.quantization is marked deprecated in favour of torchao, which is not a
        # dependency here; the pinned PyTorch (2.13) ships it and its oneDNN int8 kernels
        # are what this path measures.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        prepared = quantize_fx.prepare_fx(module, mapping, (inputs[0],))
        with torch.inference_mode():
            for x in inputs:
                prepared(x)
        quantized = quantize_fx.convert_fx(prepared)
    # The weight observers re-derive each scale from the largest rounded weight; set the
    # rounded steps and their scales exactly instead.
    for name, (steps, scales) in rounded.items():
        layer = quantized.get_submodule(name)
        weight = torch.quantize_per_channel(
            steps.double().mul(scales.view(-1, 1, 1, 1)).float(),
            scales,
            torch.zeros(len(scales), dtype=torch.long),
            0,
            torch.qint8,
        )
        if not torch.equal(weight.int_repr(), steps):
            raise RuntimeError(f"{name}: the rounded int8 weights did not survive")
        layer.set_weight_bias(weight, layer.bias())
    return quantized


class SuperPointDense(nn.Module):
    """The convolutions of a SuperPoint/MagicPoint: image to raw logits (and descriptors).

    Args:
        model: a ``models.superpoint.SuperPoint`` or ``MagicPoint``.

    Shape:
        ``(B, 1, H, W)`` to ``logits (B, 65, H/8, W/8)`` and, with the descriptor head,
        unnormalised ``descriptors (B, D, H/8, W/8)``.

    The two 1x1 output convolutions stay in float32 (``float_layers``): an int8 output would
    round the logits to steps of about a 127th of their range, which moves the scores near
    the detection threshold; at 1/8 resolution they are about 1.5% of the work.
    """

    float_layers = ("model.convPb", "model.convDb")

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.descriptors = bool(model.conf.get("descriptor_head", False))

    @property
    def equalize_pairs(self) -> list[tuple[str, tuple[str, ...]]]:
        """Each convolution and the next ones (through ReLU and max-pool), for
        :func:`equalize_layers`; none where batch norm follows the ReLU (``relu_bn``),
        which a per-channel scale does not commute with."""
        conf = self.model.conf
        if conf.get("batch_norm") and conf.get("batch_norm_order") == "relu_bn":
            return []
        chain = ["conv1a", "conv1b", "conv2a", "conv2b", "conv3a", "conv3b", "conv4a"]
        pairs = [(a, (b,)) for a, b in zip(chain, chain[1:] + ["conv4b"])]
        pairs.append(
            ("conv4b", ("convPa", "convDa") if self.descriptors else ("convPa",))
        )
        pairs.append(("convPa", ("convPb",)))
        if self.descriptors:
            pairs.append(("convDa", ("convDb",)))
        # The convolution is the first layer of each block (models.superpoint.ConvBlock).
        return [(f"model.{a}.0", tuple(f"model.{c}.0" for c in b)) for a, b in pairs]

    def forward(self, image: torch.Tensor):
        features = self.model.encode(image)
        logits = self.model.convPb(self.model.convPa(features))
        if self.descriptors:
            return logits, self.model.convDb(self.model.convDa(features))
        return (logits,)
