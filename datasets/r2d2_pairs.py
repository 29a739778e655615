"""Image pairs with dense ground-truth correspondences for training R2D2.

Every sample is a pair ``image0, image1`` with the *absolute flow* ``aflow``:
``aflow[:, y, x]`` is the (x, y) position in image 1 of pixel (x, y) of image 0
(pixel-centre convention of :mod:`geometry.homography`; NaN where unknown) and a ``mask`` of
the image-0 pixels whose flow is known and lands inside image 1. Sources, combined by
name in ``use``:

- ``synthetic``: any image folder (or list file); each image is rescaled (shorter side
  log-uniform in ``synthetic.scale``), image 1 is the same image tilted by a random
  perspective (``synthetic.tilt``) with uniform pixel noise (``synthetic.noise``); the
  flow is the homography.
- ``flow``: optical-flow pairs, ``root/pairs.txt`` lines ``img0 img1`` (paths relative
  to ``root``), flow in ``root/flow/<stem0>_<stem1>.png`` and optional validity mask in
  ``root/mask/<stem0>_<stem1>.png``. The flow PNG is NAVER's encoding: an (H, W, 4)
  uint8 PNG whose bytes are (H, W, 2) int16 relative flow in 1/16 px (see
  :func:`write_flow_png`).
- ``style``: style-transfer pairs, ``root/pairs.txt`` lines ``img0 img1`` where image 1
  is a restyled image 0 (same geometry up to a resize); image 1 is then distorted like a
  synthetic pair.
- ``still``: like ``style`` without the distortion (identity flow up to a resize).

All sources then go through the pair loader of the reference: image 1 is rescaled again
(shorter side in ``scale``), both images get colour jitter, and a ``crop`` x ``crop``
window is chosen in each image by scoring a few random candidates for flow coverage (the
image-1 window is enlarged by the local flow scale and resized, so both crops show the
content at a similar scale). Randomness is keyed by ``(seed, index, epoch)``: call
:meth:`R2D2PairDataset.set_epoch` each epoch.

``python -m datasets.r2d2_pairs --show --images DIR`` draws pairs with flow
correspondences into a PNG.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from geometry.homography import warp_image, warp_points
from utils.config import merge_config
from utils.errors import UserError, run_cli

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


def _window(centre: float, size: float, extent: int) -> tuple[int, int]:
    """``[start, stop)`` of a window of ``size`` around ``centre`` kept inside."""
    size = min(max(1, round(size)), extent)
    start = int(round(centre - size / 2))
    start = min(max(start, 0), extent - size)
    return start, start + size


def flow_scale(aflow: np.ndarray) -> np.ndarray:
    """Local area scale ``sqrt(|det J|)`` of the flow (NaN where unknown)."""
    dx_dy, dx_dx = np.gradient(aflow[..., 0])
    dy_dy, dy_dx = np.gradient(aflow[..., 1])
    return np.sqrt(np.abs(dx_dx * dy_dy - dx_dy * dy_dx))


def choose_crops(
    aflow: np.ndarray,
    mask: np.ndarray,
    shape1: tuple[int, int],
    crop: int,
    rng: np.random.Generator,
    n_trials: int = 5,
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]] | None:
    """Pick matching windows ``(y0, y1, x0, x1)`` in both images.

    A random valid pixel and its match seed each candidate; the window in the image
    that is locally *larger* is enlarged by the flow scale ``sigma`` (kept in (0.2, 5)),
    and a candidate is scored by ``min(fraction of window-0 pixels landing in window 1,
    coverage of window 1 on a 16 x 16 grid)``; the best of ``n_trials`` wins (as in the
    reference loader). Returns None when no candidate is found.
    """
    h, w = mask.shape
    h1, w1 = shape1
    valid = mask & np.isfinite(aflow).all(-1)
    candidates = np.flatnonzero(valid)
    if candidates.size == 0:
        return None
    scale = flow_scale(aflow)
    best, best_score = None, -1.0
    trials = 0
    for _ in range(50 * n_trials):
        if trials >= n_trials:
            break
        y, x = divmod(int(candidates[rng.integers(candidates.size)]), w)
        tx, ty = aflow[y, x]
        if not (0 <= tx < w1 and 0 <= ty < h1):
            continue
        sigma = scale[y, x]
        if not 0.2 < sigma < 5:
            continue
        size0, size1 = (crop / sigma, crop) if sigma < 1 else (crop, crop * sigma)
        win0 = (*_window(y, size0, h), *_window(x, size0, w))
        win1 = (*_window(ty, size1, h1), *_window(tx, size1, w1))
        sub = aflow[win0[0] : win0[1], win0[2] : win0[3]].reshape(-1, 2)
        sub_valid = valid[win0[0] : win0[1], win0[2] : win0[3]].reshape(-1)
        inside = (
            sub_valid
            & (sub[:, 0] >= win1[2])
            & (sub[:, 0] < win1[3])
            & (sub[:, 1] >= win1[0])
            & (sub[:, 1] < win1[1])
        )
        score0 = inside.mean()
        cells = np.zeros((16, 16), bool)
        if inside.any():
            cy = ((sub[inside, 1] - win1[0]) * 16 / (win1[1] - win1[0])).astype(int)
            cx = ((sub[inside, 0] - win1[2]) * 16 / (win1[3] - win1[2])).astype(int)
            cells[np.clip(cy, 0, 15), np.clip(cx, 0, 15)] = True
        score = min(score0, cells.mean())
        trials += 1
        if score > best_score:
            best, best_score = (win0, win1), score
    return best


class R2D2PairDataset(torch.utils.data.Dataset):
    """Combined R2D2 training pairs (see the module docstring for sources and keys).

    ``dataset[i]`` returns ``image0``, ``image1`` ``(3, crop, crop)`` float32 in [0, 1],
    ``aflow (2, crop, crop)`` float32 (NaN where unknown), ``mask (crop, crop)`` bool,
    ``source`` (name) and ``index``.

    Example:
        >>> ds = R2D2PairDataset({"sources": {"web": {"root": "imgs"}}})
        >>> ds.set_epoch(3)
        >>> sample = ds[0]
    """

    default_conf: dict[str, Any] = {
        "sources": {},
        "use": None,
        "crop": 192,
        "scale": [256, 1024],
        "color_jitter": [0.2, 0.2, 0.2, 0.1],
        "synthetic": {"scale": [256, 1024], "tilt": 0.5, "noise": 25},
        "n_trials": 5,
        "seed": 0,
        "max_pairs": None,
    }

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = merge_config(self.default_conf, conf or {}, prefix="data.")
        synthetic = self.conf["synthetic"]
        sources = dict(self.conf["sources"] or {})
        use = self.conf["use"] or list(sources)
        if not use:
            raise UserError("data.sources: at least one pair source is required")
        self.sources = []
        for name in use:
            if name not in sources:
                raise UserError(
                    f"data.use: unknown source {name!r} "
                    f"(defined: {', '.join(sources) or 'none'})"
                )
            self.sources.append(PairSource(name, dict(sources[name]), synthetic))
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of an epoch (augmentations and crops)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        total = int(self.offsets[-1])
        if self.conf["max_pairs"]:
            return min(total, int(self.conf["max_pairs"]))
        return total

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = np.random.default_rng([self.conf["seed"], index, self.epoch])
        which = int(np.searchsorted(self.offsets, index, side="right") - 1)
        source = self.sources[which]
        image0, image1, aflow, mask = source.get(index - int(self.offsets[which]), rng)

        image1, sx, sy = random_rescale(image1, rng, self.conf["scale"])
        aflow = resize_flow_target(aflow, sx, sy)
        image0 = color_jitter(image0, rng, self.conf["color_jitter"])
        image1 = color_jitter(image1, rng, self.conf["color_jitter"])

        crop = int(self.conf["crop"])
        windows = choose_crops(
            aflow, mask, image1.shape[:2], crop, rng, self.conf["n_trials"]
        )
        if windows is None:
            out0 = np.zeros((crop, crop, 3), np.uint8)
            out1 = np.zeros((crop, crop, 3), np.uint8)
            out_flow = np.full((crop, crop, 2), np.nan, np.float32)
            out_mask = np.zeros((crop, crop), bool)
        else:
            (a0, a1, b0, b1), (c0, c1, d0, d1) = windows
            out0 = cv2.resize(
                image0[a0:a1, b0:b1], (crop, crop), interpolation=cv2.INTER_AREA
            )
            out1 = cv2.resize(
                image1[c0:c1, d0:d1], (crop, crop), interpolation=cv2.INTER_AREA
            )
            # Flow and mask are resampled by nearest neighbour: interpolating flow
            # across an occlusion boundary would invent correspondences.
            sub_flow = aflow[a0:a1, b0:b1]
            sub_mask = mask[a0:a1, b0:b1].astype(np.uint8)
            if sub_flow.shape[:2] != (crop, crop):
                sub_flow = cv2.resize(
                    sub_flow, (crop, crop), interpolation=cv2.INTER_NEAREST
                )
                sub_mask = cv2.resize(
                    sub_mask, (crop, crop), interpolation=cv2.INTER_NEAREST
                )
            shifted = sub_flow - np.float32([d0, c0])
            out_flow = resize_flow_target(shifted, crop / (d1 - d0), crop / (c1 - c0))
            inside = (
                (out_flow[..., 0] >= -0.5)
                & (out_flow[..., 0] < crop - 0.5)
                & (out_flow[..., 1] >= -0.5)
                & (out_flow[..., 1] < crop - 0.5)
            )
            out_mask = sub_mask.astype(bool) & np.isfinite(out_flow).all(-1) & inside
            out_flow[~np.isfinite(out_flow).all(-1)] = np.nan

        def to_tensor(image: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0

        return {
            "image0": to_tensor(out0),
            "image1": to_tensor(out1),
            "aflow": torch.from_numpy(
                np.ascontiguousarray(out_flow.transpose(2, 0, 1))
            ),
            "mask": torch.from_numpy(out_mask),
            "source": source.name,
            "index": index,
        }


def draw_pairs(
    samples: list[dict[str, Any]], n_lines: int = 24, seed: int = 0
) -> np.ndarray:
    """Stack pairs (image 0 | image 1) with lines joining random flow matches.

    Returns:
        RGB uint8 image.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for sample in samples:
        im0 = (sample["image0"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        im1 = (sample["image1"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        w0 = im0.shape[1]
        canvas = np.ascontiguousarray(np.concatenate([im0, im1], axis=1))
        flow = sample["aflow"].permute(1, 2, 0).numpy()
        ys, xs = np.nonzero(sample["mask"].numpy())
        if len(ys):
            pick = rng.choice(len(ys), size=min(n_lines, len(ys)), replace=False)
            for k in pick:
                y, x = int(ys[k]), int(xs[k])
                tx, ty = flow[y, x]
                colour = tuple(int(c) for c in rng.integers(64, 256, 3))
                p0 = (x, y)
                p1 = (int(round(tx)) + w0, int(round(ty)))
                cv2.circle(canvas, p0, 2, colour, -1, cv2.LINE_AA)
                cv2.circle(canvas, p1, 2, colour, -1, cv2.LINE_AA)
                cv2.line(canvas, p0, p1, colour, 1, cv2.LINE_AA)
        rows.append(canvas)
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--show`` draws a few pairs into a PNG."""
    parser = argparse.ArgumentParser(
        prog="python -m datasets.r2d2_pairs",
        description="Draw R2D2 training pairs with flow correspondences.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--show", action="store_true", help="draw pairs into a PNG")
    parser.add_argument("--images", help="image folder for a synthetic source")
    parser.add_argument(
        "--config", help="YAML file whose 'data' section defines sources"
    )
    parser.add_argument("--num", type=int, default=4, help="number of pairs drawn")
    parser.add_argument("--epoch", type=int, default=0, help="random stream (epoch)")
    parser.add_argument("--out", default="r2d2_pairs.png", help="output PNG")
    args = parser.parse_args(argv)

    def run() -> int:
        if not args.show:
            parser.print_help()
            return 0
        if args.config:
            import yaml

            if not os.path.isfile(args.config):
                raise UserError(f"{args.config}: config file not found")
            with open(args.config) as f:
                conf = (yaml.safe_load(f) or {}).get("data", {})
        elif args.images:
            conf = {"sources": {"images": {"type": "synthetic", "root": args.images}}}
        else:
            raise UserError("--show needs --images DIR or --config FILE")
        dataset = R2D2PairDataset(conf)
        dataset.set_epoch(args.epoch)
        count = min(args.num, len(dataset))
        samples = [dataset[i] for i in range(count)]
        canvas = draw_pairs(samples)
        folder = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=folder)
        os.close(fd)
        try:
            if not cv2.imwrite(tmp, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
                raise UserError(f"{args.out}: cannot write PNG")
            os.replace(tmp, args.out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        print(f"wrote {count} pairs to {args.out}")
        return 0

    return run_cli(run, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
