"""U-Net (bilinear upsampling) and nested U-Net (UNet++) for feature inversion.

Both map a sparse feature map ``(B, C_in, H, W)`` to an image ``(B, C_out, H, W)`` of logits
(the inversion model applies the output activation). ``widths`` gives the channels of each
resolution level, finest first; a network with ``L`` widths downsamples ``L - 1`` times by
2 x 2 max pooling, so ``H`` and ``W`` must be multiples of ``2 ** (L - 1)`` (the inversion
model pads its input to that; see :attr:`UNet.stride`).

* :class:`UNet` (Ronneberger et al. 2015) with the common "bilinear" variant: the decoder
  upsamples by bilinear interpolation and concatenates the encoder's map, then two 3 x 3
  convolutions (each followed by BatchNorm and ReLU).
* :class:`NestedUNet` (UNet++, Zhou et al. 2018): node ``X[i, j]`` at depth ``i`` fuses the
  previous nodes of its depth ``X[i, 0..j-1]`` with the upsampled ``X[i+1, j-1]`` (dense
  skip pathways); the output is read from ``X[0, L-1]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
    """Two (3 x 3 conv, BatchNorm, ReLU) blocks.

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def upsample_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling of ``x`` to the spatial size of ``reference``."""
    return F.interpolate(
        x, size=reference.shape[-2:], mode="bilinear", align_corners=False
    )


class UNet(nn.Module):
    """U-Net with bilinear upsampling (see module docstring).

    Args:
        in_channels: input channels (descriptor dimension plus extra channels).
        out_channels: 1 (grey) or 3 (RGB).
        widths: channels per level, finest first, e.g. ``[32, 64, 128, 256]``.

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``, ``H, W`` multiples of
        :attr:`stride`.

    Example:
        >>> net = UNet(16, 3, [8, 16, 32])
        >>> net(torch.zeros(2, 16, 64, 64)).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(self, in_channels: int, out_channels: int, widths: list[int]):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"UNet needs at least 2 widths, got {widths}")
        self.stride = 2 ** (len(widths) - 1)
        self.inc = DoubleConv(in_channels, widths[0])
        self.down = nn.ModuleList(
            DoubleConv(widths[i], widths[i + 1]) for i in range(len(widths) - 1)
        )
        self.up = nn.ModuleList(
            DoubleConv(widths[i + 1] + widths[i], widths[i])
            for i in range(len(widths) - 1)
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for block, skip in zip(reversed(self.up), reversed(skips)):
            y = block(torch.cat([skip, upsample_to(y, skip)], 1))
        return self.head(y)


class NestedUNet(nn.Module):
    """UNet++ with dense skip pathways and bilinear upsampling (see module docstring).

    Args:
        in_channels: input channels.
        out_channels: 1 (grey) or 3 (RGB).
        widths: channels per depth, finest first.

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``, ``H, W`` multiples of
        :attr:`stride`.
    """

    def __init__(self, in_channels: int, out_channels: int, widths: list[int]):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"NestedUNet needs at least 2 widths, got {widths}")
        depth = len(widths)
        self.stride = 2 ** (depth - 1)
        # nodes[i][j] is X[i, j]; X[i, 0] is the encoder.
        self.nodes = nn.ModuleList()
        for i in range(depth):
            row = nn.ModuleList()
            for j in range(depth - i):
                if j == 0:
                    fan_in = in_channels if i == 0 else widths[i - 1]
                else:
                    fan_in = widths[i] * j + widths[i + 1]
                row.append(DoubleConv(fan_in, widths[i]))
            self.nodes.append(row)
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = len(self.nodes)
        grid: list[list[torch.Tensor]] = [[] for _ in range(depth)]
        for i in range(depth):
            source = x if i == 0 else F.max_pool2d(grid[i - 1][0], 2)
            grid[i].append(self.nodes[i][0](source))
        # Fill anti-diagonals: X[i, j] needs X[i+1, j-1], computed one diagonal earlier.
        for j in range(1, depth):
            for i in range(depth - j):
                below = upsample_to(grid[i + 1][j - 1], grid[i][0])
                grid[i].append(self.nodes[i][j](torch.cat([*grid[i][:j], below], 1)))
        return self.head(grid[0][depth - 1])
