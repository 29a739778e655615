"""Batch-norm folding for inference copies of a network (R2D2's fused trunk, int8 quantisation)."""

from __future__ import annotations

import torch
from torch import nn


def fold_batch_norms(module: nn.Module) -> None:
    """Fold every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` in an
    ``nn.Sequential`` into the convolution, and remove it (in place; same outputs)."""
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        i = 0
        while i + 1 < len(seq):
            conv, bn = seq[i], seq[i + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                i += 1
                continue
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.bias is not None:
                shift = shift + bn.bias
            with torch.no_grad():
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                if conv.bias is None:
                    conv.bias = nn.Parameter(torch.zeros_like(shift))
                conv.bias.mul_(scale).add_(shift)
            del seq[i + 1]  # renumbers the later layers; the convolution keeps its name
