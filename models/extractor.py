"""Keypoint extractors: learned models from local weight files, and SIFT/ORB, behind one call.

Two levels:

* :func:`load_extractor` gives an :class:`Extractor` over a weights file, called on one image
  ``(1, C, H, W)`` in [0, 1]; it returns ``keypoints`` ``(N, 2)`` (x, y), ``keypoint_scores``
  ``(N,)`` and, when the model has descriptors, ``descriptors`` ``(N, D)``. Images whose size
  is not a multiple of 8 are padded by replicating the last row/column (no artificial edge),
  and detections in the padding are dropped. Foreign SuperPoint weight files are accepted too
  (see ``models.weights``).
* :func:`build_extractor` gives an :class:`ImageExtractor` for ``sift``, ``orb`` or any weights
  file: a uint8 NumPy image in, NumPy ``keypoints``, ``scores`` and ``descriptors`` out. This is
  what ``extract.py``, the evaluations, tracking and feature inversion use.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from engine.devices import inference_precision
from models.classical import OpenCVExtractor
from utils.errors import UserError
from utils.io import file_sha256, load_checkpoint

CLASSICAL = ("sift", "orb")
EXTRACTOR_PRECISIONS = ("auto", "fp32", "bf16", "int8")

SUPERPOINT_OPTIONS = (
    "detection_threshold",
    "nms_radius",
    "remove_borders",
    "top_k",
    "descriptor_sampling",
)


class Extractor:
    """Callable wrapper around a detector/descriptor model (see module docstring).

    Args:
        model: a SuperPoint/MagicPoint (``encode``, heads, ``detect``).
        tag: output file tag.
        device: torch device string.
        precision: ``fp32`` (the network as trained; channels-last memory on CPU, which
            oneDNN runs faster and which gives the same numbers), ``bf16`` (the weights cast
            once, for CPUs with native bf16 and GPUs), ``int8`` (static int8 quantisation of
            the convolutions, calibrated on the built-in photographs; the fast path of CPUs
            without native bf16, see ``models.quantize``) or ``auto`` (bf16 on GPUs and where
            it is native, else int8, which kept 96.2-96.5% of a trained detector's keypoints,
            :func:`engine.devices.inference_precision`).
    """

    def __init__(self, model, tag: str, device: str = "cpu", precision: str = "fp32"):
        if precision not in EXTRACTOR_PRECISIONS:
            raise UserError(
                f"precision={precision!r}: expected one of {', '.join(EXTRACTOR_PRECISIONS)}"
            )
        self.device = torch.device(device)
        precision = inference_precision(precision, self.device, int8_keeps_points=True)
        precision = "bf16" if precision == "fp16" else precision
        # A copy: the caller's model keeps its dtype and memory format.
        self.model = copy.deepcopy(model).eval().to(device)
        self.channels_last = self.device.type == "cpu" or precision == "bf16"
        if precision == "bf16":
            # Casting the weights once, in channels-last layout, is what makes oneDNN use
            # its fast bf16 kernels on CPU; autocast re-casts the weights at every call
            # and plain-layout bf16 convolutions were measured slower than fp32 here.
            self.model = self.model.to(torch.bfloat16)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.quantized = None
        if precision == "int8":
            from models.quantize import (
                SuperPointDense,
                calibration_batch,
                quantize_static,
            )

            channels = model.conf.get("input_channels", 1)
            self.quantized = quantize_static(
                SuperPointDense(copy.deepcopy(model).eval().float().cpu()),
                calibration_batch(240, 320, channels),
            )
        self.tag = tag
        self.grayscale = model.conf.get("input_channels", 1) == 1
        self.precision = precision

    def dense(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense predictions (``heatmap``, ``dense_descriptors``) of a padded image."""
        if self.quantized is not None:
            from models.superpoint import logits_to_heatmap

            outputs = self.quantized(image)
            pred = {"heatmap": logits_to_heatmap(outputs[0].float())}
            if len(outputs) > 1:
                pred["dense_descriptors"] = F.normalize(outputs[1].float(), p=2, dim=1)
            return pred
        if self.precision == "bf16":
            image = image.to(torch.bfloat16)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.model({"image": image})

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
        out = self.model.detect(self.dense(image))
        keypoints, scores = out["keypoints"][0], out["keypoint_scores"][0]
        border = self.model.conf["remove_borders"]
        inside = (keypoints[:, 0] < w - border) & (keypoints[:, 1] < h - border)
        result = {"keypoints": keypoints[inside], "keypoint_scores": scores[inside]}
        if "descriptors" in out:
            result["descriptors"] = out["descriptors"][0][inside]
        return result


def extractor_options(model: str) -> tuple[str, ...]:
    """The ``conf`` keys :func:`build_extractor` accepts for ``model`` (a name or a file).

    Evaluation presets carry SuperPoint-family detection settings (threshold, NMS radius);
    callers use this to apply only what a given model understands.
    """
    if model.lower() in CLASSICAL:
        return ("top_k",)
    from models.r2d2 import EXTRACTOR_OPTIONS, is_r2d2_checkpoint

    if is_r2d2_checkpoint(load_checkpoint(model)):
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
            ``precision`` (see :class:`Extractor`).
    """
    from models import build_model
    from models.r2d2 import is_r2d2_checkpoint, load_r2d2_extractor
    from models.weights import check_and_load_state_dict, convert_state_dict

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


# File stems that say nothing about which model a file holds (the engine writes best.pt and
# last_<step>.pt in every run): their tag is prefixed with the run's name.
GENERIC_STEMS = ("best", "last", "latest", "final", "model", "checkpoint", "weights")


def checkpoint_tag(path: str | Path) -> str:
    """Default output tag of a weights file: it names the run, not only the file.

    ``logs/<run>/checkpoints/best.pt`` gives ``<run>-best``; a generically named file
    elsewhere (``exp/model.pt``) gives ``exp-model``; a published file keeps its own name
    (``pretrained/superpoint_v1.pth`` gives ``superpoint_v1``).
    """
    path = Path(path)
    stem = path.stem
    parent = path.parent
    if parent.name == "checkpoints" and parent.parent.name not in ("", "."):
        return f"{parent.parent.name}-{stem}"
    generic = stem.lower().split("_")[0] in GENERIC_STEMS
    if generic and parent.name not in ("", ".", "pretrained"):
        return f"{parent.name}-{stem}"
    return stem


class ImageExtractor(Protocol):
    """What :func:`build_extractor` returns: a feature extractor on NumPy images.

    ``identity`` (``{"id": "sha256:<hex>" | "sift (OpenCV 4.x)", ...}``) and ``options``
    (the options it was built with) go into the provenance record of every feature file
    (see ``datasets.features``).
    """

    tag: str
    grayscale: bool
    identity: dict[str, str]
    options: dict[str, Any]

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Features of a uint8 image (H, W) or (H, W, 3): ``keypoints`` (N, 2),
        ``scores`` (N,), optional ``descriptors`` (N, D) and ``scales`` (N,)."""
        ...


class ModelExtractor:
    """A learned model from a local checkpoint, through :func:`load_extractor`.

    Args:
        path: checkpoint file.
        device: ``cpu``, ``cuda``, ``cuda:i`` or ``auto``.
        conf: post-processing overrides the model understands
            (``detection_threshold``, ``nms_radius``, ``top_k``, ``remove_borders``).
    """

    def __init__(self, path: str, device: str = "cpu", conf: dict | None = None):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if not Path(path).is_file():
            raise UserError(f"{path}: checkpoint file does not exist")
        self.device = device
        self.model = load_extractor(path, device=device, conf=conf)
        # The model's tag is the file stem plus settings (R2D2 adds -bf16); the stem part
        # becomes the run-naming checkpoint_tag.
        stem, model_tag = Path(path).stem, str(getattr(self.model, "tag", ""))
        suffix = model_tag[len(stem) :] if model_tag.startswith(stem) else ""
        self.tag = checkpoint_tag(path) + suffix
        self.grayscale = bool(getattr(self.model, "grayscale", True))
        # Hashed once per extractor, i.e. once per run, not per image.
        self.identity = {"id": f"sha256:{file_sha256(path)}", "weights": str(path)}
        self.options = dict(sorted((conf or {}).items()))
        if "precision" in self.options:
            # "auto" is recorded as what it chose here (bf16 where native, else fp32).
            self.options["precision"] = _resolved_precision(self.model) or str(
                self.options["precision"]
            )

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        tensor = torch.from_numpy(np.ascontiguousarray(image)).float() / 255.0
        tensor = (
            tensor[None, None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)[None]
        )
        with torch.inference_mode():
            out = self.model(tensor.to(self.device))

        def numpy(value: Any, ndim: int) -> np.ndarray:
            if hasattr(value, "detach"):
                value = value.detach().float().cpu().numpy()
            value = np.asarray(value, dtype=np.float32)
            # Accept a batch of one (1, N, ...) as well as the unbatched contract.
            return value[0] if value.ndim == ndim + 1 else value

        keypoints = numpy(out["keypoints"], 2).reshape(-1, 2)
        scores = numpy(out["keypoint_scores"], 1).reshape(-1)
        feats = {"keypoints": keypoints, "scores": scores}
        if out.get("scales") is not None:
            feats["scales"] = numpy(out["scales"], 1).reshape(-1)
        if out.get("descriptors") is not None:
            desc = numpy(out["descriptors"], 2)
            # (0, D) stays as is: NumPy cannot infer -1 in a reshape of zero size.
            feats["descriptors"] = (
                desc if desc.ndim == 2 else desc.reshape(len(keypoints), -1)
            )
        return feats


def _resolved_precision(model: Any) -> str | None:
    """The precision an extractor runs at, after ``auto``; None if it does not say."""
    precision = getattr(model, "precision", None)
    conf = getattr(model, "conf", None)
    if isinstance(conf, dict) and "autocast" in conf and conf.get("int8"):
        precision = "int8"  # R2D2Extractor
    if precision == "int8":
        from models.quantize import precision_label

        # 7- or 8-bit activations, by the CPU: the outputs differ between the two.
        return precision_label()
    if isinstance(precision, str):
        return precision
    if isinstance(conf, dict) and "autocast" in conf:  # R2D2Extractor
        mode = conf.get("autocast")
        return (
            "fp16" if mode == "fp16" else "bf16" if mode in (True, "bf16") else "fp32"
        )
    return None


def build_extractor(
    model: str, device: str = "cpu", conf: dict | None = None
) -> ImageExtractor:
    """``sift``/``orb`` (OpenCV) or a checkpoint path (:func:`load_extractor`)."""
    conf = dict(conf or {})
    if model.lower() in CLASSICAL:
        unknown = set(conf) - {"top_k"}
        if unknown:
            raise UserError(
                f"--conf {sorted(unknown)} not understood by {model} (only top_k)"
            )
        return OpenCVExtractor(model.lower(), conf.get("top_k"))
    return ModelExtractor(model, device=device, conf=conf)
