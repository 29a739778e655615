"""R2D2 and Fast-R2D2 networks (NAVER's layer names) and the loading of official checkpoints.

The layer order and parameter names follow NAVER's ``nets/patchnet.py``, so the published files
load with :func:`load_r2d2_checkpoint`; their constructor string is parsed by a whitelist
(:mod:`utils.constructor_parser`), never evaluated. The docstring of :mod:`models.r2d2`
describes the architecture.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.fusion import fold_batch_norms
from utils.constructor_parser import parse_constructor
from utils.errors import UserError
from utils.io import load_checkpoint

# Inputs are RGB in [0, 1]; the published weights expect ImageNet normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


_NET_KWARGS = (
    "dim",
    "mchan",
    "relu22",
    "inchan",
    "dilated",
    "dilation",
    "bn",
    "bn_affine",
)


# Constructor names found in NAVER checkpoints and training commands, with their
# keywords.
ACCEPTED_CONSTRUCTORS: dict[str, tuple[str, ...]] = {
    "Quad_L2Net_ConfCFS": _NET_KWARGS,
    "Fast_Quad_L2Net_ConfCFS": (*_NET_KWARGS, "downsample_factor"),
}


class R2D2Net(nn.Module):
    """R2D2 ("Quad_L2Net_ConfCFS") or Fast-R2D2 ("Fast_Quad_L2Net_ConfCFS") network.

    Args:
        dim: descriptor dimension (128 in the published models).
        mchan: width multiplier; the convolutions have 8, 8, 16, 16, 32, 32, 32, 32 x
            ``mchan`` channels (4 by default, 6 for the ``*_N8_big`` models).
        relu22: ReLU after the two first 2x2 convolutions (off in the published models).
        fast: build Fast-R2D2 (one max-pool by ``downsample_factor`` after the third
            convolution, bilinear upsampling of the output back to the input size).
        downsample_factor: Fast-R2D2 pooling factor.
        inchan: input channels.
        dilated: replace strides by dilations (keeps full resolution).
        dilation: initial dilation.
        bn: batch normalisation after every convolution except the last.
        bn_affine: learnable batch-norm scale and shift (off in the published models).
        normalize_input: apply ImageNet mean/std inside :meth:`forward`, so callers pass
            images in [0, 1].

    Example:
        >>> net = R2D2Net(dim=16, mchan=1).eval()
        >>> out = net(torch.rand(1, 3, 64, 64))
        >>> out["descriptors"].shape, out["repeatability"].shape
        (torch.Size([1, 16, 64, 64]), torch.Size([1, 1, 64, 64]))
    """

    def __init__(
        self,
        dim: int = 128,
        mchan: int = 4,
        relu22: bool = False,
        fast: bool = False,
        downsample_factor: int = 2,
        inchan: int = 3,
        dilated: bool = True,
        dilation: int = 1,
        bn: bool = True,
        bn_affine: bool = False,
        normalize_input: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.fast = fast
        self.downsample_factor = downsample_factor
        self.dilated = dilated
        self.normalize_input = normalize_input
        self.ops = nn.ModuleList()
        self._channels = inchan
        self._dilation = dilation
        self._bn, self._bn_affine = bn, bn_affine

        self._add_conv(8 * mchan)
        self._add_conv(8 * mchan)
        if fast:
            self._add_conv(16 * mchan, pool=downsample_factor)
            self._add_conv(16 * mchan)
        else:
            self._add_conv(16 * mchan, stride=2)
            self._add_conv(16 * mchan)
        self._add_conv(32 * mchan, stride=2)
        self._add_conv(32 * mchan)
        # L2-Net's final 8x8 convolution, replaced by three 2x2 ones ("Quad").
        self._add_conv(32 * mchan, kernel=2, stride=2, relu=relu22)
        self._add_conv(32 * mchan, kernel=2, stride=2, relu=relu22)
        self._add_conv(dim, kernel=2, stride=2, bn=False, relu=False)

        self.clf = nn.Conv2d(dim, 2, kernel_size=1)
        self.sal = nn.Conv2d(dim, 1, kernel_size=1)
        self.register_buffer(
            "mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False
        )

    def _add_conv(
        self,
        out_channels: int,
        kernel: int = 3,
        stride: int = 1,
        bn: bool = True,
        relu: bool = True,
        pool: int = 1,
    ) -> None:
        """Append conv [+ BN] [+ ReLU] [+ max-pool] to ``ops`` as the reference does.

        With ``dilated``, a stride is not applied but multiplies the dilation of the
        *following* layers, so every layer sees the receptive field it would have had
        with strides while the output keeps the input resolution.
        """
        d = self._dilation
        padding = ((kernel - 1) * d) // 2
        if self.dilated:
            conv = nn.Conv2d(
                self._channels, out_channels, kernel, padding=padding, dilation=d
            )
            self._dilation *= stride
        else:
            conv = nn.Conv2d(
                self._channels,
                out_channels,
                kernel,
                padding=padding,
                dilation=d,
                stride=stride,
            )
        self.ops.append(conv)
        if bn and self._bn:
            self.ops.append(nn.BatchNorm2d(out_channels, affine=self._bn_affine))
        if relu:
            self.ops.append(nn.ReLU(inplace=True))
        if pool > 1:
            self.ops.append(nn.MaxPool2d(pool))
        self._channels = out_channels

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalise an RGB image in [0, 1] (identity if disabled)."""
        if not self.normalize_input:
            return image
        return (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Raw (not L2-normalised) features ``(B, dim, H, W)`` of a normalised image."""
        x = image
        for op in self.ops:
            x = op(x)
        if self.fast:
            # Upsample to the exact input size so odd sizes stay aligned (the reference
            # uses scale_factor, identical for even sizes).
            x = F.interpolate(
                x, size=image.shape[-2:], mode="bilinear", align_corners=False
            )
        return x

    @staticmethod
    def confidence_maps(
        features: torch.Tensor, clf: nn.Module, sal: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reliability and repeatability ``(B, 1, H, W)``, float32, from raw features.

        The squares and both heads run in float32 outside autocast, as the extractor
        computes them: a raw feature above 256 squares past fp16's range (65504) to inf.
        """
        with torch.autocast(features.device.type, enabled=False):
            squared = features.float().square()
            reliability = F.softmax(clf(squared), dim=1)[:, 1:2]
            # The reference uses softplus (not a softmax) for repeatability: keep it, the
            # published weights were trained that way.
            soft = F.softplus(sal(squared))
        return reliability, soft / (1 + soft)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense descriptors and confidence maps.

        Args:
            image: ``(B, 3, H, W)`` RGB in [0, 1] (ImageNet-normalised inside).

        Returns:
            dict with ``descriptors (B, dim, H, W)`` (L2-normalised),
            ``reliability (B, 1, H, W)`` and ``repeatability (B, 1, H, W)`` in [0, 1].
        """
        x = self.features(self.normalize(image))
        reliability, repeatability = self.confidence_maps(x, self.clf, self.sal)
        return {
            "descriptors": F.normalize(x, p=2, dim=1),
            "reliability": reliability,
            "repeatability": repeatability,
        }

    def forward_pair(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run both images of a pair batch in one pass (they share the crop size).

        Args:
            data: ``image0``, ``image1`` of shape ``(B, 3, H, W)`` in [0, 1].

        Returns:
            ``descriptors0/1 (B, dim, H, W)``, ``reliability0/1`` and
            ``repeatability0/1 (B, 1, H, W)``.
        """
        b = data["image0"].shape[0]
        out = self(torch.cat([data["image0"], data["image1"]], dim=0))
        pred = {}
        for key, value in out.items():
            pred[f"{key}0"], pred[f"{key}1"] = value[:b], value[b:]
        return pred

    def fused_trunk(self) -> nn.Sequential:
        """Inference copy of ``ops`` with every batch norm folded into its convolution.

        Only valid in eval mode (running statistics). The result computes the same raw
        features as :meth:`features` (without the Fast-R2D2 upsampling).
        """
        trunk = nn.Sequential(*copy.deepcopy(list(self.ops))).eval()
        fold_batch_norms(trunk)
        for p in trunk.parameters():
            p.requires_grad_(False)
        return trunk


def build_from_constructor(expression: str) -> R2D2Net:
    """Build a network from a NAVER constructor string (whitelisted, never evaluated).

    Example:
        >>> build_from_constructor("Quad_L2Net_ConfCFS(mchan=6)").dim
        128
    """
    name, kwargs = parse_constructor(expression, ACCEPTED_CONSTRUCTORS)
    return R2D2Net(fast=name.startswith("Fast_"), **kwargs)


def _strip_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Remove the ``module.`` prefix that DataParallel checkpoints carry."""
    out = {}
    for key, value in state_dict.items():
        out[key[len("module.") :] if key.startswith("module.") else key] = value
    return out


def load_r2d2_state(model: R2D2Net, state_dict: dict[str, Any], source: str) -> None:
    """Load a state dict into ``model`` strictly; one-line errors name ``source``.

    BatchNorm ``num_batches_tracked`` counters (absent from checkpoints written by old
    PyTorch versions) are filled in.
    """
    state_dict = _strip_prefix(dict(state_dict))
    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros_like(value)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                more = "..." if len(keys) > 4 else ""
                parts.append(f"{label} keys {keys[:4]}{more}")
        raise UserError(f"{source}: weights do not fit the network: {'; '.join(parts)}")
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor) or value.shape != expected[key].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else value
            raise UserError(
                f"{source}: {key} has shape {shape}, "
                f"expected {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state_dict)


def load_r2d2_checkpoint(path: str | os.PathLike) -> R2D2Net:
    """Load a NAVER R2D2 checkpoint (or a plain state dict) into an eval-mode network.

    Accepted layouts: ``{'net': "Quad_L2Net_ConfCFS()", 'state_dict': {...}}`` as NAVER
    publishes them (keys may carry ``module.``); ``{'state_dict': ...}`` or ``{'model':
    ...}`` without ``net`` (default R2D2); a bare state dict.

    Args:
        path: checkpoint file.

    Returns:
        :class:`R2D2Net` in eval mode, on CPU.

    Raises:
        UserError: missing/unreadable file, constructor not on the whitelist, weights
            that do not fit.
    """
    path = os.fspath(path)
    return r2d2_net_from_published(load_checkpoint(path), path)


def r2d2_net_from_published(checkpoint: Any, path: str) -> R2D2Net:
    """:func:`load_r2d2_checkpoint` of an already loaded object (``path`` names it)."""
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path}: expected a dict checkpoint, got {type(checkpoint)}")
    if "net" in checkpoint:
        try:
            model = build_from_constructor(checkpoint["net"])
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
    else:
        model = R2D2Net()
    state = checkpoint.get("state_dict", checkpoint.get("model", checkpoint))
    if not isinstance(state, dict):
        raise UserError(f"{path}: 'state_dict' is not a dict of tensors")
    load_r2d2_state(model, state, path)
    return model.eval()
