"""Reconstruct images from their sparse features with trained inversion networks.

Shared by ``export.py reconstruct`` (this module's :func:`export_main`: writes one PNG per
image) and ``evaluation.py inversion`` (:mod:`evaluators.inversion`):

* :func:`load_networks` reads a ``train_reconstruct.py`` checkpoint and, optionally, a
  ``train_refine.py`` one (which holds its own coarse network), refusing files of other
  tasks or whose input channels disagree;
* :func:`evaluation_dataset` builds the images and sparse inputs from the checkpoint's own
  ``data`` section with the command's overrides (images, ``--features TAG`` or ``--model
  EXTRACTOR``, kept fraction, size), and refuses features whose descriptor size does not give
  the network's input channels.

Images are resized so that their short side is ``--size`` (default: the checkpoint's
``data.eval_size``; 0 keeps the original size) and processed whole, one at a time.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import torch
from tqdm import tqdm

from datasets.inversion import InversionDataset
from engine.devices import (
    AutocastCall,
    add_device_argument,
    add_precision_argument,
    inference_precision,
    resolve_device,
)
from models.inversion import InversionModel, to_uint8_image
from models.refiner import RefinerModel
from utils.arguments import ArgumentParser
from utils.errors import UserError, run_cli
from utils.io import atomic_write_image, ensure_writable_dir, load_checkpoint


@dataclass
class InversionNetworks:
    """A coarse network, an optional refiner and the coarse run's data section; they
    run at ``precision`` (resolved: ``fp32``, ``bf16`` or ``fp16`` autocast)."""

    coarse: InversionModel
    refiner: RefinerModel | None
    data_conf: dict[str, Any]
    in_channels: int
    source: str
    precision: str = "fp32"

    def predict(self, sparse: torch.Tensor) -> dict[str, torch.Tensor]:
        """``coarse`` (and ``refined``) images ``(B, C_out, H, W)`` float32 in [0, 1]
        from the sparse input ``(B, C_in, H, W)``."""
        device = sparse.device
        coarse = AutocastCall(self.coarse, device, self.precision)
        out = {"coarse": coarse({"input": sparse})["image"]}
        if self.refiner is not None:
            refiner = AutocastCall(self.refiner, device, self.precision)
            out["refined"] = refiner({"input": sparse})["image"]
        return out


def _read_run(path: str, name: str, script: str) -> dict[str, Any]:
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise UserError(
            f"checkpoint '{path}' is not a {script} checkpoint (no 'model'/'config')"
        )
    found = ckpt["config"].get("model", {}).get("name")
    if found != name:
        raise UserError(
            f"checkpoint '{path}' holds a {found!r} model, expected {name!r} ({script})"
        )
    return ckpt


def _load_state(model: torch.nn.Module, state: dict, path: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise UserError(
            f"checkpoint '{path}' does not fit its own config: {first}"
        ) from None


def load_networks(
    checkpoint: str,
    refiner: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
) -> InversionNetworks:
    """Networks of a ``train_reconstruct.py`` (and ``train_refine.py``) checkpoint, in eval
    mode on ``device``, to run at ``precision`` (``engine.devices.PRECISIONS``; these
    networks have no int8 path); no loss weights (VGG16) are needed."""
    target = resolve_device(device)
    resolved = inference_precision(precision, target, network="the inversion networks")
    ckpt = _read_run(checkpoint, "inversion", "train_reconstruct.py")
    conf = ckpt["config"]
    coarse = InversionModel(conf["model"], {"perceptual": 0.0})
    _load_state(coarse, ckpt["model"], checkpoint)
    refined = None
    if refiner:
        rckpt = _read_run(refiner, "refiner", "train_refine.py")
        rconf = rckpt["config"]["model"]
        if rconf["in_channels"] != conf["model"]["in_channels"]:
            raise UserError(
                f"refiner '{refiner}' takes {rconf['in_channels']} input channels, the "
                f"coarse checkpoint '{checkpoint}' {conf['model']['in_channels']}: they "
                "were trained on different features"
            )
        loss = {"perceptual": 0.0, "adversarial": 0.0}
        refined = RefinerModel(rconf, loss).eval().to(target)
        _load_state(refined, rckpt["model"], refiner)
    return InversionNetworks(
        coarse.eval().to(target),
        refined,
        dict(conf["data"]),
        conf["model"]["in_channels"],
        checkpoint,
        resolved,
    )


def evaluation_dataset(
    networks: InversionNetworks,
    images: str,
    features: str | None = None,
    model: str | None = None,
    keep: float = 1.0,
    size: int | None = None,
    max_points: int | None = None,
    extractor_conf: dict[str, Any] | None = None,
    device: str = "cpu",
    extractor: Any = None,
    features_dir: str | None = None,
) -> InversionDataset:
    """Whole images (resized to ``size``) with sparse inputs built as the network was trained.

    Args:
        networks: from :func:`load_networks` (its ``data_conf`` gives the channel options).
        images: folder, ``.txt`` list or ``builtin[:split]``.
        features: tag of ``extract.py`` files; or ``model``: an online extractor (``sift``,
            ``orb``, a checkpoint). Neither: the checkpoint's own data setting.
        keep: fraction of the (at most ``max_points``) keypoints kept, drawn at random with
            a fixed seed per image.
        extractor: an already built online extractor to reuse.
        features_dir: folder of the feature files (default: the checkpoint's setting,
            else next to the images).

    Raises:
        UserError: bad images or feature files, or features giving another channel count.
    """
    if features and model:
        raise UserError("give --features TAG or --model EXTRACTOR, not both")
    conf = {k: v for k, v in networks.data_conf.items() if k != "val_images"}
    conf.update(images=images, crop=0, keep_range=[keep, keep], repeat=1)
    if size is not None:
        conf["eval_size"] = size
    if max_points is not None:
        conf["max_points"] = max_points
    if features:
        conf.update(features=features)
    if features_dir:
        conf["features_dir"] = features_dir
    if model:
        conf.update(features="online", extractor=model)
        conf["extractor_conf"] = dict(extractor_conf or {})
    if conf["features"] == "online":
        conf["extractor_device"] = device
    dataset = InversionDataset(conf, "val", extractor=extractor)
    if dataset.input_channels != networks.in_channels:
        raise UserError(
            f"{dataset.describe_input()}, but the network of '{networks.source}' takes "
            f"{networks.in_channels} input channels"
        )
    return dataset


def add_input_arguments(parser: ArgumentParser) -> None:
    """Options shared by ``export.py reconstruct`` and ``evaluation.py inversion``."""
    parser.add_argument(
        "--checkpoint", required=True, help="train_reconstruct.py checkpoint (coarse)"
    )
    parser.add_argument("--refiner", help="train_refine.py checkpoint (optional)")
    parser.add_argument(
        "--images",
        required=True,
        help="folder, .txt list of image paths, or builtin[:train|:test|:all]",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--features", help="tag of extract.py feature files (<image>.<tag>)"
    )
    source.add_argument(
        "--model", help="extract online with sift, orb or a checkpoint instead"
    )
    parser.add_argument(
        "--features-dir", help="folder of the feature files (extract.py --out-dir)"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="short side of the processed images, 0 keeps the original size "
        "(None: the checkpoint's data.eval_size)",
    )
    parser.add_argument(
        "--max-points",
        type=int,
        default=None,
        help="keypoints kept at most, strongest first (None: the checkpoint's "
        "data.max_points)",
    )
    add_device_argument(parser)
    add_precision_argument(parser, "fp32", note="of the inversion networks; no int8")
    parser.add_overrides(
        "settings; extractor_conf.KEY=VALUE: options of the --model extractor "
        "(as extract.py's, e.g. extractor_conf.precision=bf16)",
        keys="options",
        sections=("extractor_conf",),
    )


def extractor_conf(args: argparse.Namespace) -> dict[str, Any]:
    """The ``extractor_conf.KEY=VALUE`` overrides of a command line, for ``--model``.

    Raises:
        UserError: overrides without ``--model``, or one that is not a mapping.
    """
    from utils.config import parse_overrides

    conf = parse_overrides(args.overrides).get("extractor_conf", {})
    if not isinstance(conf, dict):
        raise UserError(f"extractor_conf expects a mapping, got {conf!r}")
    if conf and not args.model:
        raise UserError("extractor_conf sets the options of --model (online features)")
    return conf


def export_main(argv: list[str] | None = None) -> int:
    """``export.py reconstruct``: one reconstructed PNG per image (see module docstring)."""
    parser = ArgumentParser(
        prog="export.py reconstruct",
        description="Reconstruct images from their sparse features; writes "
        "<out>/<image name>.png (the refined image when --refiner is given).",
    )
    add_input_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--keep", type=float, default=1.0, help="fraction of the keypoints kept"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="redo images already written"
    )
    args = parser.parse_args(argv)

    def run() -> int:
        if not 0 < args.keep <= 1:
            raise UserError(f"--keep {args.keep}: expected a fraction in (0, 1]")
        networks = load_networks(
            args.checkpoint, args.refiner, args.device, args.precision
        )
        dataset = evaluation_dataset(
            networks,
            args.images,
            args.features,
            args.model,
            args.keep,
            args.size,
            args.max_points,
            extractor_conf=extractor_conf(args),
            device=args.device,
            features_dir=args.features_dir,
        )
        out = ensure_writable_dir(args.out)
        written = skipped = 0
        device = next(networks.coarse.parameters()).device
        for index in tqdm(range(len(dataset)), desc="reconstruct"):
            name = dataset.sources[index].name
            path = out / f"{Path(name).with_suffix('')}.png"
            if path.is_file() and not args.overwrite:
                skipped += 1
                continue
            sample = dataset[index]
            images = networks.predict(sample["input"][None].to(device))
            image = to_uint8_image(images.get("refined", images["coarse"])[0])
            if image.ndim == 3:
                image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            atomic_write_image(path, image)
            written += 1
        print(f"reconstruct: {written} written, {skipped} already done, in {out}")
        return 0

    return run_cli(run, "export.py reconstruct")
