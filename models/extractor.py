"""Keypoint extractors built from local weight files, for ``extract.py`` and evaluation.

An extractor is called on one image ``(1, C, H, W)`` in [0, 1] and returns ``keypoints``
``(N, 2)`` (x, y), ``keypoint_scores`` ``(N,)`` and, when the model has descriptors,
``descriptors`` ``(N, D)``. Images whose size is not a multiple of 8 are padded by replicating
the last row/column (no artificial edge), and detections in the padding are dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from utils.errors import UserError
from utils.io import load_checkpoint

DETECTION_KEYS = ("detection_threshold", "nms_radius", "remove_borders", "top_k")


def check_and_load_state_dict(model: torch.nn.Module, state: dict, source: str) -> None:
    """Load ``state`` strictly; on mismatch raise one line naming the first bad key."""
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
    if missing:
        raise UserError(
            f"weights '{source}' do not match the model: missing key '{missing[0]}'"
        )
    model.load_state_dict(state, strict=True)


class Extractor:
    """Callable wrapper around a detector/descriptor model (see module docstring)."""

    def __init__(self, model, tag: str, device: str = "cpu", precision: str = "fp32"):
        self.model = model.eval().to(device)
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
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        ):
            pred = self.model({"image": image})
        out = self.model.detect(pred)
        keypoints, scores = out["keypoints"][0], out["keypoint_scores"][0]
        border = self.model.conf["remove_borders"]
        inside = (keypoints[:, 0] < w - border) & (keypoints[:, 1] < h - border)
        result = {"keypoints": keypoints[inside], "keypoint_scores": scores[inside]}
        if "descriptors" in out:
            result["descriptors"] = out["descriptors"][0][inside]
        return result


def load_extractor(
    path: str, device: str = "cpu", conf: dict[str, Any] | None = None
) -> Extractor:
    """Build an :class:`Extractor` from a checkpoint written by the training engine.

    Args:
        path: ``.pt`` file holding ``model`` (state dict) and ``config`` (resolved run config).
        device: torch device string.
        conf: overrides of the model's post-processing (``detection_threshold``,
            ``nms_radius``, ``remove_borders``, ``top_k``) and ``precision`` (fp32|bf16).
    """
    from models import build_model

    conf = dict(conf or {})
    precision = conf.pop("precision", "fp32")
    unknown = set(conf) - set(DETECTION_KEYS)
    if unknown:
        raise UserError(
            f"unknown extractor option(s) {sorted(unknown)}; valid: {DETECTION_KEYS}"
        )
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise UserError(
            f"checkpoint '{path}' has no 'model'/'config' entries "
            "(expected a file written by a train_*.py run)"
        )
    model_conf = {**ckpt["config"]["model"], **conf}
    model = build_model(model_conf)
    check_and_load_state_dict(model, ckpt["model"], path)
    return Extractor(model, tag=Path(path).stem, device=device, precision=precision)
