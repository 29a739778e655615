"""InvNet: the encoder-decoder of InvSfM (Pittaluga et al., CVPR 2019) for feature inversion.

The encoder has six 4 x 4 stride-2 convolutions, each followed by BatchNorm and ReLU, taking
the input from ``H`` to ``H / 64``. The decoder mirrors it: nearest-neighbour 2x upsampling,
concatenation with the encoder map of that resolution (at full resolution: the input
itself), then a 3 x 3 convolution with BatchNorm and ReLU; the last one outputs the image
logits without normalisation. Dropout follows the first ``dropout_layers`` decoder
convolutions (as in pix2pix-style generators, which InvSfM builds on).

``widths`` are the six encoder widths, finest first; the decoder reuses them in reverse, so
the decoder step arriving at the resolution of encoder level ``k`` has ``widths[k - 1]``
channels. ``H`` and ``W`` must be multiples of 64 (:attr:`InvNet.stride`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEPTH = 6


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel: int, stride: int
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel,
            stride=stride,
            padding=(kernel - 1) // 2 if stride == 1 else 1,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvNet(nn.Module):
    """InvSfM's encoder-decoder (see module docstring).

    Args:
        in_channels: input channels.
        out_channels: 1 (grey) or 3 (RGB).
        widths: six encoder widths, finest first (InvSfM-sized: 64, 128, 256, 512, 512, 512).
        dropout: dropout probability after the first decoder layers.
        dropout_layers: how many decoder layers (from the coarsest) get dropout.

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``, ``H, W`` multiples of 64.

    Example:
        >>> net = InvNet(16, 1, [8, 8, 16, 16, 32, 32])
        >>> net(torch.zeros(2, 16, 64, 64)).shape
        torch.Size([2, 1, 64, 64])
    """

    stride = 2**DEPTH

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        widths: list[int],
        dropout: float = 0.5,
        dropout_layers: int = 3,
    ):
        super().__init__()
        if len(widths) != DEPTH:
            raise ValueError(f"InvNet takes {DEPTH} widths, got {widths}")
        fan_in = [in_channels, *widths[:-1]]
        self.encoder = nn.ModuleList(
            _conv_bn_relu(fan_in[k], widths[k], 4, 2) for k in range(DEPTH)
        )
        # Decoder step k (k = 5 .. 0) goes from level k + 1 to level k, concatenating the
        # skip of level k (level 0 being the input) and outputting widths[k - 1] channels.
        self.decoder = nn.ModuleList()
        self.dropout = nn.ModuleList()
        for k in reversed(range(DEPTH)):
            below = widths[k]
            skip = in_channels if k == 0 else widths[k - 1]
            if k == 0:
                self.decoder.append(nn.Conv2d(below + skip, out_channels, 3, padding=1))
            else:
                self.decoder.append(_conv_bn_relu(below + skip, widths[k - 1], 3, 1))
            step = DEPTH - 1 - k
            use_dropout = k > 0 and step < dropout_layers and dropout > 0
            self.dropout.append(nn.Dropout(dropout) if use_dropout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for block in self.encoder:
            skips.append(block(skips[-1]))
        y = skips.pop()
        for block, drop, skip in zip(self.decoder, self.dropout, reversed(skips)):
            y = F.interpolate(y, size=skip.shape[-2:], mode="nearest")
            y = drop(block(torch.cat([y, skip], 1)))
        return y
