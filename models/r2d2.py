"""R2D2 and Fast-R2D2 networks, official checkpoint loading and multi-scale extraction.

R2D2 (Revaud et al., NeurIPS 2019) is an L2-Net-style fully convolutional network that
keeps the full image resolution by replacing strides with dilations. Its 128-D output is
L2-normalised into dense descriptors, and two 1x1 convolutions applied to the *squared*
features give a reliability map (2-way softmax, second channel) and a repeatability map
(softplus ``s`` mapped by ``s / (1 + s)``). Fast-R2D2 max-pools once after the third
convolution and upsamples the output back, which cuts the cost about fourfold.

Layer order and parameter names follow NAVER's ``nets/patchnet.py`` exactly
(``ops.<i>.weight``, ``ops.<i>.running_mean``, ``clf.weight``, ``sal.weight``...), so
the published checkpoints (``r2d2_WAF_N16.pt``, ``r2d2_WASF_N16.pt``,
``r2d2_WASF_N8_big.pt``, ``faster2d2_WASF_N16.pt``, ...) load with
:func:`load_r2d2_checkpoint`; their constructor string is parsed by a whitelist
(:mod:`utils.constructor_parser`), never evaluated.

:class:`R2D2` wraps the network and :class:`losses.r2d2.R2D2Loss` in the model contract
of the shared training engine (``model.name: r2d2``, ``train_r2d2.py``), and
:func:`load_r2d2_extractor` turns its checkpoints, or NAVER's files, into an extractor
(``models.load_extractor`` dispatches there).

:class:`R2D2Extractor` implements the extractor contract shared with SuperPoint and the
multi-scale protocol of the reference ``extract.py`` (scale factor 2^0.25, image size
kept within [256, 1024], 3x3 max-pool NMS on repeatability, reliability and
repeatability thresholds 0.7, score = reliability x repeatability, top 5000), with
batch-norm folded into the convolutions, channels-last memory and the ``precision``
setting of every network (``engine.devices``): bf16/fp16 autocast of the trunk or a static
int8 trunk on CPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.devices import autocast, inference_precision
from losses.r2d2 import R2D2Loss
from models.base_model import BaseModel
from models.r2d2_net import (
    R2D2Net,
    load_r2d2_state,
    r2d2_net_from_published,
)
from utils.config import merge_config
from utils.errors import UserError

FP32_FIRST_CONVS = 2
"""Under bf16/fp16 autocast, the first convolutions (on raw pixels, about 2% of the
FLOPs) run before autocast, in float32: reduced-precision rounding of the pixel
intensities costs the most keypoint agreement with float32
(``benchmarks/bench_r2d2_extract.py``)."""


class R2D2Extractor(nn.Module):
    """Multi-scale R2D2 keypoint extractor (the contract shared with SuperPoint).

    ``extractor(image)`` with ``image (1, 3, H, W)`` RGB in [0, 1] returns
    ``keypoints (N, 2)`` (x, y) pixels of the input image (pixel-centre convention of
    :mod:`geometry.homography`), ``scales (N,)`` (patch diameter ``32 / s`` as in the
    reference), ``keypoint_scores (N,)`` (reliability x repeatability, sorted
    decreasing) and ``descriptors (N, dim)`` (L2-normalised).

    Conf keys (defaults are NAVER's ``extract.py``): ``top_k`` (5000; <= 0 keeps all),
    ``reliability_thr`` and ``repeatability_thr`` (0.7), ``min_size`` / ``max_size``
    (256 / 1024 px, longest side), ``scale_f`` (2^0.25), ``min_scale`` / ``max_scale``
    (0 / 1), ``precision`` (``fp32``; ``auto``, ``bf16``, ``fp16``: autocast of the trunk
    (its first :data:`FP32_FIRST_CONVS` convolutions stay float32); ``int8``: static
    int8 trunk on CPU, see ``models.quantize``; resolved for ``device`` by
    :func:`engine.devices.inference_precision`, where ``auto`` never picks int8 for
    R2D2), ``channels_last`` (True), ``weights`` (checkpoint path or None = random
    initialisation), ``model`` (kwargs of :class:`R2D2Net` when no weights), ``tag``.

    Args:
        conf: the keys above.
        net: a network to use instead of ``conf["weights"]``.
        device: where it will run, for ``precision``.

    Example:
        >>> ex = R2D2Extractor({"model": {"dim": 16, "mchan": 1}, "min_size": 32})
        >>> out = ex(torch.rand(1, 3, 64, 80))
        >>> sorted(out)
        ['descriptors', 'keypoint_scores', 'keypoints', 'scales']
    """

    default_conf: dict[str, Any] = {
        "top_k": 5000,
        "reliability_thr": 0.7,
        "repeatability_thr": 0.7,
        "min_size": 256,
        "max_size": 1024,
        "scale_f": 2**0.25,
        "min_scale": 0.0,
        "max_scale": 1.0,
        "precision": "fp32",
        "channels_last": True,
        "weights": None,
        "model": {},
        "tag": None,
    }
    grayscale = False

    def __init__(
        self,
        conf: dict[str, Any] | None = None,
        net: R2D2Net | None = None,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        self.conf = merge_config(self.default_conf, conf or {})
        self.precision = inference_precision(
            self.conf["precision"],
            torch.device(device),
            int8="explicit",
            network="R2D2",
        )
        if self.conf["scale_f"] <= 1:
            raise UserError(f"scale_f={self.conf['scale_f']}: expected a value > 1")
        if net is None:
            if self.conf["weights"]:
                net = load_r2d2_net(self.conf["weights"])
            else:
                net = R2D2Net(**dict(self.conf["model"] or {}))
        self.net = net.eval()
        self._trunk: nn.Module | None = None
        self._trunk_device: torch.device | None = None

    @property
    def tag(self) -> str:
        """Output file tag: checkpoint name (or ``r2d2``), then the precision when it is
        not fp32 (``-bf16``, ``-fp16``, ``-int8``)."""
        if self.conf["tag"]:
            return str(self.conf["tag"])
        tag = "r2d2"
        if self.conf["weights"]:
            tag = os.path.splitext(os.path.basename(str(self.conf["weights"])))[0]
        if self.precision != "fp32":
            tag += f"-{self.precision}"
        return tag

    def train(self, mode: bool = True) -> R2D2Extractor:
        # Folded batch norm is only valid with frozen statistics: rebuild after
        # training.
        self._trunk = None
        return super().train(mode)

    def _get_trunk(self, device: torch.device) -> nn.Module:
        if self._trunk is not None and self._trunk_device == device:
            return self._trunk
        trunk = self.net.fused_trunk().to(device)
        if self.precision == "int8":
            if device.type != "cpu":
                raise UserError("R2D2 int8 extraction runs on the CPU only")
            from models.quantize import calibration_batch, quantize_static

            # Calibrated on the built-in photographs at 256x320, ImageNet-normalised
            # like every input of the trunk.
            trunk = quantize_static(
                trunk, calibration_batch(256, 320, 3), preprocess=self.net.normalize
            )
        elif self.conf["channels_last"]:
            trunk = trunk.to(memory_format=torch.channels_last)
        self._trunk, self._trunk_device = trunk, device
        return self._trunk

    def _half(self) -> bool:
        return self.precision in ("bf16", "fp16")

    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Raw features, reliability and repeatability of an ImageNet-normalised image.

        Args:
            image: ``(1, 3, h, w)`` normalised image.

        Returns:
            ``features (1, dim, h, w)`` (not L2-normalised; float32 or the autocast
            dtype), ``reliability`` and ``repeatability`` ``(1, 1, h, w)`` float32.
        """
        trunk = self._get_trunk(image.device)
        x = image
        if self.conf["channels_last"] and self.precision != "int8":
            x = x.contiguous(memory_format=torch.channels_last)
        if self._half():
            convs = [i for i, m in enumerate(trunk) if isinstance(m, nn.Conv2d)]
            keep = min(FP32_FIRST_CONVS, len(convs))
            split = convs[keep] if keep < len(convs) else len(trunk)
            with autocast(image.device, self.precision):
                feats = trunk[split:](trunk[:split](x))
        else:
            feats = trunk(x)
        if self.net.fast:
            feats = F.interpolate(
                feats, size=image.shape[-2:], mode="bilinear", align_corners=False
            )
        reliability, repeatability = self._heads(feats)
        return feats, reliability, repeatability

    def _heads(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both confidence maps of ``(1, dim, h, w)`` features, in float32.

        Equivalent to :meth:`R2D2Net.confidence_maps` (the 2-way softmax is the sigmoid
        of the logit difference) but computed as one small matrix product over
        cache-sized chunks of pixels: materialising the squared full-resolution feature
        map costs more memory traffic than the product itself. Float32 throughout, so
        the 0.7 thresholds do not depend on bf16 rounding.
        """
        _, dim, h, w = feats.shape
        clf, sal = self.net.clf, self.net.sal
        weight = torch.stack([clf.weight[1] - clf.weight[0], sal.weight[0]]).view(
            2, dim
        )
        bias = torch.stack([clf.bias[1] - clf.bias[0], sal.bias[0]])
        pixels = feats[0].permute(1, 2, 0).reshape(h * w, dim)
        logits = torch.empty(h * w, 2, device=feats.device)
        weight_t = weight.t().contiguous()
        for chunk, out in zip(pixels.split(4096), logits.split(4096)):
            torch.addmm(bias, chunk.float().square(), weight_t, out=out)
        reliability = torch.sigmoid(logits[:, 0])
        soft = F.softplus(logits[:, 1])
        repeatability = soft / (1 + soft)
        return reliability.view(1, 1, h, w), repeatability.view(1, 1, h, w)

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extract multi-scale keypoints (see the class docstring for the outputs)."""
        if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ValueError(
                f"expected an image of shape (1, 3, H, W), got {tuple(image.shape)}"
            )
        c = self.conf
        _, _, height, width = image.shape
        current = self.net.normalize(image.float())
        longest = max(height, width)
        lowest = max(c["min_scale"], c["min_size"] / longest)
        highest = min(c["max_scale"], c["max_size"] / longest)
        points, scales, scores, descs = [], [], [], []
        s = 1.0
        # Same loop as the reference: every level is resized from the previous one, so
        # the pyramid (and the keypoints) match NAVER's extract.py.
        while s + 0.001 >= lowest:
            if s - 0.001 <= highest:
                h, w = current.shape[-2:]
                feats, rel, rep = self.dense(current)
                maxima = rep == F.max_pool2d(rep, 3, stride=1, padding=1)
                maxima &= rep >= c["repeatability_thr"]
                maxima &= rel >= c["reliability_thr"]
                ys, xs = maxima[0, 0].nonzero(as_tuple=True)
                desc = feats[0, :, ys, xs].t().float()
                descs.append(F.normalize(desc, p=2, dim=1))
                scores.append(rel[0, 0, ys, xs] * rep[0, 0, ys, xs])
                # Pixel centres map through x -> (x + 0.5) * W / w - 0.5.
                xy = torch.stack([xs, ys], dim=-1).float()
                ratio = xy.new_tensor([width / w, height / h])
                points.append((xy + 0.5) * ratio - 0.5)
                scales.append(torch.full_like(scores[-1], 32.0 / s))
            s /= c["scale_f"]
            if s + 0.001 < lowest:
                break
            size = (round(height * s), round(width * s))
            current = F.interpolate(current, size, mode="bilinear", align_corners=False)
        keypoints = torch.cat(points) if points else image.new_zeros((0, 2))
        scores_t = torch.cat(scores) if scores else image.new_zeros((0,))
        scales_t = torch.cat(scales) if scales else image.new_zeros((0,))
        descs_t = torch.cat(descs) if descs else image.new_zeros((0, self.net.dim))
        order = torch.argsort(scores_t, descending=True, stable=True)
        if c["top_k"] and c["top_k"] > 0:
            order = order[: c["top_k"]]
        return {
            "keypoints": keypoints[order],
            "scales": scales_t[order],
            "keypoint_scores": scores_t[order],
            "descriptors": descs_t[order],
        }


def num_parameters(model: nn.Module) -> int:
    """Number of parameters (the reference prints it as the 'model size')."""
    return sum(math.prod(p.shape) for p in model.parameters())


# --------------------------------------------------------------------------------------
# Training wrapper (the BaseModel contract of the shared engine) and checkpoint dispatch.


class R2D2(BaseModel):
    """Trainable R2D2 / Fast-R2D2 (``model.name: r2d2``) for ``train_r2d2.py``.

    The ``model`` config section holds the :class:`R2D2Net` constructor options (see
    there; ``fast: true`` is Fast-R2D2) and the ``loss`` section the options of
    :class:`losses.r2d2.R2D2Loss` (weights, similarity and reliability variants, sampler).
    The network lives in ``self.net``, so state-dict keys are NAVER's with a ``net.``
    prefix.

    ``forward(data)``:

    - pairs (training): ``image0``, ``image1`` ``(B, 3, H, W)`` RGB in [0, 1] give
      ``descriptors0/1 (B, dim, H, W)``, ``reliability0/1`` and ``repeatability0/1``
      ``(B, 1, H, W)``;
    - single images: ``image (B, 3, H, W)`` gives ``descriptors``, ``reliability``,
      ``repeatability``.

    ``loss(pred, data)`` needs ``aflow (B, 2, H, W)`` and ``mask (B, H, W)`` and returns
    ``({"total", "reliability", "repeatability", "peaky"}, {"ap" or "triplet",
    "n_valid"})``.

    Example:
        >>> model = R2D2({"fast": True, "dim": 16, "mchan": 1})
        >>> pred = model({"image0": torch.rand(1, 3, 32, 32),
        ...               "image1": torch.rand(1, 3, 32, 32)})
        >>> pred["repeatability1"].shape
        torch.Size([1, 1, 32, 32])
    """

    default_conf: dict[str, Any] = {
        "name": "r2d2",
        "dim": 128,
        "mchan": 4,
        "relu22": False,
        "fast": False,
        "downsample_factor": 2,
        "inchan": 3,
        "dilated": True,
        "dilation": 1,
        "bn": True,
        "bn_affine": False,
        "normalize_input": True,
    }
    default_loss_conf: dict[str, Any] = R2D2Loss.default_conf

    def _init(self, conf: dict[str, Any]) -> None:
        # Every key of default_conf but the registry name is an R2D2Net argument.
        self.net = R2D2Net(**{k: conf[k] for k in self.default_conf if k != "name"})
        self.criterion = R2D2Loss(self.loss_conf)

    def _forward(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "image0" in data:
            return self.net.forward_pair(data)
        return self.net(data["image"])

    def loss(
        self, pred: dict[str, Any], data: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """R2D2 loss terms (``total`` first) and its detached metrics."""
        _, terms = self.criterion(pred, data)
        names = ("total", "reliability", "repeatability", "peaky")
        losses = {name: terms[name] for name in names}
        metrics = {k: v for k, v in terms.items() if k not in names}
        return losses, metrics


def r2d2_panels(batch: dict[str, Any], pred: dict[str, Any]) -> dict[str, torch.Tensor]:
    """TensorBoard panels of the first pair: both images, repeatability, reliability.

    Returns:
        ``{name: (3, H, 2W) float in [0, 1]}`` with image 0 left and image 1 right.
    """
    from utils.visualize import colorize, to_chw, to_rgb_uint8

    def side_by_side(left, right):
        return to_chw(np.concatenate([left, right], axis=1))

    images = [to_rgb_uint8(batch[f"image{v}"][0]) for v in "01"]
    panels = {"images": side_by_side(*images)}
    for key in ("repeatability", "reliability"):
        maps = [colorize(pred[f"{key}{v}"][0, 0].float(), vmax=1.0) for v in "01"]
        panels[key] = side_by_side(*maps)
    return panels


def is_r2d2_checkpoint(obj: Any) -> bool:
    """Whether a loaded weight file is R2D2's: NAVER's ``{'net', 'state_dict'}`` layout
    or a ``train_r2d2.py`` checkpoint (``config.model.name == 'r2d2'``)."""
    if not isinstance(obj, Mapping):
        return False
    if "net" in obj and "state_dict" in obj:
        return True
    config = obj.get("config")
    model_conf = config.get("model") if isinstance(config, Mapping) else None
    return (
        "model" in obj
        and isinstance(model_conf, Mapping)
        and model_conf.get("name") == "r2d2"
    )


def r2d2_net_from_checkpoint(obj: Mapping[str, Any], source: str) -> R2D2Net:
    """The eval-mode :class:`R2D2Net` of a checkpoint accepted by
    :func:`is_r2d2_checkpoint` (the constructor string goes through the whitelist).

    Raises:
        UserError: constructor not on the whitelist, weights that do not fit.
    """
    if "net" in obj and "state_dict" in obj:
        return r2d2_net_from_published(dict(obj), source)
    model = R2D2(obj["config"]["model"])
    state = obj["model"]
    if not isinstance(state, Mapping):
        raise UserError(f"{source}: 'model' is not a dict of tensors")
    # Only the network is needed for inference; the loss holds no weights.
    net_state = {
        k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")
    }
    if len(net_state) != len(state):
        other = next(k for k in state if not k.startswith("net."))
        raise UserError(f"{source}: unexpected key '{other}' in an R2D2 checkpoint")
    load_r2d2_state(model.net, net_state, source)
    return model.net.eval()


def load_r2d2_net(path: str | os.PathLike) -> R2D2Net:
    """The eval-mode network of any R2D2 weight file: a ``train_r2d2.py`` checkpoint,
    NAVER's layout or a bare state dict (:func:`load_r2d2_checkpoint`)."""
    from utils.io import load_checkpoint

    source = os.fspath(path)
    obj = load_checkpoint(source)
    if is_r2d2_checkpoint(obj):
        return r2d2_net_from_checkpoint(obj, source)
    return r2d2_net_from_published(obj, source)


EXTRACTOR_OPTIONS = tuple(
    k for k in R2D2Extractor.default_conf if k not in ("weights", "model", "tag")
)
"""R2D2 extraction options accepted by :func:`load_r2d2_extractor`."""


def load_r2d2_extractor(
    obj: Mapping[str, Any],
    source: str,
    device: str = "cpu",
    conf: dict[str, Any] | None = None,
) -> R2D2Extractor:
    """Multi-scale extractor (published defaults) from a loaded R2D2 checkpoint.

    Args:
        obj: what ``torch.load`` returned (see :func:`is_r2d2_checkpoint`).
        source: the file's path (messages and the output tag, its stem).
        device: torch device string.
        conf: :data:`EXTRACTOR_OPTIONS` overrides (``top_k``, ``reliability_thr``,
            ``min_size``, ``precision``...; see :class:`R2D2Extractor`).

    Raises:
        UserError: an option R2D2 does not take (e.g. SuperPoint's ``nms_radius``),
            naming the closest one, or a bad checkpoint.
    """
    conf = merge_config(
        {k: R2D2Extractor.default_conf[k] for k in EXTRACTOR_OPTIONS}, conf
    )
    net = r2d2_net_from_checkpoint(obj, source)
    extractor = R2D2Extractor({**conf, "weights": source}, net=net, device=device)
    return extractor.to(device)
