"""Extract local features from images with any model or an OpenCV baseline.

``python extract.py --model sift|orb|CHECKPOINT --images FILES|LIST.txt|DIR ...`` writes
one ``<image>.<tag>`` file per image (an ``.npz`` archive, whatever the extension), the
layout of the D2-Net/R2D2 evaluation scripts:

- ``keypoints``: (N, 2) float32 (x, y) pixels, centre of the top-left pixel at (0, 0),
  in the frame of the image actually processed (after ``--max-size``/``--resize``);
  (N, 3) (x, y, scale) for multi-scale models (R2D2: scale = 32 / pyramid factor, as
  NAVER's ``extract.py`` writes it);
- ``scores``: (N,) float32 detection scores, best first;
- ``descriptors``: (N, D), absent for detector-only models (MagicPoint). SIFT: float32,
  L2-normalised (so the D2-Net mutual-NN matcher works on them). ORB: uint8 packed bits
  (N, 32) as OpenCV returns them; :mod:`geometry.matching` compares them by Hamming
  distance;
- ``imsize``: (2,) int (width, height) of the processed image; ``original_imsize`` the
  same for the file on disk;
- ``provenance``: a JSON record of where the features came from (the weights file's
  SHA-256 or ``sift``/``orb`` with the OpenCV version, the options, the preprocessing and
  the image size; see ``datasets.features``).

An existing output is reused only when its record matches this run; otherwise it is
re-extracted and counted as stale (``--no-overwrite`` refuses instead, naming the first
stale file; ``--overwrite`` redoes everything). The default tag names the run of a
checkpoint (``logs/<run>/checkpoints/best.pt`` gives ``<run>-best``) plus the settings.
Every file is written to a temporary name, then renamed. ``--h5 FILE`` writes one HDF5
file instead (the hloc layout: one group per image, named by its path relative to the
input folder, holding ``keypoints``, ``descriptors``, ``scores`` and ``image_size``, and
the record in the group's ``provenance`` attribute).

Models: ``sift`` and ``orb`` (OpenCV) or a local checkpoint path handed to
``models.load_extractor``: MagicPoint/SuperPoint (ours or foreign weights) and R2D2
(``train_r2d2.py`` runs or NAVER's published files such as ``r2d2_WASF_N16.pt``, with
the published multi-scale defaults). The model's options are positional ``key=value``
overrides: ``nms_radius=4 detection_threshold=0.005`` (SuperPoint), ``reliability_thr=0.7
max_size=1024`` (R2D2), ``top_k=1000`` (any model), and for learned models ``precision``
(``--precision``, ``engine.devices``) and ``channels_last``; a misspelled key is one line
naming the closest one. In the HDF5 layout keypoints stay (N, 2) and R2D2 scales go to
``scales``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from datasets.hpatches import parse_resize
from engine.devices import add_device_argument, add_precision_argument
from models.extractor import build_extractor
from pipelines.extraction import (
    collect_images,
    default_tag,
    extract_to_files,
    extract_to_h5,
)
from utils.arguments import ArgumentParser
from utils.config import parse_overrides
from utils.errors import UserError, run_cli


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options of a command line: its ``key=value`` overrides, with
    ``--top-k`` and ``--precision`` (which win over ``top_k=``/``precision=``).

    ``args.top_k`` is set from ``top_k=`` when ``--top-k`` is absent, so output tags
    and the keypoint budget agree whichever spelling was used."""
    conf = parse_overrides(args.overrides)
    if args.top_k is not None:
        conf["top_k"] = args.top_k
    elif isinstance(conf.get("top_k"), int) and not isinstance(conf["top_k"], bool):
        args.top_k = conf["top_k"]
    if args.precision is not None:
        conf["precision"] = args.precision
    return conf


def track(args: argparse.Namespace, conf: dict[str, Any]) -> int:
    """``--video SOURCE --track --out OUT``: see :func:`pipelines.tracking.run_tracking`."""
    from pipelines.tracking import run_tracking

    if args.video is None or not args.track or args.out is None:
        raise UserError("tracking needs --video FILE|FRAMES_DIR, --track and --out")
    if not Path(args.video).exists():
        raise UserError(f"video '{args.video}' not found")
    extractor = build_extractor(args.model, args.device, conf)
    stats = run_tracking(
        args.video,
        extractor,
        args.out,
        nn_thresh=args.nn_thresh,
        max_length=args.max_length,
        max_frames=args.max_frames,
    )
    summary = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in stats.items()
        if not isinstance(v, (list, dict))
    )
    print(f"tracking: {summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="extract.py",
        description=(
            "Extract keypoints, scores and descriptors into <image>.<tag> npz files "
            "(or one HDF5 file)."
        ),
    )
    parser.add_argument(
        "--model", required=True, help="sift, orb, or a local checkpoint path"
    )
    parser.add_argument(
        "--images",
        nargs="+",
        default=None,
        help="image files, .txt lists of paths, or folders (searched recursively)",
    )
    parser.add_argument(
        "--video",
        default=None,
        help="a video file or a folder of frames (with --track)",
    )
    parser.add_argument(
        "--track",
        action="store_true",
        help="track keypoints through --video: two-way NN matching frame to frame",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="tracking output: a .mp4/.avi video or a folder of annotated frames",
    )
    parser.add_argument(
        "--nn-thresh", type=float, default=0.7, help="tracking descriptor distance"
    )
    parser.add_argument(
        "--max-length", type=int, default=5, help="tracking: positions drawn per track"
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=0,
        help="tracking: stop after N frames (0: all)",
    )
    parser.add_argument(
        "--tag",
        default=None,
        help="output extension (default: the model, naming a checkpoint's run, e.g. "
        "<run>-best, and the settings, e.g. -k1000)",
    )
    parser.add_argument(
        "--out-dir",
        default=None,
        help="write outputs here (mirroring input names) instead of next to the images",
    )
    parser.add_argument("--top-k", type=int, default=None, help="keep the best K")
    parser.add_argument(
        "--max-size", type=int, default=None, help="downscale so the long side <= N"
    )
    parser.add_argument(
        "--resize",
        default="none",
        help="protocol resize: none | HxW (crop to aspect, then resize) | shortN | maxN",
    )
    parser.add_overrides(
        "model options, e.g. detection_threshold=0.015 nms_radius=4 (SuperPoint) or "
        "reliability_thr=0.7 max_size=1024 (R2D2), precision=bf16 channels_last=false"
    )
    parser.add_argument("--h5", default=None, help="write one HDF5 file instead")
    add_device_argument(parser)
    add_precision_argument(
        parser, None, note="learned models; default fp32, as the references"
    )
    redo = parser.add_mutually_exclusive_group()
    redo.add_argument(
        "--overwrite",
        action="store_true",
        help="re-extract every image, even up-to-date",
    )
    redo.add_argument(
        "--no-overwrite",
        action="store_true",
        help="refuse to replace an existing output written by another model or with "
        "other settings (default: re-extract it and report it as stale)",
    )
    parser.add_argument(
        "--skip-bad", action="store_true", help="warn and go on when an image is bad"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line of ``extract.py`` (see the module docstring)."""
    args = build_parser().parse_args(argv)

    def run() -> int:
        conf = model_options(args)
        if args.top_k is not None and args.top_k < 1:
            raise UserError(f"invalid --top-k {args.top_k}: expected a positive number")
        resize = args.resize
        if args.max_size is not None:
            if args.max_size < 1 or str(parse_resize(resize)) != "none":
                raise UserError("--max-size needs a positive N and no --resize")
            resize = f"max{args.max_size}"
        parse_resize(resize)
        if args.video is not None or args.track:
            return track(args, conf)
        if not args.images:
            raise UserError(
                "nothing to extract: give --images (or --video with --track)"
            )
        images = collect_images(args.images)
        extractor = build_extractor(args.model, args.device, conf)
        tag = args.tag or default_tag(extractor.tag, args.top_k, resize)
        if args.h5:
            report = extract_to_h5(
                extractor,
                images,
                Path(args.h5),
                resize,
                args.top_k,
                args.overwrite,
                args.skip_bad,
                no_overwrite=args.no_overwrite,
            )
        else:
            out_dir = Path(args.out_dir) if args.out_dir else None
            jobs = [
                (
                    path,
                    (out_dir / f"{name}.{tag}")
                    if out_dir
                    else path.with_name(f"{path.name}.{tag}"),
                )
                for path, name in images
            ]
            report = extract_to_files(
                extractor,
                jobs,
                resize,
                args.top_k,
                args.overwrite,
                args.skip_bad,
                no_overwrite=args.no_overwrite,
            )
        print(f"{tag}: {report.summary()}")
        return 0

    return run_cli(run, "extract.py")


if __name__ == "__main__":
    sys.exit(main())
