"""SuperPoint and MagicPoint: a VGG-style encoder with a detector and a descriptor head.

Layer names and shapes follow the MagicLeap release (``conv1a`` ... ``conv4b``, ``convPa``,
``convPb``, ``convDa``, ``convDb``) so public weights map one to one; widths are configurable so
tests can build tiny networks. MagicPoint is the same network without the descriptor head,
trained with the detector loss: a 65-way softmax per 8x8 cell whose class 64 is the "no keypoint"
dustbin (DeTone et al., 2018).

Joint training (SuperPoint) feeds image pairs (``image0``, ``image1``, ``H_0to1``): both views
run through the network in one batch, and the loss is the detector loss on both views plus
``lambda_loss`` times the dense or sparse descriptor loss of ``losses.descriptor``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geometry.homography import pixel_to_grid
from geometry.keypoints import extract_keypoints
from losses.descriptor import (
    dense_descriptor_loss,
    matching_accuracy,
    sparse_descriptor_loss,
)
from losses.detector import detector_loss, detector_metrics
from models.base_model import BaseModel
from utils.errors import UserError

CELL = 8


class ConvBlock(nn.Sequential):
    """Conv, optional BatchNorm and ReLU, in the order of the BN variant being reproduced.

    ``order="bn_relu"`` (default, keys ``<name>.1.*`` for the BN) is conv-BN-ReLU, as
    pytorch-superpoint (eps 1e-5 there); ``"relu_bn"`` is conv-ReLU-BN, as rpautrat's
    TensorFlow reference and its re-trained ``superpoint_v6_from_tf`` (eps 1e-3). Without
    BatchNorm both are conv-ReLU and the layer keys are ``<name>.0.weight/bias``.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        batch_norm: bool,
        relu: bool = True,
        order: str = "bn_relu",
        eps: float = 1e-3,
    ):
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)]
        activation = [nn.ReLU(inplace=True)] if relu else []
        norm = [nn.BatchNorm2d(c_out, eps=eps)] if batch_norm else []
        if order not in ("relu_bn", "bn_relu"):
            raise UserError(
                f"config key 'model.batch_norm_order': '{order}' is not "
                "one of relu_bn, bn_relu"
            )
        layers += activation + norm if order == "relu_bn" else norm + activation
        super().__init__(*layers)


class SuperPoint(BaseModel):
    """SuperPoint detector + descriptor.

    Config keys (``default_conf``): ``channels`` widths of the four encoder stages,
    ``head_channels`` (convPa/convDa), ``descriptor_dim``, ``descriptor_head``,
    ``batch_norm`` (with ``batch_norm_order`` and ``batch_norm_eps``, see
    :class:`ConvBlock`), and the post-processing ``detection_threshold``, ``nms_radius``,
    ``remove_borders``, ``top_k`` and ``descriptor_sampling`` used by :meth:`detect`:
    ``cell_center`` samples the coarse map with each cell's descriptor at its centre
    (``8 i + 3.5``); ``magicleap`` reproduces the MagicLeap frontend (coarse coordinate
    ``x (Wc - 1) / W`` with corner alignment, threshold inclusive).
    """

    default_conf = {
        "name": "superpoint",
        "input_channels": 1,
        "channels": [64, 64, 128, 128],
        "head_channels": 256,
        "descriptor_dim": 256,
        "descriptor_head": True,
        "batch_norm": False,
        "batch_norm_order": "bn_relu",
        "batch_norm_eps": 1e-3,
        "detection_threshold": 0.015,
        "nms_radius": 4,
        "remove_borders": 4,
        "top_k": -1,
        "descriptor_sampling": "cell_center",
    }
    # Joint-training loss (pairs). Defaults: the paper's dense hinge loss (lambda_d = 250,
    # margins 1 / 0.2) with rpautrat/SuperPoint's 7.5 px correspondence radius (the paper
    # says 8); configs/superpoint_coco.yaml uses rpautrat's variant instead. The sparse
    # loss's negative term averages over margin violators as pytorch-superpoint does
    # (sparse_negative_average: all averages over every sampled negative).
    default_loss_conf = {
        "descriptor_loss": "dense",
        "lambda_loss": 1.0,
        "lambda_d": 250.0,
        "positive_margin": 1.0,
        "negative_margin": 0.2,
        "positive_distance": 7.5,
        "normalize_similarity": False,
        "dense_chunk_size": 4,
        "sparse_num_positives": 1000,
        "sparse_num_negatives": 100,
        "sparse_positive_weight": 1.0,
        "sparse_negative_distance": 16.0,
        "sparse_negative_average": "violators",
    }

    def _init(self, conf: dict[str, Any]) -> None:
        c1, c2, c3, c4 = conf["channels"]
        head = conf["head_channels"]
        bn = {
            "batch_norm": conf["batch_norm"],
            "order": conf["batch_norm_order"],
            "eps": conf["batch_norm_eps"],
        }
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
            setattr(self, name, ConvBlock(c_in, c_out, 3, **bn))
        self.pool = nn.MaxPool2d(2, 2)
        self.convPa = ConvBlock(c4, head, 3, **bn)
        self.convPb = ConvBlock(head, CELL * CELL + 1, 1, relu=False, **bn)
        if conf["descriptor_head"]:
            self.convDa = ConvBlock(c4, head, 3, **bn)
            self.convDb = ConvBlock(head, conf["descriptor_dim"], 1, relu=False, **bn)
        if conf["descriptor_sampling"] not in ("cell_center", "magicleap"):
            raise UserError(
                "config key 'model.descriptor_sampling': "
                f"'{conf['descriptor_sampling']}' is not one of cell_center, magicleap"
            )

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` image in [0, 1] to ``(B, C4, H/8, W/8)`` features."""
        x = self.conv1b(self.conv1a(image))
        x = self.conv2b(self.conv2a(self.pool(x)))
        x = self.conv3b(self.conv3a(self.pool(x)))
        return self.conv4b(self.conv4a(self.pool(x)))

    def _forward(self, data: dict[str, Any]) -> dict[str, Any]:
        """Dense predictions.

        Args:
            data: ``image`` ``(B, 1, H, W)`` float in [0, 1], H and W multiples of 8; or a
                pair ``image0`` and ``image1`` (both ``(B, 1, H, W)``).

        Returns:
            ``logits`` ``(B, 65, H/8, W/8)``; ``heatmap`` ``(B, H, W)`` keypoint probability
            (softmax, dustbin dropped, depth-to-space); with the descriptor head,
            ``dense_descriptors`` ``(B, D, H/8, W/8)`` L2-normalised. For a pair every key
            comes twice, suffixed ``0`` and ``1`` (both views run as one batch).
        """
        if "image" not in data and "image0" in data:
            both = self._forward_image(torch.cat([data["image0"], data["image1"]]))
            b = data["image0"].shape[0]
            pred = {f"{k}0": v[:b] for k, v in both.items()}
            pred.update({f"{k}1": v[b:] for k, v in both.items()})
            return pred
        return self._forward_image(data["image"])

    def _forward_image(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense predictions of one batch of images (see :meth:`_forward`)."""
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

    def may_leave_parameters_unused(self, sample: dict[str, Any]) -> bool:
        """Whether training on samples like ``sample`` leaves parameters without gradient:
        the descriptor head on single images, since only pairs have a descriptor loss."""
        return bool(self.conf["descriptor_head"]) and "image0" not in sample

    @torch.no_grad()
    def detect(
        self, pred: dict[str, Any], **overrides: Any
    ) -> dict[str, list[torch.Tensor]]:
        """Keypoints (and descriptors) from dense predictions, per image.

        Args:
            pred: output of ``forward``.
            overrides: any of ``detection_threshold``, ``nms_radius``, ``remove_borders``,
                ``top_k``, ``descriptor_sampling`` to replace the configured value.

        Returns:
            ``keypoints`` list of ``(N_i, 2)`` (x, y), ``keypoint_scores`` list of ``(N_i,)``
            and, with the descriptor head, ``descriptors`` list of ``(N_i, D)``.
        """
        return detect(pred, {**self.conf, **overrides})

    def loss(self, pred: dict[str, Any], data: dict[str, Any]):
        """Detector loss (MagicPoint); for pairs, both detector losses + descriptor loss.

        Args:
            pred: output of ``forward``.
            data: single images with ``keypoint_map`` ``(B, H, W)`` and optional
                ``valid_mask``; or pairs with ``keypoint_map0/1``, ``valid_mask0/1`` and
                ``H_0to1`` ``(B, 3, 3)``.

        Returns:
            ``(losses, metrics)``: ``losses`` holds ``total``, ``detector`` and, for pairs,
            ``detector0``, ``detector1``, ``descriptor``.
        """
        if "logits" in pred:
            det = detector_loss(
                pred["logits"], data["keypoint_map"], data.get("valid_mask")
            )
            return {"total": det, "detector": det}, {}
        det0 = detector_loss(
            pred["logits0"], data["keypoint_map0"], data.get("valid_mask0")
        )
        det1 = detector_loss(
            pred["logits1"], data["keypoint_map1"], data.get("valid_mask1")
        )
        losses = {"detector0": det0, "detector1": det1, "detector": det0 + det1}
        total = det0 + det1
        if "dense_descriptors0" in pred:
            desc = self.descriptor_loss(pred, data)
            losses["descriptor"] = desc
            total = total + self.loss_conf["lambda_loss"] * desc
        losses["total"] = total
        return losses, {}

    def descriptor_loss(
        self, pred: dict[str, Any], data: dict[str, Any]
    ) -> torch.Tensor:
        """The configured (``dense`` | ``sparse``) descriptor loss of a pair batch."""
        c = self.loss_conf
        args = (
            pred["dense_descriptors0"],
            pred["dense_descriptors1"],
            data["H_0to1"],
            data.get("valid_mask1"),
        )
        if c["descriptor_loss"] == "dense":
            return dense_descriptor_loss(
                *args,
                lambda_d=c["lambda_d"],
                positive_margin=c["positive_margin"],
                negative_margin=c["negative_margin"],
                positive_distance=c["positive_distance"],
                normalize_similarity=c["normalize_similarity"],
                chunk_size=c["dense_chunk_size"],
            )
        if c["descriptor_loss"] == "sparse":
            return sparse_descriptor_loss(
                *args,
                num_positives=c["sparse_num_positives"],
                num_negatives=c["sparse_num_negatives"],
                positive_weight=c["sparse_positive_weight"],
                positive_margin=c["positive_margin"],
                negative_margin=c["negative_margin"],
                negative_distance=c["sparse_negative_distance"],
                negative_average=c["sparse_negative_average"],
            )
        raise UserError(
            f"config key 'loss.descriptor_loss': '{c['descriptor_loss']}' is not one "
            "of dense, sparse"
        )

    @torch.no_grad()
    def metrics(
        self, pred: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """Detector precision/recall against the labels; for pairs, on both views, plus
        the nearest-neighbour matching accuracy of the cell descriptors
        (``matching_accuracy``)."""
        if "logits" in pred:
            kept = self.detect(pred, top_k=-1)["keypoints"]
            return detector_metrics(kept, data["keypoint_map"], data.get("valid_mask"))
        out: dict[str, torch.Tensor] = {}
        for v in "01":
            view = {"heatmap": pred[f"heatmap{v}"]}
            kept = self.detect(view, top_k=-1)["keypoints"]
            m = detector_metrics(
                kept, data[f"keypoint_map{v}"], data.get(f"valid_mask{v}")
            )
            for k, value in m.items():
                out[k] = out.get(k, 0.0) + value / 2
        if "dense_descriptors0" in pred:
            out["matching_accuracy"] = matching_accuracy(
                pred["dense_descriptors0"],
                pred["dense_descriptors1"],
                data["H_0to1"],
                data.get("valid_mask1"),
                self.loss_conf["positive_distance"],
            )
        return out


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


def detect(pred: dict[str, Any], conf: dict[str, Any]) -> dict[str, list[torch.Tensor]]:
    """Keypoints (and descriptors) of dense predictions under the post-processing ``conf``.

    Args:
        pred: ``heatmap`` ``(B, H, W)`` and optionally ``dense_descriptors``
            ``(B, D, H/8, W/8)`` (the output of ``SuperPoint.forward``).
        conf: ``detection_threshold``, ``nms_radius``, ``remove_borders``, ``top_k`` and
            ``descriptor_sampling`` (a model config, see :class:`SuperPoint`).

    Returns:
        ``keypoints`` list of ``(N_i, 2)`` (x, y), ``keypoint_scores`` list of ``(N_i,)``
        and, with dense descriptors, ``descriptors`` list of ``(N_i, D)``.
    """
    magicleap = conf["descriptor_sampling"] == "magicleap"
    threshold = conf["detection_threshold"]
    if magicleap:
        # The MagicLeap frontend keeps scores >= threshold; extract_keypoints keeps >.
        threshold = float(torch.nextafter(torch.tensor(threshold), torch.tensor(0.0)))
    keypoints, scores = extract_keypoints(
        pred["heatmap"],
        threshold=threshold,
        nms_radius=conf["nms_radius"],
        border=conf["remove_borders"],
        top_k=conf["top_k"],
    )
    out = {"keypoints": keypoints, "keypoint_scores": scores}
    if "dense_descriptors" in pred:
        sample = sample_descriptors_magicleap if magicleap else sample_descriptors
        out["descriptors"] = [
            sample(k[None], d[None])[0]
            for k, d in zip(keypoints, pred["dense_descriptors"])
        ]
    return out


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


def sample_descriptors_magicleap(
    keypoints: torch.Tensor, dense: torch.Tensor
) -> torch.Tensor:
    """Descriptors sampled as the MagicLeap ``SuperPointFrontend`` does.

    The frontend maps a full-resolution pixel ``x`` to the grid value ``x / (W / 2) - 1``
    with corner-aligned sampling, i.e. coarse coordinate ``x (Wc - 1) / W`` (a slight
    shift from the cell centres), then L2-normalises.

    Args:
        keypoints: ``(B, N, 2)`` (x, y) pixels; dense: ``(B, D, Hc, Wc)``.

    Returns:
        ``(B, N, D)``.
    """
    _, _, hc, wc = dense.shape
    size = keypoints.new_tensor([wc * CELL, hc * CELL]).float()
    grid = (keypoints.float() / (size / 2) - 1)[:, None]
    desc = F.grid_sample(dense.float(), grid, mode="bilinear", align_corners=True)
    return F.normalize(desc[:, :, 0].transpose(1, 2), p=2, dim=-1)
