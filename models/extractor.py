"""Keypoint extractors built from local weight files, for ``extract.py`` and evaluation.

An extractor is called on one image ``(1, C, H, W)`` in [0, 1] and returns ``keypoints``
``(N, 2)`` (x, y), ``keypoint_scores`` ``(N,)`` and, when the model has descriptors,
``descriptors`` ``(N, D)``. Images whose size is not a multiple of 8 are padded by replicating
the last row/column (no artificial edge), and detections in the padding are dropped.
Foreign SuperPoint weight files are accepted too (see ``models.weights``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from utils.errors import UserError
from utils.io import load_checkpoint

SUPERPOINT_OPTIONS = (
    "detection_threshold",
    "nms_radius",
    "remove_borders",
    "top_k",
    "descriptor_sampling",
)


def check_and_load_state_dict(
    model: torch.nn.Module, state: dict, source: str, allow_missing: bool = False
) -> list[str]:
    """Load ``state``; on mismatch raise one line naming the first bad key.

    Every key of ``state`` must exist in the model with the same shape. With
    ``allow_missing`` the model may have keys ``state`` lacks (they keep their values, e.g.
    the descriptor head when a SuperPoint starts from a MagicPoint); they are returned.
    """
    expected = model.state_dict()
    for key, value in state.items():
        if key not in expected:
            raise UserError(
                f"weights '{source}' do not match the model: unexpected key '{key}'"
            )
        if tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(
                f"weights '{source}' do not match the model: key '{key}' has shape "
                f"{tuple(value.shape)}, the model expects {tuple(expected[key].shape)}"
            )
    missing = [k for k in expected if k not in state]
    if missing and not allow_missing:
        raise UserError(
            f"weights '{source}' do not match the model: missing key '{missing[0]}'"
        )
    if len(missing) == len(expected):
        raise UserError(f"weights '{source}' share no key with the model")
    model.load_state_dict(state, strict=not allow_missing)
    return missing


class Extractor:
    """Callable wrapper around a detector/descriptor model (see module docstring)."""

    def __init__(self, model, tag: str, device: str = "cpu", precision: str = "fp32"):
        self.model = model.eval().to(device)
        if precision == "bf16":
            # Casting the weights once, in channels-last layout, is what makes oneDNN use
            # its fast bf16 kernels on CPU; autocast re-casts the weights at every call
            # and plain-layout bf16 convolutions were measured slower than fp32 here.
            self.model = copy.deepcopy(self.model).to(torch.bfloat16)
            self.model = self.model.to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        self.tag = tag
        self.grayscale = model.conf.get("input_channels", 1) == 1
        self.precision = precision

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        image = image.to(self.device, torch.float32)
        if self.grayscale and image.shape[1] == 3:
            weights = image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            image = (image * weights).sum(1, keepdim=True)
        h, w = image.shape[-2:]
        pad_h, pad_w = (-h) % 8, (-w) % 8
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
        if self.precision == "bf16":
            image = image.to(torch.bfloat16).contiguous(
                memory_format=torch.channels_last
            )
        pred = self.model({"image": image})
        out = self.model.detect(pred)
        keypoints, scores = out["keypoints"][0], out["keypoint_scores"][0]
        border = self.model.conf["remove_borders"]
        inside = (keypoints[:, 0] < w - border) & (keypoints[:, 1] < h - border)
        result = {"keypoints": keypoints[inside], "keypoint_scores": scores[inside]}
        if "descriptors" in out:
            result["descriptors"] = out["descriptors"][0][inside]
        return result


def extractor_options(path: str) -> tuple[str, ...]:
    """The ``conf`` keys :func:`load_extractor` accepts for the weight file ``path``.

    Evaluation presets carry SuperPoint-family detection settings (threshold, NMS radius);
    callers use this to apply only what a given model understands.
    """
    from models.r2d2 import EXTRACTOR_OPTIONS, is_r2d2_checkpoint

    if is_r2d2_checkpoint(load_checkpoint(path)):
        return (*EXTRACTOR_OPTIONS, "precision")
    return (*SUPERPOINT_OPTIONS, "precision")


def load_extractor(
    path: str, device: str = "cpu", conf: dict[str, Any] | None = None
) -> Extractor | Any:
    """Build an :class:`Extractor` from a local weight file.

    Args:
        path: a ``.pt`` checkpoint written by the training engine (``model`` state dict and
            ``config``), or a foreign SuperPoint file read by ``models.weights``
            (MagicLeap ``superpoint_v1.pth``, rpautrat ``superpoint_v6_from_tf.pth``, a
            pytorch-superpoint checkpoint); R2D2 files (``train_r2d2.py`` runs and
            NAVER's published ``{'net', 'state_dict'}`` checkpoints) give a
            ``models.r2d2.R2D2Extractor`` (multi-scale, options of
            ``models.r2d2.load_r2d2_extractor``).
        device: torch device string.
        conf: overrides of the model's post-processing (``detection_threshold``,
            ``nms_radius``, ``remove_borders``, ``top_k``, ``descriptor_sampling``) and
            ``precision`` (fp32|bf16).
    """
    from models import build_model
    from models.r2d2 import is_r2d2_checkpoint, load_r2d2_extractor
    from models.weights import convert_state_dict

    conf = dict(conf or {})
    ckpt = load_checkpoint(path)
    if is_r2d2_checkpoint(ckpt):
        # NAVER's {'net', 'state_dict'} files and train_r2d2.py runs: multi-scale
        # extraction with R2D2's own options.
        return load_r2d2_extractor(ckpt, str(path), device=device, conf=conf)
    precision = conf.pop("precision", "fp32")
    unknown = set(conf) - set(SUPERPOINT_OPTIONS)
    if unknown:
        raise UserError(
            f"unknown extractor option(s) {sorted(unknown)}; valid: {SUPERPOINT_OPTIONS}"
        )
    if isinstance(ckpt, dict) and ("model" in ckpt) != ("config" in ckpt):
        raise UserError(
            f"checkpoint '{path}' has no 'model'/'config' entries "
            "(expected a file written by a train_*.py run)"
        )
    _, state, model_conf = convert_state_dict(ckpt, str(path))
    model_conf = {**model_conf, **conf}
    model = build_model(model_conf)
    check_and_load_state_dict(model, state, path)
    return Extractor(model, tag=Path(path).stem, device=device, precision=precision)
