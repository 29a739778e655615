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
  (N, 32) as OpenCV returns them; :mod:`utils.matching` compares them by Hamming
  distance;
- ``imsize``: (2,) int (width, height) of the processed image; ``original_imsize`` the
  same for the file on disk.

Finished outputs are skipped (``--overwrite`` to redo them) and every file is written to
a temporary name, then renamed. ``--h5 FILE`` writes one HDF5 file instead (the hloc
layout: one group per image, named by its path relative to the input folder, holding
``keypoints``, ``descriptors``, ``scores`` and ``image_size``).

Models: ``sift`` and ``orb`` (OpenCV) or a local checkpoint path handed to
``models.load_extractor``: MagicPoint/SuperPoint (ours or foreign weights) and R2D2
(``train_r2d2.py`` runs or NAVER's published files such as ``r2d2_WASF_N16.pt``, with
the published multi-scale defaults; ``--conf`` takes ``reliability_thr``,
``repeatability_thr``, ``min_size``, ``max_size``, ``scale_f``, ``precision=bf16``...).
In the HDF5 layout keypoints stay (N, 2) and R2D2 scales go to ``scales``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from tqdm import tqdm

from datasets.hpatches import (
    IMAGE_EXTENSIONS,
    parse_resize,
    preprocess_image,
    read_image,
)
from utils.errors import UserError, run_cli
from utils.hpatches_metrics import top_k_indices

ORB_DEFAULT_FEATURES = 1000
"""ORB keeps this many keypoints when no ``--top-k`` is given (OpenCV's default: 500)."""


class Extractor(Protocol):
    """What :func:`extract_image` needs from a feature extractor."""

    tag: str
    grayscale: bool

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Features of a uint8 image (H, W) or (H, W, 3): ``keypoints`` (N, 2),
        ``scores`` (N,), optional ``descriptors`` (N, D)."""
        ...


class OpenCVExtractor:
    """SIFT or ORB from OpenCV on the grayscale image.

    Args:
        kind: ``sift`` or ``orb``.
        top_k: keep the ``top_k`` strongest responses (SIFT default: all; ORB default:
            :data:`ORB_DEFAULT_FEATURES`).
    """

    grayscale = True

    def __init__(self, kind: str, top_k: int | None = None):
        self.tag = kind
        self.top_k = top_k
        if kind == "sift":
            self.detector = cv2.SIFT_create(nfeatures=top_k or 0)
        elif kind == "orb":
            self.detector = cv2.ORB_create(nfeatures=top_k or ORB_DEFAULT_FEATURES)
        else:
            raise ValueError(f"unknown OpenCV extractor {kind!r}")

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        kps, desc = self.detector.detectAndCompute(image, None)
        dim, dtype = (128, np.float32) if self.tag == "sift" else (32, np.uint8)
        if desc is None or not kps:
            desc = np.zeros((0, dim), dtype)
        keypoints = np.array([kp.pt for kp in kps], np.float32).reshape(-1, 2)
        scores = np.array([kp.response for kp in kps], np.float32)
        if self.tag == "sift":
            desc = desc.astype(np.float32)
            desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return {"keypoints": keypoints, "scores": scores, "descriptors": desc}


class ModelExtractor:
    """A learned model from a local checkpoint, through ``models.load_extractor``.

    Args:
        path: checkpoint file.
        device: ``cpu``, ``cuda``, ``cuda:i`` or ``auto``.
        conf: post-processing overrides the model understands
            (``detection_threshold``, ``nms_radius``, ``top_k``, ``remove_borders``).
    """

    def __init__(self, path: str, device: str = "cpu", conf: dict | None = None):
        import torch

        try:
            from models import load_extractor
        except ImportError as err:
            raise UserError(
                f"{path}: model checkpoints need models.load_extractor, which is not "
                f"available ({err})"
            ) from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if not Path(path).is_file():
            raise UserError(f"{path}: checkpoint file does not exist")
        self.device = device
        self.model = load_extractor(path, device=device, conf=conf)
        self.tag = str(getattr(self.model, "tag", Path(path).stem))
        self.grayscale = bool(getattr(self.model, "grayscale", True))

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        import torch

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


def extractor_options(model: str) -> tuple[str, ...]:
    """The ``conf`` keys :func:`build_extractor` accepts for ``model``."""
    if model.lower() in ("sift", "orb"):
        return ("top_k",)
    from models.extractor import extractor_options as checkpoint_options

    return checkpoint_options(model)


def build_extractor(
    model: str, device: str = "cpu", conf: dict | None = None
) -> Extractor:
    """``sift``/``orb`` (OpenCV) or a checkpoint path (``models.load_extractor``)."""
    conf = dict(conf or {})
    if model.lower() in ("sift", "orb"):
        unknown = set(conf) - {"top_k"}
        if unknown:
            raise UserError(
                f"--conf {sorted(unknown)} not understood by {model} (only top_k)"
            )
        return OpenCVExtractor(model.lower(), conf.get("top_k"))
    return ModelExtractor(model, device=device, conf=conf)


def extract_image(
    extractor: Extractor,
    path: str | Path,
    resize: str = "none",
    top_k: int | None = None,
) -> dict[str, np.ndarray]:
    """Read, preprocess and describe one image; returns the arrays of the output file.

    Raises:
        UserError: the image is missing or cannot be decoded.
    """
    image = read_image(path, gray=extractor.grayscale)
    original = image.shape[:2]
    image = preprocess_image(image, resize)
    feats = extractor(image)
    keypoints = np.asarray(feats["keypoints"], np.float32).reshape(-1, 2)
    scores = np.asarray(feats.get("scores", np.ones(len(keypoints))), np.float32)
    keep = top_k_indices(scores, len(keypoints), top_k)
    if feats.get("scales") is not None:
        scales = np.asarray(feats["scales"], np.float32).reshape(-1, 1)
        keypoints = np.concatenate([keypoints, scales], axis=1)
    out = {
        "keypoints": keypoints[keep],
        "scores": scores[keep],
        "imsize": np.array([image.shape[1], image.shape[0]], np.int64),
        "original_imsize": np.array([original[1], original[0]], np.int64),
    }
    if feats.get("descriptors") is not None:
        out["descriptors"] = np.asarray(feats["descriptors"])[keep]
    return out


def write_features(path: str | Path, feats: dict[str, np.ndarray]) -> None:
    """Write an npz archive to ``path`` (any extension) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # A file object stops numpy from appending ".npz" to the name.
    with open(tmp, "wb") as f:
        np.savez(f, **feats)
    os.replace(tmp, path)


def collect_images(inputs: list[str]) -> list[tuple[Path, str]]:
    """Expand files, ``.txt`` lists and folders into ``(path, relative name)`` pairs.

    Folders are searched recursively for image files and names are relative to the
    folder; list entries are relative to the list's folder unless absolute.

    Raises:
        UserError: a path that does not exist, or no image at all.
    """
    found: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            found += [(p, p.relative_to(path).as_posix()) for p in files]
        elif path.suffix.lower() == ".txt":
            if not path.is_file():
                raise UserError(f"{path}: image list does not exist")
            for line in path.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                entry = Path(line)
                found.append(
                    (entry if entry.is_absolute() else path.parent / entry, line)
                )
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise UserError(f"{path}: no such image, list or folder")
    if not found:
        raise UserError(f"no images found in {' '.join(inputs)}")
    return found


def default_tag(base: str, top_k: int | None, resize: str) -> str:
    """Output tag encoding the settings, e.g. ``sift``, ``sift-k1000-240x320``."""
    parts = [base]
    if top_k:
        parts.append(f"k{top_k}")
    if str(parse_resize(resize)) != "none":
        parts.append(str(parse_resize(resize)))
    return "-".join(parts)


@dataclass
class ExtractionReport:
    """Counts of one extraction run."""

    written: int = 0
    skipped: int = 0
    failed: int = 0


def _extract_or_skip(
    extractor: Extractor,
    image: Path,
    resize: str,
    top_k: int | None,
    skip_bad: bool,
    report: ExtractionReport,
) -> dict[str, np.ndarray] | None:
    """Features of one image; with ``skip_bad`` a bad image warns, counts as failed, None."""
    try:
        return extract_image(extractor, image, resize, top_k)
    except UserError as err:
        if not skip_bad:
            raise
        print(f"warning: skipped: {err}", file=sys.stderr)
        report.failed += 1
        return None


def extract_to_files(
    extractor: Extractor,
    jobs: list[tuple[Path, Path]],
    resize: str = "none",
    top_k: int | None = None,
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
) -> ExtractionReport:
    """Extract ``(image, output)`` jobs, skipping outputs that already exist.

    Raises:
        UserError: a bad image, unless ``skip_bad`` (then a warning, counted failed).
    """
    report = ExtractionReport()
    todo = [(i, o) for i, o in jobs if overwrite or not o.is_file()]
    report.skipped = len(jobs) - len(todo)
    for image, output in tqdm(
        todo, desc=f"extract {extractor.tag}", disable=not progress
    ):
        feats = _extract_or_skip(extractor, image, resize, top_k, skip_bad, report)
        if feats is None:
            continue
        write_features(output, feats)
        report.written += 1
    return report


def extract_to_h5(
    extractor: Extractor,
    images: list[tuple[Path, str]],
    h5_path: Path,
    resize: str = "none",
    top_k: int | None = None,
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
) -> ExtractionReport:
    """Extract into one HDF5 file (hloc layout); groups already present are skipped.

    The file is updated through a temporary copy, so an interrupted run leaves the
    previous file intact.
    """
    import h5py

    report = ExtractionReport()
    h5_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = h5_path.with_name(f".{h5_path.name}.tmp")
    if h5_path.is_file():
        shutil.copyfile(h5_path, tmp)
    try:
        with h5py.File(tmp, "a") as h5:
            for path, name in tqdm(
                images, desc=f"extract {extractor.tag}", disable=not progress
            ):
                if name in h5 and not overwrite:
                    report.skipped += 1
                    continue
                feats = _extract_or_skip(
                    extractor, path, resize, top_k, skip_bad, report
                )
                if feats is None:
                    continue
                if name in h5:
                    del h5[name]
                group = h5.create_group(name)
                group.create_dataset("keypoints", data=feats["keypoints"][:, :2])
                if feats["keypoints"].shape[1] == 3:
                    group.create_dataset("scales", data=feats["keypoints"][:, 2])
                group.create_dataset("scores", data=feats["scores"])
                group.create_dataset("image_size", data=feats["imsize"])
                group.create_dataset(
                    "original_image_size", data=feats["original_imsize"]
                )
                if "descriptors" in feats:
                    group.create_dataset("descriptors", data=feats["descriptors"])
                report.written += 1
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{h5_path}: cannot write HDF5 file ({err})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, h5_path)
    return report


def parse_conf(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings to a dict; numbers become int/float, none/true/false too."""
    conf: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"invalid --conf {item!r}: expected key=value")
        key, value = item.split("=", 1)
        lowered = value.strip().lower()
        parsed: Any = value
        if lowered in ("none", "null"):
            parsed = None
        elif lowered in ("true", "false"):
            parsed = lowered == "true"
        else:
            for cast in (int, float):
                try:
                    parsed = cast(value)
                    break
                except ValueError:
                    continue
        conf[key.strip()] = parsed
    return conf


def track(args: argparse.Namespace, conf: dict[str, Any]) -> int:
    """``--video SOURCE --track --out OUT``: see :func:`utils.tracking.run_tracking`."""
    from utils.tracking import run_tracking

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
    parser = argparse.ArgumentParser(
        prog="extract.py",
        description=(
            "Extract keypoints, scores and descriptors into <image>.<tag> npz files "
            "(or one HDF5 file)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        "--tag", default=None, help="output extension (default: model + settings)"
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
    parser.add_argument(
        "--conf",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="model post-processing, e.g. detection_threshold=0.015 nms_radius=4 "
        "(SuperPoint) or reliability_thr=0.7 max_size=1024 precision=bf16 (R2D2)",
    )
    parser.add_argument("--h5", default=None, help="write one HDF5 file instead")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--overwrite", action="store_true", help="redo finished ones")
    parser.add_argument(
        "--skip-bad", action="store_true", help="warn and go on when an image is bad"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line of ``extract.py`` (see the module docstring)."""
    args = build_parser().parse_args(argv)

    def run() -> int:
        if args.top_k is not None and args.top_k < 1:
            raise UserError(f"invalid --top-k {args.top_k}: expected a positive number")
        resize = args.resize
        if args.max_size is not None:
            if args.max_size < 1 or str(parse_resize(resize)) != "none":
                raise UserError("--max-size needs a positive N and no --resize")
            resize = f"max{args.max_size}"
        parse_resize(resize)
        conf = parse_conf(args.conf)
        if args.top_k is not None:
            conf["top_k"] = args.top_k
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
            )
        print(
            f"{tag}: {report.written} written, {report.skipped} already done, "
            f"{report.failed} failed"
        )
        return 0

    return run_cli(run, "extract.py")


if __name__ == "__main__":
    sys.exit(main())
