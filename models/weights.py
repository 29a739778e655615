"""Foreign SuperPoint weights: format detection, explicit key maps, the MagicLeap frontend.

Three public formats load into :class:`models.superpoint.SuperPoint` by explicit key maps
(never by guessing shapes), with ``torch.load(weights_only=True)``:

* ``magicleap``: MagicLeap's ``superpoint_v1.pth``, a plain state dict ``conv1a.weight`` ...
  ``convDb.bias`` (no BatchNorm). Our blocks are ``nn.Sequential`` so ``conv1a.weight``
  becomes ``conv1a.0.weight``. The network is post-processed as the MagicLeap frontend
  (:data:`MAGICLEAP_FRONTEND`).
* ``rpautrat_v6``: rpautrat's MIT-licensed ``superpoint_v6_from_tf.pth``: ``backbone.<stage>.
  <block>.{conv,bn}.*`` (stages of two conv-ReLU-BN blocks, eps 1e-3), ``detector.{0,1}`` and
  ``descriptor.{0,1}``.
* ``pytorch_superpoint``: a pytorch-superpoint checkpoint, a dict whose
  ``model_state_dict`` holds either MagicLeap names (``SuperPointNet``) or the BatchNorm
  ``SuperPointNet_gauss2`` names (``inc.conv.conv.{0,1,3,4}``, ``down<k>.mpconv.1.conv...``,
  ``convPa``/``bnPa`` ...; conv-BN-ReLU, eps 1e-5).

A ``module.`` prefix (DataParallel) is stripped. A key that no rule maps, a missing key or a
shape mismatch is refused with one line naming the first bad key.

:func:`reference_frontend` is a plain re-implementation of the MagicLeap ``SuperPointFrontend``
(NumPy softmax and depth-to-space, greedy NMS loop), used by tests and the inference
benchmark as the reference to agree with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geometry.keypoints import greedy_nms
from utils.errors import UserError

FORMATS = ("engine", "magicleap", "rpautrat_v6", "pytorch_superpoint")
ENCODER = (
    "conv1a",
    "conv1b",
    "conv2a",
    "conv2b",
    "conv3a",
    "conv3b",
    "conv4a",
    "conv4b",
)
HEADS = ("convPa", "convPb", "convDa", "convDb")

MAGICLEAP_FRONTEND: dict[str, Any] = {
    "detection_threshold": 0.015,
    "nms_radius": 4,
    "remove_borders": 4,
    "top_k": -1,
    "descriptor_sampling": "magicleap",
}
"""Post-processing of MagicLeap's ``demo_superpoint.py`` (conf, NMS dist, border)."""

_BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a leading ``module.`` (DataParallel/DDP) from every key."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def detect_format(obj: Any, source: str = "weights") -> str:
    """Name the format of a loaded weight file (see module docstring).

    Raises:
        UserError: when the content matches no known format.
    """
    if not isinstance(obj, Mapping):
        raise UserError(
            f"'{source}' does not hold a state dict (got {type(obj).__name__})"
        )
    if "model" in obj and "config" in obj:
        return "engine"
    if "model_state_dict" in obj:
        return "pytorch_superpoint"
    keys = list(strip_module_prefix(obj))
    if any(k.startswith("backbone.") for k in keys):
        return "rpautrat_v6"
    if any(k.startswith("conv1a.") for k in keys) and all(
        isinstance(v, torch.Tensor) for v in obj.values()
    ):
        return "magicleap"
    first = keys[0] if keys else "<empty>"
    raise UserError(
        f"'{source}': unknown weight format (first key '{first}'); expected a train_*.py "
        "checkpoint, MagicLeap superpoint_v1.pth, rpautrat superpoint_v6_from_tf.pth or "
        "a pytorch-superpoint checkpoint"
    )


def _magicleap_key(key: str) -> str | None:
    m = re.fullmatch(r"(conv[1-4][ab]|conv[PD][ab])\.(weight|bias)", key)
    return f"{m.group(1)}.0.{m.group(2)}" if m else None


def _rpautrat_key(key: str) -> str | None:
    m = re.fullmatch(r"backbone\.([0-3])\.([01])\.(conv|bn)\.(\w+)", key)
    if m:
        stage, block, kind, param = m.groups()
        name = f"conv{int(stage) + 1}{'ab'[int(block)]}"
    else:
        m = re.fullmatch(r"(detector|descriptor)\.([01])\.(conv|bn)\.(\w+)", key)
        if not m:
            return None
        head, block, kind, param = m.groups()
        name = f"conv{'P' if head == 'detector' else 'D'}{'ab'[int(block)]}"
    # conv-ReLU-BN: the BatchNorm is the third layer of our block (ReLU-less for 1x1 heads).
    if kind == "conv":
        index = 0
    else:
        index = 1 if name in ("convPb", "convDb") else 2
    if (
        kind == "bn"
        and param not in _BN_PARAMS
        or kind == "conv"
        and param
        not in (
            "weight",
            "bias",
        )
    ):
        return None
    return f"{name}.{index}.{param}"


def _gauss2_key(key: str) -> str | None:
    m = re.fullmatch(r"(inc\.conv|down([1-3])\.mpconv\.1)\.conv\.([0134])\.(\w+)", key)
    if m:
        stage = 1 if m.group(2) is None else int(m.group(2)) + 1
        layer, param = int(m.group(3)), m.group(4)
        name = f"conv{stage}{'a' if layer < 3 else 'b'}"
        return f"{name}.{0 if layer in (0, 3) else 1}.{param}"
    m = re.fullmatch(r"(conv|bn)([PD][ab])\.(\w+)", key)
    if m:
        kind, head, param = m.groups()
        return f"conv{head}.{0 if kind == 'conv' else 1}.{param}"
    return None


def _remap(state: Mapping[str, Any], rule, source: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new = rule(key)
        if new is None:
            raise UserError(
                f"weights '{source}' do not match the model: unexpected key '{key}'"
            )
        out[new] = value
    return out


def convert_state_dict(
    obj: Mapping[str, Any], source: str = "weights"
) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    """Turn a foreign weight file's content into our state dict.

    Args:
        obj: what ``torch.load`` returned.
        source: file name for messages.

    Returns:
        ``(format, state_dict, model_conf)``: ``model_conf`` holds the architecture and
        post-processing settings the weights need (widths read from the tensors).

    Raises:
        UserError: unknown format, unmapped key (named).
    """
    fmt = detect_format(obj, source)
    if fmt == "engine":
        config = obj["config"]
        model_conf = config.get("model") if isinstance(config, Mapping) else None
        if not isinstance(obj["model"], Mapping) or not isinstance(model_conf, Mapping):
            raise UserError(
                f"'{source}': a train_*.py checkpoint needs a 'model' state dict and a "
                "'config' with a 'model' section"
            )
        return fmt, dict(obj["model"]), dict(model_conf)
    if fmt == "pytorch_superpoint":
        inner = obj["model_state_dict"]
        if not isinstance(inner, Mapping):
            raise UserError(f"'{source}': 'model_state_dict' is not a state dict")
        state = strip_module_prefix(inner)
        if any(k.startswith("inc.") for k in state):
            mapped = _remap(state, _gauss2_key, source)
            conf = {"batch_norm": True, "batch_norm_order": "bn_relu"}
            conf["batch_norm_eps"] = 1e-5
        else:
            mapped = _remap(state, _magicleap_key, source)
            conf = {"batch_norm": False}
    elif fmt == "rpautrat_v6":
        mapped = _remap(strip_module_prefix(obj), _rpautrat_key, source)
        conf = {
            "batch_norm": True,
            "batch_norm_order": "relu_bn",
            "batch_norm_eps": 1e-3,
        }
    else:
        mapped = _remap(strip_module_prefix(obj), _magicleap_key, source)
        conf = {"batch_norm": False, **MAGICLEAP_FRONTEND}
    conf.update(_widths(mapped, source))
    return fmt, mapped, {"name": "superpoint", **conf}


def _widths(state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Architecture widths read from the conv weights (``name.0.weight``)."""

    def out_channels(name: str) -> int:
        key = f"{name}.0.weight"
        if key not in state:
            raise UserError(
                f"weights '{source}' do not match the model: missing key '{key}'"
            )
        return int(state[key].shape[0])

    conf: dict[str, Any] = {
        "input_channels": int(state.get("conv1a.0.weight", torch.zeros(1, 1)).shape[1]),
        "channels": [out_channels(n) for n in ("conv1b", "conv2b", "conv3b", "conv4b")],
        "head_channels": out_channels("convPa"),
    }
    has_descriptor = any(k.startswith("convD") for k in state)
    conf["descriptor_head"] = has_descriptor
    if has_descriptor:
        conf["descriptor_dim"] = out_channels("convDb")
    return conf


def load_model(
    path: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, str]:
    """Build and load a model from any supported weight file.

    Args:
        path: engine checkpoint or foreign weight file.
        overrides: model config entries to replace (post-processing, usually).

    Returns:
        ``(model, format)``; the model is on CPU in eval mode.
    """
    from models import build_model
    from utils.io import load_checkpoint

    obj = load_checkpoint(path)
    fmt, state, conf = convert_state_dict(obj, str(path))
    conf = {**conf, **(overrides or {})}
    model = build_model(conf)
    check_and_load_state_dict(model, state, str(path))
    return model.eval(), fmt


def load_initial_weights(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Start training from the weights of another run or a published file.

    Every tensor of the file must fit a parameter or buffer of ``model`` (same name after
    the key maps of :func:`convert_state_dict`, same shape); parameters the file lacks keep
    their fresh initialisation, which is how a SuperPoint starts from a MagicPoint (the
    descriptor head is new). Returns the names of those parameters.

    Raises:
        UserError: missing or unreadable file, unknown format, a tensor the model has no
            place for (named), or a file sharing nothing with the model.
    """
    from utils.io import load_checkpoint

    _, state, _ = convert_state_dict(load_checkpoint(path), str(path))
    return check_and_load_state_dict(model, state, str(path), allow_missing=True)


ARCHITECTURE_KEYS = (
    "input_channels",
    "channels",
    "head_channels",
    "batch_norm",
    "batch_norm_order",
    "batch_norm_eps",
)


def architecture_overrides(path: str | Path) -> list[str]:
    """``model.key=value`` overrides giving a config the network shape of a weight file.

    Used to fine-tune from a checkpoint whose widths differ from a config's (the demo starts
    its real-image rounds from the half-width CPU MagicPoint), e.g.
    ``['model.channels=[32,32,64,64]', 'model.head_channels=128', ...]``.
    """
    import json

    from utils.io import load_checkpoint

    _, _, conf = convert_state_dict(load_checkpoint(path), str(path))
    return [
        f"model.{key}={json.dumps(conf[key], separators=(',', ':'))}"
        for key in ARCHITECTURE_KEYS
        if key in conf
    ]


@torch.inference_mode()
def reference_frontend(
    model: torch.nn.Module,
    image: np.ndarray,
    conf_thresh: float = 0.015,
    nms_dist: int = 4,
    border: int = 4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MagicLeap-style ``SuperPointFrontend.run``: fp32, NumPy post-processing, greedy NMS.

    Args:
        model: SuperPoint (its ``encode`` and heads are used, fp32).
        image: ``(H, W)`` float32 in [0, 1], H and W multiples of 8.

    Returns:
        ``keypoints`` ``(N, 2)`` (x, y), ``scores`` ``(N,)`` by decreasing score and
        ``descriptors`` ``(N, D)``.
    """
    h, w = image.shape
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    features = model.encode(x)
    semi = model.convPb(model.convPa(features))[0].numpy()
    coarse = model.convDb(model.convDa(features))
    coarse = coarse / coarse.norm(dim=1, keepdim=True)
    dense = np.exp(semi - semi.max(axis=0, keepdims=True))
    dense = dense / dense.sum(axis=0, keepdims=True)
    nodust = dense[:-1].transpose(1, 2, 0)
    hc, wc = h // 8, w // 8
    heatmap = nodust.reshape(hc, wc, 8, 8).transpose(0, 2, 1, 3).reshape(h, w)
    scores = np.where(heatmap >= conf_thresh, heatmap, 0.0)
    kept = greedy_nms(scores, nms_dist, threshold=0.0)
    inside = (
        (kept[:, 0] >= border)
        & (kept[:, 0] < w - border)
        & (kept[:, 1] >= border)
        & (kept[:, 1] < h - border)
    )
    kept = kept[inside]
    values = heatmap[kept[:, 1], kept[:, 0]].astype(np.float32)
    points = torch.from_numpy(kept.astype(np.float32))
    grid = torch.stack([points[:, 0] / (w / 2) - 1, points[:, 1] / (h / 2) - 1], -1)
    desc = F.grid_sample(coarse, grid[None, None], align_corners=True)[0, :, 0]
    desc = desc / desc.norm(dim=0, keepdim=True)
    return kept.astype(np.float32), values, desc.t().numpy()


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


def main(argv: list[str] | None = None) -> int:
    """``python -m models.weights CKPT``: the architecture overrides of a weight file."""
    from utils.arguments import ArgumentParser
    from utils.errors import run_cli

    parser = ArgumentParser(
        prog="python -m models.weights",
        description="Print the model.* overrides (one line) that give a config the "
        "network widths of a weight file, e.g. to start a run from it with "
        "train.init_weights.",
    )
    parser.add_argument(
        "checkpoint",
        help="a train_*.py checkpoint or a published SuperPoint file "
        "(superpoint_v1.pth, superpoint_v6_from_tf.pth, pytorch-superpoint)",
    )
    args = parser.parse_args(argv)

    def run() -> int:
        print(" ".join(architecture_overrides(args.checkpoint)))
        return 0

    return run_cli(run, parser.prog)


if __name__ == "__main__":
    import sys

    sys.exit(main())
