"""Real images for homographic adaptation and MagicPoint training: COCO, KITTI, any folder.

The same loader lists the images of three layouts (``data.layout``) plus the built-in photos:

* ``folder``: every image file under ``root`` (recursively, sorted); the last
  ``val_fraction`` of them form the ``val`` split, the rest ``train``;
* ``coco``: COCO 2014, ``root/train2014/*.jpg`` (train) and ``root/val2014/*.jpg`` (val);
* ``kitti``: KITTI raw; ``split_files.<split>`` lists one entry per line, either a drive
  folder relative to ``root`` (e.g. ``2011_09_26/2011_09_26_drive_0001_sync``), whose
  ``<camera>/data/*.png`` frames are all used for each camera of ``kitti_cameras``, or a
  single frame file relative to ``root``; a missing entry is an error naming the split file
  and line. Without a split file every drive folder under ``root`` is used.
* ``root: builtin``: the photographs bundled with scikit-image (no download), for demos.

The split ``all`` is the union of every split (what the HA export uses by default). An
image is named by its path relative to ``root`` without extension; HA labels for it live in
``labels_dir/<name>.npz`` (``points`` (N, 2) (x, y), ``image_size`` (2,) H, W).

:class:`ImageFolder` (``data.name: image_folder``) yields grayscale images resized to
``image_size`` (a plain resize, as the reference's COCO pipeline) with their HA labels,
photometric and homographic augmentation keyed by (seed, index, epoch), for training
MagicPoint on real images. ``python -m datasets.image_folder --show --root DIR`` writes a
grid of samples; ``python -m datasets.image_folder --check DIR --layout coco`` checks every
image of a folder before a long run (:func:`check_images`).
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from datasets.augmentation import Augmentation, augmentation_defaults
from datasets.base import keypoint_sample
from datasets.checks import CheckReport
from datasets.hpatches import IMAGE_EXTENSIONS, read_image
from geometry.homography import (
    HOMOGRAPHY_PRESETS,
)
from utils.arguments import ArgumentParser
from utils.config import merge_config
from utils.errors import UserError, run_cli

Array = np.ndarray
LAYOUTS = ("folder", "coco", "kitti")
SPLITS = ("train", "val", "all")

# Images in the COCO 2014 release, for comparison with a checked folder.
COCO_2014_IMAGES = {"train2014": 82_783, "val2014": 40_504}
# Split files of the KITTI layout that the shipped configs read, relative to data.root.
KITTI_SPLIT_FILES = ("train.txt", "val.txt")

# Homographic augmentation of the reference's magic-point_coco_train.yaml.
COCO_HOMOGRAPHY: dict[str, Any] = HOMOGRAPHY_PRESETS["coco"]


@dataclass(frozen=True)
class ImageEntry:
    """One image: its name (relative path without extension) and file (None: built-in)."""

    name: str
    path: Path | None


@functools.cache
def _builtin_photos() -> dict[str, Array]:
    from datasets.hpatches_demo import load_photos

    return dict(load_photos("builtin"))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _kitti_entries(root: Path, split_file: Path, cameras: list[str]) -> list[Path]:
    if not split_file.is_file():
        raise UserError(f"KITTI split file '{split_file}' not found")
    files: list[Path] = []
    for number, line in enumerate(split_file.read_text().splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        target = root / entry
        if target.is_dir():
            found = [f for cam in cameras for f in _image_files(target / cam / "data")]
            if not found:
                raise UserError(
                    f"{split_file}:{number}: drive '{entry}' has no frames in "
                    f"{', '.join(c + '/data' for c in cameras)}"
                )
            files += found
        elif target.is_file():
            files.append(target)
        else:
            raise UserError(
                f"{split_file}:{number}: '{entry}' names a missing frame or drive "
                f"(looked for {target})"
            )
    return files


def list_images(conf: dict[str, Any], split: str) -> list[ImageEntry]:
    """The images of a split (see module docstring).

    Args:
        conf: the dataset config (``root``, ``layout``, ``val_fraction``, ``split_files``,
            ``kitti_cameras``, ``coco_folders``, ``max_images``: the first N images
            of the folder before the train/val split, or of the split for COCO/KITTI).
        split: ``train`` | ``val`` | ``all``.

    Raises:
        UserError: unknown layout/split, missing root or split file, or no images.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
    root_value = conf.get("root")
    if root_value in (None, ""):
        raise UserError("config key 'data.root' is not set (a folder or 'builtin')")
    layout = conf.get("layout", "folder")
    if layout not in LAYOUTS:
        raise UserError(
            f"config key 'data.layout': '{layout}' is not one of {', '.join(LAYOUTS)}"
        )
    root = Path(root_value)
    if root_value == "builtin":
        names = sorted(_builtin_photos())
        entries = [ImageEntry(n, None) for n in names]
        entries = _split_by_fraction(entries, split, conf)
    elif not root.is_dir():
        raise UserError(f"image root '{root}' is not a folder")
    elif layout == "folder":
        entries = [_entry(root, p) for p in _image_files(root)]
        entries = _split_by_fraction(entries, split, conf)
    elif layout == "coco":
        folders = conf["coco_folders"]
        parts = ["train", "val"] if split == "all" else [split]
        entries = []
        for part in parts:
            folder = root / folders[part]
            if not folder.is_dir():
                raise UserError(f"COCO folder '{folder}' not found (data.coco_folders)")
            entries += [_entry(root, p) for p in _image_files(folder)]
    else:
        files: list[Path] = []
        split_files = conf["split_files"]
        parts = ["train", "val"] if split == "all" else [split]
        if all(split_files.get(p) in (None, "") for p in parts):
            drives = sorted(d for d in root.rglob("*_sync") if d.is_dir())
            for d in drives:
                for cam in conf["kitti_cameras"]:
                    files += _image_files(d / cam / "data")
        else:
            for part in parts:
                if split_files.get(part) not in (None, ""):
                    path = Path(split_files[part])
                    files += _kitti_entries(root, path, conf["kitti_cameras"])
        entries = [_entry(root, p) for p in files]
    limit = int(conf.get("max_images", 0) or 0)
    if limit > 0 and layout != "folder":
        entries = entries[:limit]
    if not entries:
        raise UserError(
            f"no images for split '{split}' under '{root}' (layout {layout}; "
            f"extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return entries


def _entry(root: Path, path: Path) -> ImageEntry:
    return ImageEntry(path.relative_to(root).with_suffix("").as_posix(), path)


def _split_by_fraction(
    entries: list[ImageEntry], split: str, conf: dict[str, Any]
) -> list[ImageEntry]:
    # max_images limits the pool before the split so train and val stay disjoint.
    limit = int(conf.get("max_images", 0) or 0)
    if limit > 0:
        entries = entries[:limit]
    if split == "all" or len(entries) < 2:
        return entries
    n_val = min(
        len(entries) - 1, max(1, math.ceil(len(entries) * conf["val_fraction"]))
    )
    return entries[-n_val:] if split == "val" else entries[:-n_val]


def load_gray(entry: ImageEntry) -> Array:
    """Decode an entry as a grayscale uint8 ``(H, W)`` image (UserError if corrupt)."""
    if entry.path is None:
        return cv2.cvtColor(_builtin_photos()[entry.name], cv2.COLOR_RGB2GRAY)
    return read_image(entry.path, gray=True)


def resize_image(image: Array, size: tuple[int, int] | list[int]) -> Array:
    """Plain resize to ``(H, W)`` (INTER_AREA when shrinking)."""
    h, w = int(size[0]), int(size[1])
    if image.shape[:2] == (h, w):
        return image
    shrink = h < image.shape[0] or w < image.shape[1]
    return cv2.resize(
        image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def label_path(labels_dir: str | Path, name: str) -> Path:
    """Where the HA labels of image ``name`` are stored."""
    return Path(labels_dir) / f"{name}.npz"


def load_labels(labels_dir: str | Path, name: str, size: tuple[int, int]) -> Array:
    """HA keypoints of ``name`` rescaled to an image of ``size`` (H, W): ``(N, 2)`` float32.

    Raises:
        UserError: missing or unreadable label file.
    """
    path = label_path(labels_dir, name)
    if not path.is_file():
        raise UserError(
            f"labels '{path}' not found (run export.py homography_adaptation first)"
        )
    try:
        with np.load(path) as data:
            points = np.asarray(data["points"], np.float64).reshape(-1, 2)
            stored = tuple(int(v) for v in data["image_size"])
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"labels '{path}' cannot be read ({err})") from None
    if stored != tuple(size):
        sx, sy = size[1] / stored[1], size[0] / stored[0]
        points = np.stack(
            [sx * (points[:, 0] + 0.5) - 0.5, sy * (points[:, 1] + 0.5) - 0.5], 1
        )
    return points.astype(np.float32)


class ImageFolder(Dataset):
    """Grayscale real images with HA labels and augmentation (see module docstring).

    Config (``default_conf``; unknown keys are errors):
        root: folder, or ``builtin``; layout: ``folder`` | ``coco`` | ``kitti``.
        val_fraction, split_files, kitti_cameras, coco_folders, max_images: see
            :func:`list_images`.
        image_size: ``[H, W]`` after resizing (multiples of 8).
        labels_dir: folder of HA labels, or null (then ``keypoints`` is empty).
        seed: augmentation seed.
        augmentation: ``splits`` to augment; ``photometric`` (``enable``,
            ``primitives``, ``params``, ``random_order``); ``homographic`` (``enable``,
            ``params`` over :data:`COCO_HOMOGRAPHY`, ``valid_border_margin``).

    Each sample:
        image ``(1, H, W)`` float32 in [0, 1]; keypoints ``(N, 2)``; keypoint_map and
        valid_mask ``(H, W)`` float32; name str; index int.
    """

    default_conf: dict[str, Any] = {
        "name": "image_folder",
        "root": None,
        "layout": "folder",
        "val_fraction": 0.1,
        "split_files": {"train": None, "val": None},
        "kitti_cameras": ["image_02", "image_03"],
        "coco_folders": {"train": "train2014", "val": "val2014"},
        "max_images": 0,
        "image_size": [240, 320],
        "labels_dir": None,
        "seed": 0,
        "augmentation": augmentation_defaults(valid_border_margin=3),
    }

    def __init__(self, conf: dict[str, Any] | None = None, split: str = "train"):
        self.conf = merge_config(self.default_conf, conf or {}, prefix="data.")
        self.split = split
        self.entries = list_images(self.conf, split)
        size = self.conf["image_size"]
        if len(size) != 2 or size[0] % 8 or size[1] % 8:
            raise UserError(f"data.image_size must be [H, W], multiples of 8: {size}")
        self.image_size = (int(size[0]), int(size[1]))
        self.aug = Augmentation.from_conf(
            self.conf["augmentation"], split, COCO_HOMOGRAPHY, SPLITS
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def rng(self, index: int, stream: int = 0) -> np.random.Generator:
        """Generator keyed by (seed, split, index, epoch, stream): reproducible anywhere."""
        split_id = SPLITS.index(self.split)
        return np.random.default_rng(
            [int(self.conf["seed"]), split_id, index, self.epoch, stream]
        )

    def content(self, index: int) -> tuple[Array, Array]:
        """Resized uint8 image ``(H, W)`` and its labels ``(N, 2)`` (empty without labels)."""
        entry = self.entries[index]
        image = resize_image(load_gray(entry), self.image_size)
        if self.conf["labels_dir"] in (None, ""):
            return image, np.zeros((0, 2), np.float32)
        return image, load_labels(self.conf["labels_dir"], entry.name, self.image_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, points = self.content(index)
        rng = self.rng(index)
        image = self.aug.photometric_step(image, rng)
        image, points, mask = self.aug.homographic_step(image, points, rng)
        return {
            **keypoint_sample(image, points, mask),
            "name": self.entries[index].name,
            "index": int(index),
        }


def _check_kitti(root: Path, cameras: list[str], report: CheckReport) -> list[Path]:
    """Frames of every drive the split files list; problems recorded in ``report``."""
    frames: list[Path] = []
    for name in KITTI_SPLIT_FILES:
        split_file = root / name
        if not split_file.is_file():
            report.problem(
                f"{split_file}: split file not found (the KITTI configs read it: one "
                "drive folder per line, relative to the root)"
            )
            continue
        for number, line in enumerate(split_file.read_text().splitlines(), 1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            target = root / entry
            if target.is_file():
                frames.append(target)
                continue
            found = [f for cam in cameras for f in _image_files(target / cam / "data")]
            if not found:
                report.problem(
                    f"{split_file}:{number}: '{entry}' has no frames in "
                    f"{', '.join(c + '/data' for c in cameras)}"
                )
            report.count("drives listed")
            frames += found
    return frames


def check_images(root: str | Path, layout: str = "folder") -> CheckReport:
    """Count the images of a ``folder``, ``coco`` or ``kitti`` root; check each file.

    ``coco`` needs ``train2014/`` and ``val2014/`` under ``root``; ``kitti`` needs the
    split files ``train.txt`` and ``val.txt`` under ``root``, each listing drive folders
    whose ``image_02/data`` and ``image_03/data`` hold the frames (as the shipped
    configs read them).

    Raises:
        UserError: unknown layout, or ``root`` is not a folder.
    """
    if layout not in LAYOUTS:
        raise UserError(f"layout '{layout}' is not one of {', '.join(LAYOUTS)}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image root '{root}' is not a folder")
    report = CheckReport(f"{layout} images {root}")
    if layout == "coco":
        files = []
        for folder, expected in COCO_2014_IMAGES.items():
            found = _image_files(root / folder) if (root / folder).is_dir() else []
            if not found:
                report.problem(
                    f"{root / folder}: no images (COCO 2014 has {expected:,})"
                )
            report.count(f"{folder} images", len(found))
            files += found
        report.note("COCO 2014 has 82,783 train2014 and 40,504 val2014 images")
    elif layout == "kitti":
        files = _check_kitti(root, ImageFolder.default_conf["kitti_cameras"], report)
        report.count("frames", len(files))
    else:
        files = _image_files(root)
        report.count("images", len(files))
        if not files:
            report.problem(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    for path in files:
        report.check_image(path)
    return report


def sample_grid(dataset: Dataset, count: int = 8, columns: int = 4) -> Array:
    """BGR grid of samples with their keypoints (red); pairs shown side by side."""
    tiles = []
    for index in range(min(count, len(dataset))):
        sample = dataset[index]
        views = ["0", "1"] if "image0" in sample else [""]
        parts = []
        for v in views:
            gray = (sample[f"image{v}"][0].numpy() * 255).round().astype(np.uint8)
            tile = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
            for x, y in sample[f"keypoints{v}"].numpy():
                cv2.circle(tile, (int(round(x)), int(round(y))), 2, (0, 0, 255), -1)
            parts.append(tile)
        tiles.append(np.concatenate(parts, axis=1))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [
        np.concatenate(tiles[i : i + columns], axis=1)
        for i in range(0, len(tiles), columns)
    ]
    return np.concatenate(rows, axis=0)


def show_main(dataset_cls: type, argv: list[str] | None, prog: str) -> int:
    """``--show``: write a PNG grid of samples of ``dataset_cls`` (shared by pair data)."""
    parser = ArgumentParser(
        prog=prog,
        description=f"Check an image folder, or show samples of {dataset_cls.__name__}.",
    )
    parser.add_argument(
        "--check",
        metavar="DIR",
        help="check every image of this root (organised as --layout); exit code 1 when "
        "a problem is found",
    )
    parser.add_argument("--show", action="store_true", help="write the sample grid")
    parser.add_argument("--root", default="builtin", help="image folder or builtin")
    parser.add_argument(
        "--layout",
        default="folder",
        choices=LAYOUTS,
        help="how --root (or --check) is organised",
    )
    parser.add_argument("--labels", default=None, help="HA labels folder")
    parser.add_argument(
        "--split", default="train", choices=SPLITS, help="split drawn from"
    )
    parser.add_argument("--count", type=int, default=8, help="samples in the grid")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(f"{prog.split('.')[-1]}.png"),
        help="PNG file of the grid",
    )
    args = parser.parse_args(argv)

    def run() -> int:
        if args.check:
            return check_images(args.check, args.layout).finish()
        if not args.show:
            parser.print_help()
            return 0
        on = {"enable": True}
        conf = {
            "root": args.root,
            "layout": args.layout,
            "labels_dir": args.labels,
            "augmentation": {"photometric": on, "homographic": on, "splits": SPLITS},
        }
        grid = sample_grid(dataset_cls(conf, args.split), args.count)
        from utils.io import atomic_write_image

        atomic_write_image(args.out, grid)
        print(f"wrote {args.out}")
        return 0

    return run_cli(run, prog)


if __name__ == "__main__":
    sys.exit(show_main(ImageFolder, None, "python -m datasets.image_folder"))
