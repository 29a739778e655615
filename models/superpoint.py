"""SuperPoint and MagicPoint: a VGG-style encoder with a detector and a descriptor head.

Layer names and shapes follow the MagicLeap release (``conv1a`` ... ``conv4b``, ``convPa``,
``convPb``, ``convDa``, ``convDb``) so public weights map one to one; widths are configurable so
tests can build tiny networks. MagicPoint is the same network without the descriptor head,
trained with the detector loss: a 65-way softmax per 8x8 cell whose class 64 is the "no keypoint"
dustbin (DeTone et al., 2018).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from losses.detector import detector_loss, detector_metrics
from models.base_model import BaseModel
from utils.geometry import pixel_to_grid
from utils.keypoints import extract_keypoints

CELL = 8


class ConvBlock(nn.Sequential):
    """Conv (+ BatchNorm, as in the re-trained BN variant) + ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, batch_norm: bool, relu=True):
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out, eps=1e-3))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SuperPoint(BaseModel):
    """SuperPoint detector + descriptor.

    Config keys (``default_conf``): ``channels`` widths of the four encoder stages,
    ``head_channels`` (convPa/convDa), ``descriptor_dim``, ``descriptor_head``,
    ``batch_norm``, and the post-processing ``detection_threshold``, ``nms_radius``,
    ``remove_borders``, ``top_k`` used by :meth:`detect`.
    """

    default_conf = {
        "name": "superpoint",
        "input_channels": 1,
        "channels": [64, 64, 128, 128],
        "head_channels": 256,
        "descriptor_dim": 256,
        "descriptor_head": True,
        "batch_norm": False,
        "detection_threshold": 0.015,
        "nms_radius": 4,
        "remove_borders": 4,
        "top_k": -1,
    }

    def _init(self, conf: dict[str, Any]) -> None:
        c1, c2, c3, c4 = conf["channels"]
        bn, head = conf["batch_norm"], conf["head_channels"]
        widths = {
            "conv1a": (conf["input_channels"], c1),
            "conv1b": (c1, c1),
            "conv2a": (c1, c2),
            "conv2b": (c2, c2),
            "conv3a": (c2, c3),
            "conv3b": (c3, c3),
            "conv4a": (c3, c4),
            "conv4b": (c4, c4),
        }
        for name, (c_in, c_out) in widths.items():
            setattr(self, name, ConvBlock(c_in, c_out, 3, bn))
        self.pool = nn.MaxPool2d(2, 2)
        self.convPa = ConvBlock(c4, head, 3, bn)
        self.convPb = ConvBlock(head, CELL * CELL + 1, 1, bn, relu=False)
        if conf["descriptor_head"]:
            self.convDa = ConvBlock(c4, head, 3, bn)
            self.convDb = ConvBlock(head, conf["descriptor_dim"], 1, bn, relu=False)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` image in [0, 1] to ``(B, C4, H/8, W/8)`` features."""
        x = self.conv1b(self.conv1a(image))
        x = self.conv2b(self.conv2a(self.pool(x)))
        x = self.conv3b(self.conv3a(self.pool(x)))
        return self.conv4b(self.conv4a(self.pool(x)))

    def _forward(self, data: dict[str, Any]) -> dict[str, Any]:
        """Dense predictions.

        Args:
            data: ``image`` ``(B, 1, H, W)`` float in [0, 1], H and W multiples of 8.

        Returns:
            ``logits`` ``(B, 65, H/8, W/8)``; ``heatmap`` ``(B, H, W)`` keypoint probability
            (softmax, dustbin dropped, depth-to-space); with the descriptor head,
            ``dense_descriptors`` ``(B, D, H/8, W/8)`` L2-normalised.
        """
        image = data["image"]
        h, w = image.shape[-2:]
        if h % CELL or w % CELL:
            raise ValueError(f"image size {h}x{w} must be a multiple of {CELL}")
        features = self.encode(image)
        logits = self.convPb(self.convPa(features))
        pred = {"logits": logits, "heatmap": logits_to_heatmap(logits)}
        if self.conf["descriptor_head"]:
            desc = self.convDb(self.convDa(features))
            pred["dense_descriptors"] = F.normalize(desc.float(), p=2, dim=1)
        return pred

    @torch.no_grad()
    def detect(
        self, pred: dict[str, Any], **overrides: Any
    ) -> dict[str, list[torch.Tensor]]:
        """Keypoints (and descriptors) from dense predictions, per image.

        Args:
            pred: output of ``forward``.
            overrides: any of ``detection_threshold``, ``nms_radius``, ``remove_borders``,
                ``top_k`` to replace the configured value.

        Returns:
            ``keypoints`` list of ``(N_i, 2)`` (x, y), ``keypoint_scores`` list of ``(N_i,)``
            and, with the descriptor head, ``descriptors`` list of ``(N_i, D)``.
        """
        conf = {**self.conf, **overrides}
        keypoints, scores = extract_keypoints(
            pred["heatmap"],
            threshold=conf["detection_threshold"],
            nms_radius=conf["nms_radius"],
            border=conf["remove_borders"],
            top_k=conf["top_k"],
        )
        out = {"keypoints": keypoints, "keypoint_scores": scores}
        if "dense_descriptors" in pred:
            out["descriptors"] = [
                sample_descriptors(k[None], d[None])[0]
                for k, d in zip(keypoints, pred["dense_descriptors"])
            ]
        return out

    def loss(self, pred: dict[str, Any], data: dict[str, Any]):
        """Detector loss (MagicPoint). Joint training adds the descriptor loss."""
        det = detector_loss(
            pred["logits"], data["keypoint_map"], data.get("valid_mask")
        )
        return {"total": det, "detector": det}, {}

    @torch.no_grad()
    def metrics(
        self, pred: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """Pixel-exact precision and recall of detections against ``keypoint_map``."""
        kept = self.detect(pred, top_k=-1)["keypoints"]
        return detector_metrics(kept, data["keypoint_map"], data.get("valid_mask"))


class MagicPoint(SuperPoint):
    """SuperPoint without the descriptor head (trained on Synthetic Shapes)."""

    default_conf = {"name": "magicpoint", "descriptor_head": False}


def logits_to_heatmap(logits: torch.Tensor) -> torch.Tensor:
    """``(B, 65, Hc, Wc)`` cell logits to a ``(B, 8Hc, 8Wc)`` probability map.

    Channel ``c`` of a cell is the pixel at row ``c // 8``, column ``c % 8`` inside it, which
    is exactly the ordering of ``pixel_shuffle``.
    """
    prob = torch.softmax(logits.float(), dim=1)[:, :-1]
    return F.pixel_shuffle(prob, CELL)[:, 0]


def sample_descriptors(keypoints: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample L2-normalised descriptors at keypoints.

    The descriptor of cell ``i`` sits at the cell centre ``8 i + 3.5`` (pixel-centre
    convention), so the full-resolution pixel grid maps onto the coarse map with
    ``align_corners=False``.

    Args:
        keypoints: ``(B, N, 2)`` (x, y) pixels of the full-resolution image.
        dense: ``(B, D, Hc, Wc)``.

    Returns:
        ``(B, N, D)``.
    """
    b, d, hc, wc = dense.shape
    grid = pixel_to_grid(keypoints.float(), (hc * CELL, wc * CELL))[:, None]
    desc = F.grid_sample(
        dense.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return F.normalize(desc[:, :, 0].transpose(1, 2), p=2, dim=-1)
