"""Feature-inversion model (coarse stage): sparse feature map in, image out.

``model.name: inversion`` wraps one of the networks of :func:`build_network` (``unet``,
``unetpp``, ``invnet``) in the repository's model contract:

* ``forward(data)`` reads ``input (B, C_in, H, W)``, pads it with zeros on the right and
  bottom to a multiple of the network's stride, and returns ``image (B, C_out, H, W)`` in
  [0, 1] (a sigmoid over the network's logits, cropped back);
* ``loss(pred, data)`` compares ``pred["image"]`` with ``data["image"]`` by
  ``loss.l1`` x L1 + ``loss.perceptual`` x VGG16 perceptual + ``loss.ssim`` x (1 - SSIM);
* ``metrics(pred, data)`` gives the batch means of MAE, PSNR and SSIM (validation).

The VGG16 of the perceptual term is read by :meth:`InversionModel.load_loss_weights` from
``loss.vgg_weights`` (never by the constructor); with ``loss.perceptual: 0`` no VGG16 is
needed. ``model.in_channels`` is the sparse map's channel count: the descriptor size plus the
optional colour, depth and mask channels (the training script fills it from the data).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from losses.image_quality import mae, psnr, ssim
from losses.inversion import PerceptualLoss, ReconstructionLoss
from models.base_model import BaseModel
from models.invnet import InvNet
from models.unet import NestedUNet, UNet
from models.vgg import LAYER_INDEX, VGG16, load_vgg16_weights
from utils.errors import UserError

ARCHITECTURES = ("unet", "unetpp", "invnet")

NETWORK_DEFAULTS: dict[str, Any] = {
    # unet | unetpp (nested U-Net) | invnet (InvSfM's encoder-decoder)
    "arch": "unet",
    # Channels of the sparse input map; 0 = set from the data by the training script.
    "in_channels": 0,
    # 1 (grey) or 3 (RGB) output.
    "out_channels": 3,
    # unet/unetpp: channels per level, finest first; invnet: its six encoder widths.
    "widths": [32, 64, 128, 256],
    # invnet only: dropout after its first `dropout_layers` decoder layers.
    "dropout": 0.5,
    "dropout_layers": 3,
}

RECONSTRUCTION_LOSS_DEFAULTS: dict[str, Any] = {
    "l1": 1.0,
    "perceptual": 5.0,
    "ssim": 0.0,
    "perceptual_layers": ["relu1_2", "relu2_2", "relu3_3"],
    "vgg_weights": "pretrained/vgg16-397923af.pth",
}


def check_network_conf(conf: dict[str, Any], prefix: str = "model.") -> None:
    """One-line errors for an unusable network config (``prefix`` names the section)."""
    if conf["arch"] not in ARCHITECTURES:
        raise UserError(
            f"config key '{prefix}arch': {conf['arch']!r} is not one of {ARCHITECTURES}"
        )
    if conf["in_channels"] <= 0:
        raise UserError(
            f"config key '{prefix}in_channels' must be > 0 (set it, or let the training "
            "script take it from the data)"
        )
    if conf["out_channels"] not in (1, 3):
        raise UserError(
            f"config key '{prefix}out_channels' must be 1 (grey) or 3 (RGB), "
            f"got {conf['out_channels']}"
        )
    widths = conf["widths"]
    if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
        raise UserError(
            f"config key '{prefix}widths' must be positive ints, got {widths}"
        )
    if conf["arch"] == "invnet" and len(widths) != 6:
        raise UserError(
            f"config key '{prefix}widths': invnet takes 6 encoder widths, got {widths}"
        )
    if conf["arch"] != "invnet" and len(widths) < 2:
        raise UserError(
            f"config key '{prefix}widths': {conf['arch']} needs at least 2 levels"
        )


def build_network(conf: dict[str, Any], in_channels: int | None = None) -> nn.Module:
    """The network of ``conf`` (keys of :data:`NETWORK_DEFAULTS`), randomly initialised."""
    channels = conf["in_channels"] if in_channels is None else in_channels
    if conf["arch"] == "unet":
        return UNet(channels, conf["out_channels"], conf["widths"])
    if conf["arch"] == "unetpp":
        return NestedUNet(channels, conf["out_channels"], conf["widths"])
    return InvNet(
        channels,
        conf["out_channels"],
        conf["widths"],
        conf["dropout"],
        conf["dropout_layers"],
    )


def output_layer(network: nn.Module) -> nn.Conv2d:
    """The convolution producing a network's image logits (``head``, or InvNet's last)."""
    if isinstance(network, InvNet):
        return network.decoder[-1]
    return network.head


def run_padded(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``network(x)`` on ``x`` zero-padded to a multiple of ``network.stride``, cropped back.

    Zero is the sparse map's "no feature" value, so padding adds empty area, not content.

    Shape:
        ``(B, C, H, W) -> (B, C_out, H, W)``.
    """
    height, width = x.shape[-2:]
    stride = network.stride
    pad_h, pad_w = (-height) % stride, (-width) % stride
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return network(x)[..., :height, :width]


def check_loss_conf(conf: dict[str, Any]) -> None:
    """One-line errors for unusable reconstruction-loss weights or layers."""
    for key in ("l1", "perceptual", "ssim"):
        if conf[key] < 0:
            raise UserError(f"config key 'loss.{key}' must be >= 0, got {conf[key]}")
    unknown = [name for name in conf["perceptual_layers"] if name not in LAYER_INDEX]
    if unknown:
        raise UserError(
            f"config key 'loss.perceptual_layers': unknown layer(s) {unknown}; "
            f"valid: {list(LAYER_INDEX)}"
        )


def load_perceptual(conf: dict[str, Any]) -> PerceptualLoss | None:
    """The perceptual loss with VGG16 read from ``conf['vgg_weights']``; None at weight 0."""
    if conf["perceptual"] <= 0:
        return None
    vgg = VGG16()
    load_vgg16_weights(vgg, conf["vgg_weights"])
    return PerceptualLoss(vgg, conf["perceptual_layers"])


def image_metrics(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    """Batch means of MAE, PSNR and SSIM (scikit-image's definition), as float tensors.

    Shape:
        prediction, target: ``(B, C, H, W)`` in [0, 1].
    """
    prediction, target = prediction.float().clamp(0, 1), target.float()
    out = {
        "mae": mae(prediction, target).mean(),
        "psnr": psnr(prediction, target).mean(),
    }
    if min(prediction.shape[-2:]) >= 7:
        out["ssim"] = ssim(prediction, target).mean()
    return out


class InversionModel(BaseModel):
    """Coarse feature-inversion model (see module docstring).

    Data keys: ``input (B, C_in, H, W)`` sparse map, ``image (B, C_out, H, W)`` target in
    [0, 1]. Prediction keys: ``image (B, C_out, H, W)`` in [0, 1].
    """

    default_conf: dict[str, Any] = {"name": "inversion", **NETWORK_DEFAULTS}
    default_loss_conf: dict[str, Any] = dict(RECONSTRUCTION_LOSS_DEFAULTS)

    def _init(self, conf: dict[str, Any]) -> None:
        check_network_conf(conf)
        check_loss_conf(self.loss_conf)
        self.network = build_network(conf)
        self.criterion: ReconstructionLoss | None = None
        if self.loss_conf["perceptual"] <= 0:
            self.criterion = self._criterion(None)

    def _criterion(self, perceptual: PerceptualLoss | None) -> ReconstructionLoss:
        return ReconstructionLoss(
            self.loss_conf["l1"],
            self.loss_conf["perceptual"],
            self.loss_conf["ssim"],
            perceptual,
        )

    def load_loss_weights(self) -> None:
        """Read VGG16 for the perceptual term (no-op at weight 0); UserError if missing."""
        if self.criterion is None:
            self.criterion = self._criterion(load_perceptual(self.loss_conf))

    def _forward(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = run_padded(self.network, data["input"])
        return {"image": torch.sigmoid(logits)}

    def loss(
        self, pred: dict[str, Any], data: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if self.criterion is None:
            raise RuntimeError(
                "InversionModel.load_loss_weights() must run before loss() when "
                "loss.perceptual > 0"
            )
        return self.criterion(pred["image"], data["image"]), {}

    @torch.no_grad()
    def metrics(self, pred: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return image_metrics(pred["image"], data["image"])


def inversion_panels(
    batch: dict[str, Any], pred: dict[str, Any], count: int = 4
) -> dict[str, torch.Tensor]:
    """TensorBoard grid: rows input sparsity map / prediction / target, ``count`` columns.

    The sparsity map shows the target's colour at every keypoint pixel (dilated to 3 x 3 so
    single pixels stay visible at TensorBoard's zoom), black elsewhere. A refiner's
    prediction adds its coarse image as a row before the refined one.

    Returns:
        ``{"inversion": (3, R H, count W)}`` in [0, 1], ``R`` = 3 or 4 rows.
    """
    target = batch["image"][:count].detach().float()
    mask = batch["keypoint_mask"][:count].detach().float()
    sparse = F.max_pool2d(target * mask, 3, 1, 1)
    rows = [sparse]
    for key in ("coarse", "image"):
        if key in pred:
            rows.append(pred[key][:count].detach().float().clamp(0, 1))
    rows.append(target)
    rows = [r.expand(-1, 3, -1, -1) if r.shape[1] == 1 else r for r in rows]
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)
    return {"inversion": grid.cpu()}


def to_uint8_image(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] to ``(H, W, C)`` uint8 (C = 1 gives ``(H, W)``)."""
    array = (image.detach().float().clamp(0, 1) * 255.0).round().byte().cpu().numpy()
    array = array.transpose(1, 2, 0)
    return array[..., 0] if array.shape[2] == 1 else array
