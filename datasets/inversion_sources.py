"""Where feature-inversion data comes from: image sources, feature files and depth maps.

**Image sources** (``data.images``, ``--images``): a folder (searched recursively, sorted), a
``.txt`` list of image paths (one per line, relative to the list's folder unless absolute;
``#`` comments), or the photographs bundled with scikit-image, split into fixed sets by name:

* ``builtin:train``: the photographs not listed in :data:`BUILTIN_HELD_OUT`;
* ``builtin:test`` (also plain ``builtin``): :data:`BUILTIN_HELD_OUT`;
* ``builtin:all``: every one.

An image's *relative name* is its path relative to the folder or list (with extension);
built-in photographs are named ``<photo>.png``. Feature files of ``extract.py`` for an image
are ``<image path>.<tag>`` next to it, or ``<features_dir>/<relative name>.<tag>`` (the layout
of ``extract.py --out-dir``). Depth maps are ``<depth_dir>/<relative name without
extension>.npy`` (float, any unit) or ``.png`` (16-bit integers), scaled by ``depth_scale``;
0 means "no depth".
"""

from __future__ import annotations

import functools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from datasets.hpatches import IMAGE_EXTENSIONS, read_image
from datasets.sparse_maps import resize_keypoints, unpack_binary_descriptors
from utils.errors import UserError

BUILTIN_HELD_OUT: tuple[str, ...] = ("astronaut", "camera", "coffee", "coins", "rocket")
"""Built-in photographs held out of training (evaluation set), by name."""


@dataclass(frozen=True)
class ImageSource:
    """One image: relative name and file (``None`` for a built-in photograph)."""

    name: str
    path: Path | None


@functools.cache
def builtin_photos() -> dict[str, np.ndarray]:
    """``{name: RGB uint8}`` of the photographs bundled with scikit-image (cached)."""
    from datasets.hpatches_demo import load_photos

    return dict(load_photos("builtin"))


def builtin_split(split: str) -> list[str]:
    """Names of the built-in photographs of ``train``, ``test`` or ``all`` (sorted)."""
    names = sorted(builtin_photos())
    if split == "all":
        return names
    if split == "test":
        return [n for n in names if n in BUILTIN_HELD_OUT]
    if split == "train":
        return [n for n in names if n not in BUILTIN_HELD_OUT]
    raise UserError(
        f"unknown built-in split 'builtin:{split}'; valid: builtin:train, "
        "builtin:test (= builtin), builtin:all"
    )


def list_images(spec: str, what: str = "data.images") -> list[ImageSource]:
    """The images named by ``spec`` (see module docstring).

    Raises:
        UserError: a missing folder/list, a list naming a missing file, or no images.
    """
    spec = str(spec)
    if spec == "builtin" or spec.startswith("builtin:"):
        split = spec.partition(":")[2] or "test"
        return [ImageSource(f"{n}.png", None) for n in builtin_split(split)]
    path = Path(spec)
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise UserError(
                f"{what}: folder '{path}' holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        return [ImageSource(p.relative_to(path).as_posix(), p) for p in files]
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise UserError(f"{what}: image list '{path}' does not exist")
        sources = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            file = Path(entry) if Path(entry).is_absolute() else path.parent / entry
            if not file.is_file():
                raise UserError(
                    f"{what}: image list '{path}' line {number} names a missing file "
                    f"'{entry}'"
                )
            sources.append(ImageSource(entry, file))
        if not sources:
            raise UserError(f"{what}: image list '{path}' names no images")
        return sources
    raise UserError(
        f"{what}: '{spec}' is not a folder, a .txt image list or builtin[:train|:test|:all]"
    )


def load_rgb(source: ImageSource) -> np.ndarray:
    """The image as RGB uint8 ``(H, W, 3)`` (UserError if missing or corrupt)."""
    if source.path is None:
        return builtin_photos()[source.name.removesuffix(".png")]
    return read_image(source.path)


def feature_path(source: ImageSource, tag: str, features_dir: str | None) -> Path:
    """Where ``extract.py`` writes the ``tag`` features of ``source`` (module docstring)."""
    if features_dir:
        return Path(features_dir) / f"{source.name}.{tag}"
    if source.path is None:
        raise UserError(
            "built-in photographs have no folder to hold feature files: set "
            "data.features_dir (extract.py --out-dir) or use online features"
        )
    return source.path.with_name(f"{source.path.name}.{tag}")


def _npz_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of array ``key`` of an npz archive, from its header (None: absent)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if f"{key}.npy" not in archive.namelist():
                return None
            with archive.open(f"{key}.npy") as f:
                version = np.lib.format.read_magic(f)
                reader = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = reader(f)
                return tuple(shape), np.dtype(dtype)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"feature file '{path}' cannot be read ({err})") from None


def descriptor_size(path: Path) -> int:
    """Input channels the descriptors of a feature file give (ORB: packed bytes x 8).

    Raises:
        UserError: missing file, unreadable archive or no ``descriptors`` array.
    """
    if not path.is_file():
        raise UserError(
            f"feature file '{path}' not found (write it with extract.py, or use online "
            "features)"
        )
    header = _npz_header(path, "descriptors")
    if header is None or len(header[0]) != 2:
        raise UserError(
            f"feature file '{path}' has no (N, D) 'descriptors' array (a detector-only "
            "model cannot be inverted)"
        )
    shape, dtype = header
    return shape[1] * 8 if dtype == np.uint8 else shape[1]


def float_descriptors(descriptors: np.ndarray) -> np.ndarray:
    """``(N, D)`` float32 descriptors; packed binary (uint8) ones unpacked to +-1 bits."""
    if descriptors.dtype == np.uint8:
        return unpack_binary_descriptors(descriptors)
    return np.asarray(descriptors, np.float32)


def read_feature_file(path: Path, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Keypoints, scores and float descriptors of a feature file, in the image's frame.

    ``extract.py`` stores keypoints in the frame of the image it processed (``imsize``,
    after ``--max-size``/``--resize``); they are mapped back to the ``(H, W)`` image here.

    Returns:
        ``keypoints (N, 2)``, ``scores (N,)``, ``descriptors (N, D)`` float32.
    """
    try:
        with np.load(path) as data:
            keypoints = np.asarray(data["keypoints"], np.float32).reshape(
                len(data["keypoints"]), -1
            )[:, :2]
            scores = (
                np.asarray(data["scores"], np.float32).reshape(-1)
                if "scores" in data
                else np.ones(len(keypoints), np.float32)
            )
            descriptors = float_descriptors(np.asarray(data["descriptors"]))
            imsize = data["imsize"] if "imsize" in data else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise UserError(f"feature file '{path}' cannot be read ({err})") from None
    if imsize is not None:
        processed = (int(imsize[1]), int(imsize[0]))
        if processed != tuple(image_size):
            keypoints = resize_keypoints(keypoints, processed, image_size)
    return {"keypoints": keypoints, "scores": scores, "descriptors": descriptors}


def depth_path(depth_dir: str, source: ImageSource) -> Path:
    """The depth map of ``source`` (``.npy`` preferred over ``.png``); UserError if none."""
    stem = Path(source.name).with_suffix("")
    for suffix in (".npy", ".png"):
        candidate = Path(depth_dir) / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise UserError(
        f"depth map for '{source.name}' not found: expected {Path(depth_dir) / stem}"
        ".npy or .png (data.depth_dir)"
    )


def read_depth(path: Path, image_size: tuple[int, int], scale: float) -> np.ndarray:
    """Depth ``(H, W)`` float32 resized (nearest) to the image size and times ``scale``."""
    if path.suffix == ".npy":
        depth = np.load(path).astype(np.float32)
    else:
        depth = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
        if depth is None:
            raise UserError(f"depth map '{path}' cannot be decoded")
        depth = depth.astype(np.float32)
    if depth.ndim != 2:
        raise UserError(f"depth map '{path}' must be (H, W), got {depth.shape}")
    if depth.shape != tuple(image_size):
        depth = cv2.resize(
            depth, (image_size[1], image_size[0]), interpolation=cv2.INTER_NEAREST
        )
    return depth * scale
