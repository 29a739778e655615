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
correspondences into a PNG; ``--check DIR --type TYPE`` checks a source folder before
training and ``--write-pairs DIR --type flow|style`` writes the ``pairs.txt`` of NAVER's
Aachen folders (:mod:`datasets.r2d2_sources`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

import cv2
import numpy as np
import torch

from datasets.r2d2_sources import (
    SOURCE_TYPES,
    PairSource,
    check_source,
    color_jitter,
    random_rescale,
    resize_flow_target,
    write_naver_pairs,
)
from utils.arguments import ArgumentParser
from utils.config import merge_config
from utils.errors import UserError, run_cli


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
    """Command line: ``--check``, ``--write-pairs``, or ``--show`` (a few pairs in a PNG)."""
    parser = ArgumentParser(
        prog="python -m datasets.r2d2_pairs",
        description="Check an R2D2 pair source, write NAVER's pair lists, or draw "
        "training pairs with flow correspondences.",
    )
    parser.add_argument(
        "--check",
        metavar="DIR",
        help="check every file of the source folder DIR (of --type); exit code 1 when "
        "a problem is found",
    )
    parser.add_argument(
        "--write-pairs",
        metavar="DIR",
        help="write DIR/pairs.txt from the file names of NAVER's Aachen flow or style "
        "folder DIR (--type flow|style)",
    )
    parser.add_argument(
        "--type",
        default="synthetic",
        choices=SOURCE_TYPES,
        help="with --check or --write-pairs: the source type",
    )
    parser.add_argument(
        "--list", help="with --check: the source's image or pair list file"
    )
    parser.add_argument(
        "--db",
        help="with --write-pairs: Aachen database images (default: "
        "DIR/../images_upright/db)",
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
        if args.check:
            return check_source(args.check, args.type, args.list).finish()
        if args.write_pairs:
            path = write_naver_pairs(args.write_pairs, args.type, args.db)
            print(f"wrote {path}")
            return 0
        if not args.show:
            parser.print_help()
            return 0
        if args.config:
            from utils.config import read_yaml

            conf = read_yaml(args.config).get("data", {})
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
