"""Static int8 quantisation of the convolutional trunks, the fast inference path of CPUs
without native bf16.

On an AVX2-only CPU bf16 is emulated (about 16x slower than fp32), and fp32 convolutions are
bound by the two 256-bit FMA units; int8 convolutions through oneDNN multiply four times as
many values per instruction. Post-training static quantisation (PyTorch FX: per-channel
symmetric int8 weights, uint8 activations with histogram-calibrated ranges) runs SuperPoint at
480x640 about 2-4x faster than fp32 (``benchmarks/bench_superpoint_inference.py`` measures it
beside the plain fp32 path and reports keypoint agreement).

Activations are 8-bit where the CPU has an int8 dot product (VNNI, AMX) and 7-bit elsewhere:
the AVX2 kernels add pairs of u8 x s8 products in saturating int16, which 8-bit activations
overflow (``engine.devices.cpu_has_int8_dot_product``). 7 bits keep every pair in range, so
the results are exact integer arithmetic on every CPU.

Calibration uses the photographs bundled with scikit-image (a fixed, local set: the result
does not depend on the images being extracted), resized to the first image's size. Only the
convolutions are quantised; softmax, descriptor normalisation and keypoint selection stay in
float32.
"""

from __future__ import annotations

import copy
import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.devices import cpu_has_int8_dot_product

# oneDNN: the int8 engine whose kernels follow the CPU (AVX2 VPMADDUBSW up to AVX512-VNNI
# and AMX), and which honours ONEDNN_MAX_CPU_ISA like the fp32 convolutions do.
ENGINE = "onednn"
CALIBRATION_IMAGES = 8


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


def activation_bits(reduce_range: bool | None = None) -> int:
    """Bits of the quantised activations: 8 with an int8 dot product, else 7 (or as forced
    by ``reduce_range``)."""
    if reduce_range is None:
        reduce_range = not cpu_has_int8_dot_product()
    return 7 if reduce_range else 8


def precision_label() -> str:
    """How int8 runs on this CPU, for provenance records: ``int8`` or ``int8-a7``."""
    return "int8" if activation_bits() == 8 else "int8-a7"


def quantize_static(
    module: nn.Module,
    calibration: list[torch.Tensor],
    preprocess=None,
    reduce_range: bool | None = None,
) -> nn.Module:
    """Int8 copy of ``module`` (convolutions, linear layers, ReLUs) calibrated on images.

    Args:
        module: a traceable module ``(B, C, H, W) -> tensor or tuple`` in eval mode.
        calibration: example inputs; the activation ranges are observed on them.
        preprocess: optional function applied to each calibration input first.
        reduce_range: 7-bit activations; None: where the CPU lacks an int8 dot product
            (:func:`activation_bits`).

    Returns:
        A quantised module with the same call signature, float inputs and outputs. Layers
        that ``module.float_layers`` names (if it has that attribute) stay in float32.
    """
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping, quantize_fx

    torch.backends.quantized.engine = ENGINE
    mapping = get_default_qconfig_mapping(ENGINE)
    default = mapping.global_qconfig
    reduced = default.activation.with_args(
        reduce_range=activation_bits(reduce_range) == 7
    )
    mapping.set_global(QConfig(activation=reduced, weight=default.weight))
    for name in getattr(module, "float_layers", ()):
        mapping.set_module_name(name, None)
    example = calibration[0] if preprocess is None else preprocess(calibration[0])
    with warnings.catch_warnings():
        # torch.ao.quantization is marked deprecated in favour of torchao, which is not a
        # dependency here; the pinned PyTorch (2.13) ships it and its oneDNN int8 kernels
        # are what this path measures.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        prepared = quantize_fx.prepare_fx(
            copy.deepcopy(module).eval(),
            mapping,
            (example,),
        )
        with torch.inference_mode():
            for image in calibration:
                prepared(image if preprocess is None else preprocess(image))
        return quantize_fx.convert_fx(prepared)


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

    def forward(self, image: torch.Tensor):
        features = self.model.encode(image)
        logits = self.model.convPb(self.model.convPa(features))
        if self.descriptors:
            return logits, self.model.convDb(self.model.convDa(features))
        return (logits,)
