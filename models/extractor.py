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

from engine.devices import inference_precision, resolve_device
from models.classical import OpenCVExtractor
from models.quantize import precision_label
from utils.config import merge_config
from utils.errors import UserError
from utils.io import file_sha256, load_checkpoint

CLASSICAL = ("sift", "orb")

SUPERPOINT_OPTIONS = (
    "detection_threshold",
    "nms_radius",
    "remove_borders",
    "top_k",
    "descriptor_sampling",
)
INFERENCE_DEFAULTS: dict[str, Any] = {"precision": "fp32", "channels_last": True}
"""Options of every learned extractor: ``precision`` (``engine.devices.PRECISIONS``;
fp32 by default, the numbers of the published protocols) and ``channels_last`` (the
convolutions' memory layout: oneDNN runs channels-last convolutions faster on CPUs, with
the same numbers)."""


class SuperPointRunner:
    """A SuperPoint/MagicPoint's dense predictions at one resolved precision.

    ``runner({"image": (B, C, H, W)})`` (H, W multiples of 8) returns ``heatmap (B, H, W)``
    and, with the descriptor head, L2-normalised ``dense_descriptors (B, D, H/8, W/8)``,
    both float32, whatever the precision. Extraction, homographic adaptation and the
    Synthetic Shapes evaluation run the network through this one class.

    Args:
        model: a ``models.superpoint`` SuperPoint or MagicPoint (not modified: the runner
            holds a copy).
        precision: resolved (``engine.devices.inference_precision``): ``fp32``;
            ``bf16``/``fp16``: the weights of the copy cast once (autocast would re-cast
            them at every call, and plain-layout bf16 convolutions run slower than fp32
            on CPUs); ``int8``: static int8 convolutions calibrated on the
            built-in photographs (``models.quantize``, CPU only).
        channels_last: run the float convolutions in channels-last memory layout.
        device: where the float network runs (int8 runs on the CPU).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        precision: str,
        channels_last: bool = True,
        device: torch.device | str = "cpu",
    ):
        if precision not in ("fp32", "bf16", "fp16", "int8"):
            raise ValueError(f"precision {precision!r} is not resolved")
        self.precision = precision
        self.channels_last = bool(channels_last) and precision != "int8"
        self.descriptors = bool(model.conf.get("descriptor_head", False))
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
            return
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(
            precision, torch.float16
        )
        self.model = copy.deepcopy(model).eval().to(device=device, dtype=self.dtype)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = data["image"]
        if self.quantized is not None:
            from models.superpoint import logits_to_heatmap

            outputs = self.quantized(image.float().cpu())
            pred = {"heatmap": logits_to_heatmap(outputs[0].float())}
            if self.descriptors:
                pred["dense_descriptors"] = F.normalize(outputs[1].float(), p=2, dim=1)
            return {k: v.to(image.device) for k, v in pred.items()}
        image = image.to(self.dtype)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        pred = self.model({"image": image})
        out = {"heatmap": pred["heatmap"].float()}
        if "dense_descriptors" in pred:
            out["dense_descriptors"] = pred["dense_descriptors"].float()
        return out


class Extractor:
    """Callable wrapper around a detector/descriptor model (see module docstring).

    Args:
        model: a SuperPoint/MagicPoint (``encode``, heads, ``detect``).
        tag: output file tag; the precision is appended when it is not fp32
            (``-bf16``, ``-fp16``, ``-int8``), as R2D2's extractor does.
        device: torch device string.
        precision: one of ``engine.devices.PRECISIONS``, resolved by
            :func:`engine.devices.inference_precision` (``auto`` on CPUs without native
            bf16: int8, which keeps over 95% of the fp32 keypoints); see
            :class:`SuperPointRunner` for what each runs.
        channels_last: see :class:`SuperPointRunner`.

    Attributes:
        precision: the resolved precision (``fp32``, ``bf16``, ``fp16`` or ``int8``).
    """

    def __init__(
        self,
        model,
        tag: str,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = True,
    ):
        self.device = resolve_device(device)
        self.precision = inference_precision(
            precision, self.device, int8="auto", network="SuperPoint"
        )
        self.runner = SuperPointRunner(
            model, self.precision, channels_last, self.device
        )
        # Keypoint selection (threshold, NMS, descriptor sampling) follows the model's
        # config and runs on the float32 maps; the model itself is not run or changed.
        self.model = model
        self.tag = tag if self.precision == "fp32" else f"{tag}-{self.precision}"
        self.grayscale = model.conf.get("input_channels", 1) == 1

    def dense(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense predictions (``heatmap``, ``dense_descriptors``) of a padded image."""
        return self.runner({"image": image})

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
        return EXTRACTOR_OPTIONS
    return (*SUPERPOINT_OPTIONS, *INFERENCE_DEFAULTS)


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
            ``nms_radius``, ``remove_borders``, ``top_k``, ``descriptor_sampling``),
            ``precision`` and ``channels_last`` (see :class:`Extractor`).

    Raises:
        UserError: an option the model does not take (naming the closest one) or a
            value of the wrong type; a bad checkpoint.
    """
    from models import build_model, get_model
    from models.r2d2 import is_r2d2_checkpoint, load_r2d2_extractor
    from models.weights import check_and_load_state_dict, convert_state_dict

    conf = dict(conf or {})
    ckpt = load_checkpoint(path)
    if is_r2d2_checkpoint(ckpt):
        # NAVER's {'net', 'state_dict'} files and train_r2d2.py runs: multi-scale
        # extraction with R2D2's own options.
        return load_r2d2_extractor(ckpt, str(path), device=device, conf=conf)
    if isinstance(ckpt, dict) and ("model" in ckpt) != ("config" in ckpt):
        raise UserError(
            f"checkpoint '{path}' has no 'model'/'config' entries "
            "(expected a file written by a train_*.py run)"
        )
    _, state, model_conf = convert_state_dict(ckpt, str(path))
    stored = {
        **get_model(model_conf.get("name", "superpoint")).defaults(),
        **model_conf,
    }
    defaults = {k: stored[k] for k in SUPERPOINT_OPTIONS} | INFERENCE_DEFAULTS
    options = merge_config(defaults, conf)
    model = build_model(model_conf | {k: options[k] for k in SUPERPOINT_OPTIONS})
    check_and_load_state_dict(model, state, path)
    return Extractor(
        model,
        tag=Path(path).stem,
        device=device,
        precision=options["precision"],
        channels_last=options["channels_last"],
    )


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
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:i``
            (:func:`engine.devices.resolve_device`).
        conf: options the model understands (:func:`load_extractor`).
    """

    def __init__(self, path: str, device: str = "auto", conf: dict | None = None):
        self.device = resolve_device(device)
        if not Path(path).is_file():
            raise UserError(f"{path}: checkpoint file does not exist")
        self.model = load_extractor(path, device=str(self.device), conf=conf)
        # The model's tag is the file stem plus settings (-bf16, -int8...); the stem part
        # becomes the run-naming checkpoint_tag.
        stem, model_tag = Path(path).stem, str(getattr(self.model, "tag", ""))
        suffix = model_tag[len(stem) :] if model_tag.startswith(stem) else ""
        self.tag = checkpoint_tag(path) + suffix
        self.grayscale = bool(getattr(self.model, "grayscale", True))
        # Hashed once per extractor, i.e. once per run, not per image.
        self.identity = {"id": f"sha256:{file_sha256(path)}", "weights": str(path)}
        # The precision as run ("auto" resolved, int8 named by its method), whatever the
        # options said: files made at another precision are not reused.
        options = {**(conf or {}), "precision": precision_label(self.model.precision)}
        self.options = dict(sorted(options.items()))

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


def build_extractor(
    model: str, device: str = "auto", conf: dict | None = None
) -> ImageExtractor:
    """``sift``/``orb`` (OpenCV) or a checkpoint path (:func:`load_extractor`).

    Raises:
        UserError: an option the model does not take, naming the closest one.
    """
    conf = dict(conf or {})
    if model.lower() in CLASSICAL:
        learned = sorted(set(conf) & set(INFERENCE_DEFAULTS))
        if learned:
            raise UserError(
                f"{model} runs in OpenCV: {', '.join(learned)} applies to learned "
                "models only"
            )
        options = merge_config({"top_k": None}, conf)
        return OpenCVExtractor(model.lower(), options["top_k"])
    return ModelExtractor(model, device=device, conf=conf)
