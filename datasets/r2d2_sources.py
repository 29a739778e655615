"""R2D2 pair sources: image readers, flow PNGs, image and pair lists, the random transforms of the
reference's synthetic pairs (rescale, tilt, pixel noise, colour jitter) and :class:`PairSource`,
which turns one entry of a source into ``(img1, img2, aflow, mask)``. The dataset that crops
and batches these pairs is :class:`datasets.r2d2_pairs.R2D2PairDataset`.

:func:`check_source` checks a source folder before training, and :func:`write_naver_pairs`
writes the ``pairs.txt`` of a ``flow`` or ``style`` source from the file names of NAVER's
published Aachen pairs (``optical_flow/flow/<a>_<b>.png``, ``style_transfer/<a>.jpg.st_*``),
which name their database images instead of listing them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from datasets.checks import CheckReport
from geometry.homography import warp_image, warp_points
from utils.errors import UserError
from utils.io import atomic_write_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


SOURCE_TYPES = ("synthetic", "flow", "style", "still")


Pair = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def read_image(path: str) -> np.ndarray:
    """Read an RGB uint8 image ``(H, W, 3)``; :class:`UserError` if unreadable."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"{path}: cannot read image (missing or corrupt file)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_flow_png(path: str, flow: np.ndarray) -> None:
    """Write relative flow ``(H, W, 2)`` px in NAVER's PNG encoding (int16, 1/16 px)."""
    fixed = np.clip(np.around(16 * np.asarray(flow, np.float64)), -(2**15), 2**15 - 1)
    data = np.ascontiguousarray(fixed.astype("<i2")).view(np.uint8)
    data = data.reshape(flow.shape[0], flow.shape[1], 4)
    # cv2 writes 4-channel PNGs as BGRA: swap so the bytes land in RGBA order.
    if not cv2.imwrite(path, data[..., [2, 1, 0, 3]]):
        raise UserError(f"{path}: cannot write flow PNG")


def read_flow_png(path: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read relative flow ``(H, W, 2)`` float32 px from NAVER's PNG encoding.

    Args:
        path: the PNG file.
        shape: expected ``(H, W)`` (the first image's size), checked when given.
    """
    data = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if data is None:
        raise UserError(f"{path}: cannot read flow PNG (missing or corrupt file)")
    if data.ndim != 3 or data.shape[2] != 4 or data.dtype != np.uint8:
        raise UserError(
            f"{path}: flow PNG must be 8-bit RGBA (int16 x/y pairs), got shape "
            f"{data.shape} {data.dtype}"
        )
    if shape is not None and tuple(data.shape[:2]) != tuple(shape):
        raise UserError(
            f"{path}: flow is {data.shape[1]}x{data.shape[0]} but the first image is "
            f"{shape[1]}x{shape[0]}"
        )
    rgba = np.ascontiguousarray(data[..., [2, 1, 0, 3]])
    return rgba.view("<i2").astype(np.float32) / 16


def pixel_grid_np(height: int, width: int) -> np.ndarray:
    """``(H, W, 2)`` float32 (x, y) pixel centres."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([xs, ys], axis=-1)


def resize_flow_target(aflow: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """Update absolute flow after resizing image 1 by ``(scale_x, scale_y)``."""
    out = aflow.copy()
    out[..., 0] = (out[..., 0] + 0.5) * scale_x - 0.5
    out[..., 1] = (out[..., 1] + 0.5) * scale_y - 0.5
    return out


def list_images(root: str, list_file: str | None = None) -> list[str]:
    """Image paths under ``root`` (recursive, sorted) or listed in ``list_file``."""
    if list_file:
        if not os.path.isfile(list_file):
            raise UserError(f"{list_file}: image list not found")
        with open(list_file) as f:
            names = [line.strip() for line in f if line.strip()]
        paths = [n if os.path.isabs(n) else os.path.join(root, n) for n in names]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise UserError(
                f"{list_file}: {len(missing)} listed image(s) not found, "
                f"e.g. {missing[0]}"
            )
        return paths
    if not os.path.isdir(root):
        raise UserError(f"{root}: image folder not found")
    paths = []
    for folder, _, files in os.walk(root):
        paths += [
            os.path.join(folder, f)
            for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    if not paths:
        raise UserError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return sorted(paths)


def read_pair_list(root: str, list_file: str | None = None) -> list[tuple[str, str]]:
    """Pairs from ``root/pairs.txt`` (or ``list_file``): lines ``img0 img1``.

    Raises:
        UserError: missing list, malformed line or a listed file that does not exist.
    """
    list_file = list_file or os.path.join(root, "pairs.txt")
    if not os.path.isfile(list_file):
        raise UserError(f"{list_file}: pair list not found")
    pairs = []
    with open(list_file) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 2:
                raise UserError(
                    f"{list_file}:{number}: expected two image paths, "
                    f"got {line.strip()!r}"
                )
            pair = tuple(
                p if os.path.isabs(p) else os.path.join(root, p) for p in fields
            )
            for path in pair:
                if not os.path.isfile(path):
                    raise UserError(f"{list_file}:{number}: {path} not found")
            pairs.append(pair)
    if not pairs:
        raise UserError(f"{list_file}: no pairs listed")
    return pairs


def random_rescale(
    image: np.ndarray, rng: np.random.Generator, size_range: Sequence[float]
) -> tuple[np.ndarray, float, float]:
    """Resize so the shorter side is log-uniform in ``size_range`` (up or down).

    Returns:
        The resized image and the ``(scale_x, scale_y)`` actually applied.
    """
    h, w = image.shape[:2]
    lo, hi = float(size_range[0]), float(size_range[1])
    target = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    factor = target / min(h, w)
    nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (nw, nh), interpolation=interp), nw / w, nh / h


def random_tilt(
    shape: tuple[int, int], rng: np.random.Generator, magnitude: float
) -> np.ndarray:
    """Homography that tilts an image: one side's corners pushed outwards.

    As the reference ``RandomTilting``: skew amount uniform in [1, magnitude * max(H,
    W)] pixels, one of four directions (left, right, forward, backward).
    """
    h, w = shape
    if magnitude <= 0:
        return np.eye(3)
    skew = rng.integers(1, max(2, math.ceil(max(h, w) * magnitude) + 1))
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    moved = corners.copy()
    side = rng.integers(4)
    if side == 0:  # top edge widens
        moved[0, 0] -= skew
        moved[1, 0] += skew
    elif side == 1:  # bottom edge widens
        moved[3, 0] -= skew
        moved[2, 0] += skew
    elif side == 2:  # left edge stretches
        moved[0, 1] -= skew
        moved[3, 1] += skew
    else:  # right edge stretches
        moved[1, 1] -= skew
        moved[2, 1] += skew
    return cv2.getPerspectiveTransform(
        corners.astype(np.float32), moved.astype(np.float32)
    )


def pixel_noise(
    image: np.ndarray, rng: np.random.Generator, amplitude: float
) -> np.ndarray:
    """Add uniform noise of total width ``amplitude`` grey levels."""
    if amplitude <= 0:
        return image
    noise = rng.uniform(-amplitude / 2, amplitude / 2, size=image.shape)
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def color_jitter(
    image: np.ndarray, rng: np.random.Generator, amounts: Sequence[float]
) -> np.ndarray:
    """Random brightness, contrast, saturation (factors in [1-a, 1+a]) and hue shift.

    Args:
        image: RGB uint8.
        amounts: ``(brightness, contrast, saturation, hue)``; hue as a fraction of the
            colour circle (0.1 = +-36 degrees).
    """
    brightness, contrast, saturation, hue = (float(a) for a in amounts)
    out = image.astype(np.float32)
    if brightness > 0:
        out *= rng.uniform(1 - brightness, 1 + brightness)
    if contrast > 0:
        grey_mean = (out @ np.float32([0.299, 0.587, 0.114])).mean()
        out = (out - grey_mean) * rng.uniform(1 - contrast, 1 + contrast) + grey_mean
    if saturation > 0:
        grey = (out @ np.float32([0.299, 0.587, 0.114]))[..., None]
        out = (out - grey) * rng.uniform(1 - saturation, 1 + saturation) + grey
    out = np.clip(out, 0, 255).astype(np.uint8)
    if hue > 0:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        # OpenCV's 8-bit hue spans [0, 180).
        shift = round(rng.uniform(-hue, hue) * 180)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 180).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return out


class PairSource:
    """One named source of pairs; :meth:`get` returns full-size ``(img0, img1, aflow,
    mask)`` with ``aflow (H, W, 2)`` float32 and ``mask (H, W)`` bool."""

    def __init__(self, name: str, conf: dict[str, Any], synthetic: dict[str, Any]):
        self.name = name
        self.type = conf.get("type", "synthetic")
        unknown = set(conf) - {"type", "root", "list"}
        if unknown:
            raise UserError(
                f"data.sources.{name}: unknown key(s) {sorted(unknown)} "
                "(valid: type, root, list)"
            )
        if self.type not in SOURCE_TYPES:
            raise UserError(
                f"data.sources.{name}.type={self.type!r}: expected one of "
                f"{', '.join(SOURCE_TYPES)}"
            )
        root = conf.get("root")
        if not root:
            raise UserError(f"data.sources.{name}.root: an image folder is required")
        self.root = os.path.expanduser(str(root))
        self.synthetic = synthetic
        if self.type == "synthetic":
            self.items: list[Any] = list_images(self.root, conf.get("list"))
        else:
            self.items = read_pair_list(self.root, conf.get("list"))

    def __len__(self) -> int:
        return len(self.items)

    def _distort(
        self, image1: np.ndarray, aflow: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tilt + pixel noise on image 1, composed into the flow."""
        H = random_tilt(image1.shape[:2], rng, self.synthetic["tilt"])
        warped = warp_image(image1, H)
        target = warp_points(aflow.reshape(-1, 2), H).reshape(aflow.shape)
        warped = pixel_noise(warped, rng, self.synthetic["noise"])
        return warped, target.astype(np.float32)

    def get(self, index: int, rng: np.random.Generator) -> Pair:
        item = self.items[index]
        if self.type == "synthetic":
            image, _, _ = random_rescale(read_image(item), rng, self.synthetic["scale"])
            h, w = image.shape[:2]
            image1, aflow = self._distort(image, pixel_grid_np(h, w), rng)
            return image, image1, aflow, np.ones((h, w), bool)
        image0, image1 = read_image(item[0]), read_image(item[1])
        h, w = image0.shape[:2]
        if self.type == "flow":
            stem = "_".join(os.path.splitext(os.path.basename(p))[0] for p in item)
            flow = read_flow_png(os.path.join(self.root, "flow", f"{stem}.png"), (h, w))
            aflow = pixel_grid_np(h, w) + flow
            mask_path = os.path.join(self.root, "mask", f"{stem}.png")
            mask = np.ones((h, w), bool)
            if os.path.isfile(mask_path):
                mask_image = cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE)
                if mask_image is None or mask_image.shape != (h, w):
                    raise UserError(
                        f"{mask_path}: expected a readable {w}x{h} grey mask PNG"
                    )
                mask = mask_image > 0
            aflow[~mask] = np.nan
            return image0, image1, aflow, mask
        h1, w1 = image1.shape[:2]
        aflow = resize_flow_target(pixel_grid_np(h, w), w1 / w, h1 / h)
        if self.type == "style":
            image1, aflow = self._distort(image1, aflow, rng)
        return image0, image1, aflow, np.ones((h, w), bool)


def _check_pair_list(root: str, list_file: str, report: CheckReport) -> list[list[str]]:
    """The pairs of a ``pairs.txt`` whose files exist; the other lines are reported."""
    pairs = []
    with open(list_file) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 2:
                report.problem(f"{list_file}:{number}: expected two image paths")
                continue
            paths = [p if os.path.isabs(p) else os.path.join(root, p) for p in fields]
            missing = [p for p in paths if not os.path.isfile(p)]
            for path in missing:
                report.problem(f"{list_file}:{number}: {path} not found")
            if not missing:
                pairs.append(paths)
    return pairs


def check_source(
    root: str, kind: str = "synthetic", list_file: str | None = None
) -> CheckReport:
    """Count the images and pairs of one source folder; check every file it names.

    Args:
        root: the source's ``root``.
        kind: its ``type`` (``synthetic``, ``flow``, ``style`` or ``still``).
        list_file: its ``list`` (default: every image under ``root`` for ``synthetic``,
            ``root/pairs.txt`` for the others).

    Raises:
        UserError: unknown type, ``root`` is not a folder or ``list_file`` is missing.
    """
    if kind not in SOURCE_TYPES:
        raise UserError(f"source type '{kind}' is not one of {', '.join(SOURCE_TYPES)}")
    if not os.path.isdir(root):
        raise UserError(f"{root}: source folder not found")
    if list_file and not os.path.isfile(list_file):
        raise UserError(f"{list_file}: list file not found")
    report = CheckReport(f"R2D2 {kind} source {root}")
    if kind == "synthetic":
        if list_file:
            with open(list_file) as f:
                names = [line.strip() for line in f if line.strip()]
            images = [n if os.path.isabs(n) else os.path.join(root, n) for n in names]
        else:
            images = [
                os.path.join(folder, name)
                for folder, _, files in os.walk(root)
                for name in files
                if name.lower().endswith(IMAGE_EXTENSIONS)
            ]
        report.count("images", len(images))
        if not images:
            report.problem(f"{list_file or root}: no images")
        for path in sorted(images):
            report.check_image(path)
        return report
    list_file = list_file or os.path.join(root, "pairs.txt")
    if not os.path.isfile(list_file):
        report.problem(
            f"{list_file}: pair list not found (for NAVER's Aachen folders, write it with "
            f"python -m datasets.r2d2_pairs --write-pairs {root} --type {kind})"
        )
        return report
    pairs = _check_pair_list(root, list_file, report)
    report.count("pairs", len(pairs))
    for path in sorted({p for pair in pairs for p in pair}):
        report.check_image(path)
    if kind == "flow":
        report.count("masks", 0)
        for pair in pairs:
            stem = "_".join(os.path.splitext(os.path.basename(p))[0] for p in pair)
            report.check_image(os.path.join(root, "flow", f"{stem}.png"))
            mask = os.path.join(root, "mask", f"{stem}.png")
            if os.path.isfile(mask):
                report.count("masks")
                report.check_image(mask)
    return report


def write_naver_pairs(root: str, kind: str, db: str | None = None) -> str:
    """Write ``root/pairs.txt`` for NAVER's Aachen ``flow`` or ``style`` folder.

    NAVER's optical-flow pairs are ``root/flow/<a>_<b>.png`` (masks in ``root/mask``), its
    style-transfer images ``root/<a>.jpg.st_<style>.jpg``, where ``<a>`` and ``<b>`` are
    the names (without ``.jpg``) of Aachen database images. Each line written names the two
    images relative to ``root``: ``<db>/<a>.jpg <db>/<b>.jpg`` (flow) or
    ``<db>/<a>.jpg <a>.jpg.st_<style>.jpg`` (style).

    Args:
        root: the ``flow`` or ``style`` source folder.
        kind: ``flow`` or ``style``.
        db: folder of the database images (searched recursively); default
            ``root/../images_upright/db``, NAVER's layout.

    Returns:
        The path of the file written.

    Raises:
        UserError: another type, no pair found, or a name with no database image.
    """
    if kind not in ("flow", "style"):
        raise UserError(f"--write-pairs needs --type flow or style, not '{kind}'")
    db = db or os.path.join(root, os.pardir, "images_upright", "db")
    if not os.path.isdir(db):
        raise UserError(f"{db}: database image folder not found (--db)")
    images = {
        os.path.splitext(name)[0]: os.path.join(folder, name)
        for folder, _, files in os.walk(db)
        for name in files
        if name.lower().endswith(".jpg")
    }
    if kind == "flow":
        folder = os.path.join(root, "flow")
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        named = [(n, n[: -len(".png")].split("_")) for n in names if n.endswith(".png")]
    else:
        names = sorted(os.listdir(root))
        named = [(n, [n.split(".jpg.st_")[0]]) for n in names if ".jpg.st_" in n]
    if not named:
        where = os.path.join(root, "flow", "<a>_<b>.png") if kind == "flow" else root
        raise UserError(f"{where}: no NAVER {kind} pair found")
    lines = []
    for name, tags in named:
        missing = [t for t in tags if t not in images]
        if missing or len(tags) != (2 if kind == "flow" else 1):
            raise UserError(
                f"{name}: no database image '{missing or tags}.jpg' in {db}"
            )
        paths = [os.path.relpath(images[t], root) for t in tags]
        lines.append(" ".join(paths if kind == "flow" else [*paths, name]))
    path = os.path.join(root, "pairs.txt")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
