"""Discriminators for the GAN refiner of feature inversion.

* ``invsfm``: InvSfM-style conv blocks: per width a 3 x 3 stride-1 and a 3 x 3 stride-2
  convolution, each followed by normalisation and LeakyReLU(0.2), then global average
  pooling and a linear layer: one logit per image ``(B, 1)``.
* ``patchgan``: the pix2pix PatchGAN (Isola et al. 2017): 4 x 4 convolutions, stride 2 for
  all widths but the last (stride 1), then a 4 x 4 convolution to one channel: a logit per
  overlapping patch ``(B, 1, h, w)`` (70 x 70 receptive field with widths 64-128-256-512).

Normalisation (``norm``): ``batch`` is BatchNorm without running statistics (a discriminator
is only used in training, and keeping no buffers means a generator update, which runs the
discriminator forward, leaves it bit-for-bit unchanged), ``instance`` or ``none``. The first
block of PatchGAN has no normalisation, as in pix2pix.
"""

from __future__ import annotations

import torch
from torch import nn

DISCRIMINATORS = ("invsfm", "patchgan")
NORMS = ("batch", "instance", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class InvSfMDiscriminator(nn.Module):
    """Conv-block discriminator with one logit per image (see module docstring).

    Args:
        in_channels: image channels (plus the sparse input when conditional).
        widths: channels per block, e.g. ``[32, 64, 128, 256, 512]``.
        norm: ``batch`` | ``instance`` | ``none``.

    Shape:
        ``(B, in_channels, H, W) -> (B, 1)``.
    """

    def __init__(self, in_channels: int, widths: list[int], norm: str = "batch"):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for index, width in enumerate(widths):
            for stride in (1, 2):
                layers.append(nn.Conv2d(channels, width, 3, stride, 1))
                if not (index == 0 and stride == 1):
                    layers.append(_norm(norm, width))
                layers.append(nn.LeakyReLU(0.2, inplace=True))
                channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class PatchGAN(nn.Module):
    """pix2pix PatchGAN discriminator (see module docstring).

    Args:
        in_channels: image channels (plus the sparse input when conditional).
        widths: channels per 4 x 4 block, e.g. ``[64, 128, 256, 512]``.
        norm: ``batch`` | ``instance`` | ``none``.

    Shape:
        ``(B, in_channels, H, W) -> (B, 1, H / 2^(n-1) - 2, W / 2^(n-1) - 2)`` for ``n``
        widths.
    """

    def __init__(self, in_channels: int, widths: list[int], norm: str = "batch"):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for index, width in enumerate(widths):
            stride = 1 if index == len(widths) - 1 else 2
            layers.append(nn.Conv2d(channels, width, 4, stride, 1))
            if index > 0:
                layers.append(_norm(norm, width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            channels = width
        layers.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_discriminator(
    kind: str, in_channels: int, widths: list[int], norm: str
) -> nn.Module:
    """A discriminator by name (``invsfm`` | ``patchgan``)."""
    if norm not in NORMS:
        raise ValueError(f"discriminator norm {norm!r} is not one of {NORMS}")
    if kind == "invsfm":
        return InvSfMDiscriminator(in_channels, widths, norm)
    if kind == "patchgan":
        return PatchGAN(in_channels, widths, norm)
    raise ValueError(f"discriminator {kind!r} is not one of {DISCRIMINATORS}")
