"""Training samples of the point-cloud module: distorted clouds with known corrections.

A sample starts from metric depth with exact intrinsics (a ``data_gen.py pointclouds``
folder, or procedural scenes rendered on the fly) and distorts it the way inference meets
it (LeReS, CVPR 2021):

* **shift**: the depth a network predicts is affine in the true depth; after the LeReS
  normalisation (``geometry.camera.normalize_depth``, the one used at inference too) what
  is left of it is a shift ``s`` of the normalised depth. A sample draws ``s`` in
  ``shift_range`` (LeReS re-implementations use [-0.25, 0.8]), builds the affine depth
  whose normalisation has exactly that shift and normalises it, so the network sees what
  inference gives it and ``normalised - s`` is the true geometry up to scale. Without
  shift distortion the depth is the true one divided by its 98th percentile (``s = 0``).
* **focal**: the cloud is unprojected with the focal lengths multiplied by a ratio ``r``
  drawn in ``focal_range`` (LeReS: [0.6, 1.25]; uniformly, or uniformly in log space with
  ``focal_log_uniform``); the true focal is ``f_in / r``.

The network reads ``num_points`` pixels drawn from the valid ones, as ``xyz`` (3 channels),
``xyz`` plus the pixel's normalised ``(u - cx, v - cy) / (H / 2)`` (5 channels) or ``xyz``
plus the unit surface normal (6 channels), and regresses one target: ``shift`` (``s``),
``focal`` (``r``) or ``scale`` (metric depth over corrected normalised depth). Each sample
is a pure function of ``(seed, epoch, index)``.

**Real data mixed with procedural scenes.** ``data.root`` takes one ``data_gen.py
pointclouds`` folder or a list of them, and ``data.weights`` a sampling weight per folder
(null: every sample once per epoch). Write one folder per dataset with the readers of
``datasets.depth_sources`` (ScanNet ``.sens``, 3D Ken Burns, Taskonomy, any depth folder
with intrinsics) and one of procedural scenes, then train on all of them::

    python data_gen.py pointclouds --scannet /data/scannet/scans -n 20000 --out data/pc/scannet
    python data_gen.py pointclouds --kenburns /data/3d-ken-burns -n 10000 --out data/pc/kenburns
    python data_gen.py pointclouds --taskonomy /data/taskonomy -n 20000 --out data/pc/taskonomy
    python data_gen.py pointclouds --procedural 20000 --size 192,256 --out data/pc/procedural
    python train_3d.py configs/pointcloud_focal.yaml \
        'data.root=[data/pc/scannet,data/pc/kenburns,data/pc/taskonomy,data/pc/procedural]' \
        'data.weights=[0.3,0.2,0.2,0.3]'

Each training sample picks a folder by weight, then one of its training samples; a folder
written with ``--motorcycle`` (a validation frame) is refused.

    python -m datasets.pointcloud --show --out pointcloud_samples.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.depth_sources import ProceduralSource
from geometry.camera import (
    CLOUD_INPUT_CHANNELS,
    NORMALISATION_PERCENTILE,
    affine_depth_with_shift,
    normalize_depth,
    scale_focal,
    shift_bounds,
    surface_normals,
    unproject,
    valid_depth_mask,
)
from utils.arguments import ArgumentParser
from utils.config import merge_config
from utils.errors import UserError, run_cli

TARGETS = ("shift", "focal", "scale")
SPLITS = ("train", "val")

DEFAULT_CONF: dict[str, Any] = {
    # Folder written by `data_gen.py pointclouds`, or a list of them to mix; null renders
    # procedural scenes instead.
    "root": None,
    # Sampling weight of each root (a list as long as `root`); null: every sample of
    # every root once per epoch.
    "weights": None,
    "procedural": {
        "count": 1000,
        "seed": 0,
        "size": [96, 128],
        "fov_prior": "real",  # real | wide (datasets.procedural_scenes)
        "sensor": True,  # sensor effects: noise, missing returns, range
    },
    "train_split": 0.9,  # share of the samples used for training, the rest validates
    # Read this split's depth maps once into memory (forked loader workers share them).
    "preload": False,
    "seed": 0,
    "num_points": 2048,
    "input_channels": 3,  # 3: xyz, 5: xyz + normalised uv, 6: xyz + surface normal
    # Normals of 6-channel input: 0 central differences, k >= 1 planes fitted over
    # (2k + 1)^2 pixels (steadier under sensor noise).
    "normal_radius": 0,
    "target": "focal",  # shift | focal | scale
    "distort_shift": True,
    "shift_range": [-0.25, 0.8],
    "distort_focal": True,
    "focal_range": [0.6, 1.25],
    # Draw the focal ratio uniformly in log space (as often below 1 as above, by ratio).
    "focal_log_uniform": False,
}


def plane_fit_normals(
    depth: np.ndarray,
    valid: np.ndarray,
    K: np.ndarray,
    pixels: np.ndarray,
    radius: int,
    tolerance: float = 0.1,
) -> np.ndarray:
    """Unit normals of planes fitted to each pixel's ``(2 radius + 1)^2`` neighbourhood.

    The neighbours unprojected with ``K`` whose depth is within ``tolerance`` (relative)
    of the centre's (so a fit does not reach across a depth edge) give a covariance whose
    least eigenvector is the normal. Against sensor noise this is far steadier than
    central differences (``geometry.camera.surface_normals``), whose error on the
    procedural scenes' noisy depth is several times larger.

    Args:
        depth: ``(H, W)`` depth; ``valid``: ``(H, W)`` bool; ``K``: ``(3, 3)``.
        pixels: ``(N,)`` flat pixel indices (``v * W + u``).
        radius: neighbourhood half size in pixels (>= 1).
        tolerance: relative depth difference of a usable neighbour.

    Returns:
        ``(N, 3)`` float64 normals facing the camera; zero where fewer than 6 neighbours
        are usable or they do not span a plane (a thin line of points).
    """
    height, width = depth.shape
    v, u = np.divmod(np.asarray(pixels), width)
    steps = np.arange(-radius, radius + 1)
    dv, du = (a.ravel() for a in np.meshgrid(steps, steps, indexing="ij"))
    nu, nv = u[:, None] + du, v[:, None] + dv
    inside = (nu >= 0) & (nu < width) & (nv >= 0) & (nv < height)
    nu, nv = np.clip(nu, 0, width - 1), np.clip(nv, 0, height - 1)
    around = depth[nv, nu].astype(np.float64)
    centre = depth[v, u].astype(np.float64)[:, None]
    usable = inside & valid[nv, nu] & (np.abs(around - centre) <= tolerance * centre)
    usable &= valid[v, u][:, None]
    weight = usable.astype(np.float64)
    count = weight.sum(1)
    # Unprojected neighbours, coordinate by coordinate (N, M): cheaper than (N, M, 3).
    coords = (
        (nu - K[0, 2]) * around / K[0, 0],
        (nv - K[1, 2]) * around / K[1, 1],
        around,
    )
    means = [(weight * c).sum(1) / np.maximum(count, 1.0) for c in coords]
    centred = [(c - m[:, None]) * weight for c, m in zip(coords, means)]
    covariance = np.empty((len(v), 3, 3))
    for i in range(3):
        for j in range(i, 3):
            covariance[:, i, j] = covariance[:, j, i] = (centred[i] * centred[j]).sum(1)
    values, vectors = np.linalg.eigh(covariance)
    normals = vectors[..., 0]
    good = (count >= 6) & (values[:, 1] > 4.0 * values[:, 0])
    ray = np.stack(
        [(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(u.shape)], -1
    )
    normals = normals * np.where((normals * ray).sum(-1, keepdims=True) > 0, -1.0, 1.0)
    return np.where(good[:, None], normals, 0.0)


def cloud_input(
    depth: np.ndarray,
    valid: np.ndarray,
    K: np.ndarray,
    num_points: int,
    rng: np.random.Generator,
    input_channels: int = 3,
    normal_radius: int = 0,
) -> np.ndarray:
    """The network input: ``num_points`` valid pixels unprojected with ``K``.

    The depth is first divided by its 98th percentile, a pure scale that keeps the shape
    and makes a shift-corrected depth (inference's second focal pass) look like the
    normalised depths of training. Pixels are drawn without replacement when there are
    enough valid ones.

    Args:
        depth: ``(H, W)`` depth (normalised or corrected).
        valid: ``(H, W)`` bool mask.
        K: ``(3, 3)`` intrinsics to unproject with.
        num_points: points to draw.
        rng: the sample's random stream.
        input_channels: 3 (``xyz``), 5 (``xyz`` and normalised ``uv``) or 6 (``xyz`` and
            the unit surface normal).
        normal_radius: 0: normals by central differences
            (:func:`geometry.camera.surface_normals`); ``k`` >= 1: fitted planes over
            ``(2k + 1)^2`` pixels (:func:`plane_fit_normals`).

    Returns:
        ``(num_points, input_channels)`` float32.
    """
    if input_channels not in CLOUD_INPUT_CHANNELS:
        raise UserError(
            f"input_channels must be one of {sorted(CLOUD_INPUT_CHANNELS)}, "
            f"got {input_channels}"
        )
    height, width = depth.shape
    flat = np.flatnonzero(valid)
    if flat.size == 0:
        raise UserError("depth map has no valid pixel")
    pick = rng.choice(flat, num_points, replace=flat.size < num_points)
    v, u = np.divmod(pick, width)
    scale = np.percentile(depth[valid], NORMALISATION_PERCENTILE)
    d = depth.ravel()[pick].astype(np.float64) / max(scale, 1e-12)
    uv = np.stack([u, v], -1).astype(np.float64)
    points = unproject(uv, d, K)
    if input_channels == 5:
        half = height / 2.0
        centred = (uv - K[:2, 2]) / half
        points = np.concatenate([points, centred], -1)
    elif input_channels == 6:
        if normal_radius > 0:
            normals = plane_fit_normals(depth, valid, K, pick, normal_radius)
        else:
            normals = surface_normals(depth, valid, K, pick)
        points = np.concatenate([points, normals], -1)
    return points.astype(np.float32)


def distorted_sample(
    depth: np.ndarray, K: np.ndarray, rng: np.random.Generator, conf: dict[str, Any]
) -> dict[str, Any]:
    """Distort one metric depth map (see module docstring) and build its network input.

    Args:
        depth: ``(H, W)`` metric depth, invalid pixels 0 / NaN.
        K: ``(3, 3)`` its true intrinsics.
        rng: the sample's random stream.
        conf: the ``data`` config (keys of ``DEFAULT_CONF``).

    Returns:
        ``points (N, C)`` float32, ``target`` (the value of ``conf['target']``), and the
        ``shift``, ``focal_ratio`` and ``scale`` of the distortion, as Python floats
        (batched to ``(B,)`` tensors).
    """
    valid = valid_depth_mask(depth)
    if conf["distort_shift"]:
        low, high = conf["shift_range"]
        lower, _ = shift_bounds(depth, valid)
        # Shifts near the bound need an unbounded scale: keep a margin.
        low = max(low, 0.9 * lower)
        shift = float(rng.uniform(low, high)) if high > low else high
        affine, _ = affine_depth_with_shift(depth, valid, shift)
        normalised = normalize_depth(affine, valid)
    else:
        shift = 0.0
        normalised = np.zeros(depth.shape, np.float32)
        normalised[valid] = depth[valid] / np.percentile(
            depth[valid], NORMALISATION_PERCENTILE
        )
    ratio = 1.0
    if conf["distort_focal"]:
        low, high = conf["focal_range"]
        if conf["focal_log_uniform"]:
            ratio = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        else:
            ratio = float(rng.uniform(low, high))
    points = cloud_input(
        normalised,
        valid,
        scale_focal(K, ratio),
        conf["num_points"],
        rng,
        conf["input_channels"],
        conf["normal_radius"],
    )
    scale = float(np.median(depth[valid] / (normalised[valid] - shift)))
    values = {"shift": shift, "focal": ratio, "scale": scale}
    return {
        "points": points,
        "target": float(values[conf["target"]]),
        "shift": shift,
        "focal_ratio": ratio,
        "scale": scale,
    }


def check_conf(conf: dict[str, Any]) -> None:
    """One-line errors for impossible ``data`` values."""
    if conf["target"] not in TARGETS:
        raise UserError(f"data.target '{conf['target']}' is not one of {TARGETS}")
    if conf["input_channels"] not in CLOUD_INPUT_CHANNELS:
        raise UserError(
            f"data.input_channels must be one of {sorted(CLOUD_INPUT_CHANNELS)}, "
            f"got {conf['input_channels']}"
        )
    low, high = conf["shift_range"]
    if not -1.0 < low <= high < 1.0:
        raise UserError(
            f"data.shift_range {conf['shift_range']} must satisfy -1 < low <= high < 1"
        )
    low, high = conf["focal_range"]
    if not 0.0 < low <= high:
        raise UserError(
            f"data.focal_range {conf['focal_range']} must be 0 < low <= high"
        )
    if not 0.0 < conf["train_split"] < 1.0:
        raise UserError(f"data.train_split {conf['train_split']} must be in (0, 1)")
    if conf["num_points"] < 1:
        raise UserError("data.num_points must be >= 1")
    if conf["normal_radius"] < 0:
        raise UserError(f"data.normal_radius must be >= 0, got {conf['normal_radius']}")


def generated_files(root: str | Path) -> list[Path]:
    """Sorted ``depths/*.npz`` of a ``data_gen.py pointclouds`` folder (checked, and
    refused when it holds a validation-only frame)."""
    root = Path(root)
    files = sorted((root / "depths").glob("*.npz"))
    if not files:
        raise UserError(
            f"data.root '{root}' has no depths/*.npz (write it with data_gen.py pointclouds)"
        )
    plan = root / "plan.json"
    if plan.is_file():
        try:
            settings = json.loads(plan.read_text()).get("settings", {})
        except (json.JSONDecodeError, AttributeError):
            settings = {}
        if settings.get("validation_only"):
            raise UserError(
                f"data.root '{root}' holds a validation-only frame (the Middlebury "
                "Motorcycle frame); evaluate on it, never train on it"
            )
    return files


def load_generated(depth_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(depth (H, W) float32, K (3, 3))`` of one generated sample."""
    K_path = depth_path.parent.parent / "intrinsics" / f"{depth_path.stem}.npy"
    if not K_path.is_file():
        raise UserError(f"sample '{depth_path}' has no intrinsics file '{K_path}'")
    with np.load(depth_path) as data:
        depth = data["depth"].astype(np.float32)
    return depth, np.load(K_path).astype(np.float64)


def _roots_and_weights(conf: dict[str, Any]) -> tuple[list[str], list[float] | None]:
    roots = conf["root"]
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    if not roots or not all(isinstance(r, (str, Path)) for r in roots):
        raise UserError(f"data.root {conf['root']!r} is not a folder or a list of them")
    weights = conf["weights"]
    if weights is None:
        return [str(r) for r in roots], None
    if (
        not isinstance(weights, (list, tuple))
        or len(weights) != len(roots)
        or not all(isinstance(w, (int, float)) and w >= 0 for w in weights)
        or sum(weights) <= 0
    ):
        raise UserError(
            f"data.weights {weights!r} must be {len(roots)} non-negative numbers (one "
            "per data.root) with a positive sum"
        )
    return [str(r) for r in roots], [float(w) for w in weights]


class PointCloudDataset(Dataset):
    """Distorted clouds with their corrections (see module docstring).

    Args:
        conf: ``data`` config (merged with ``DEFAULT_CONF``).
        split: ``train`` or ``val``: the first ``train_split`` of a fixed permutation of
            each source's samples, or the rest.

    With several ``root`` folders and ``weights``, each training sample picks its
    folder with probability proportional to its weight and a sample of that folder's
    split uniformly, both from the sample's ``(seed, epoch, index)`` stream; an epoch
    has as many samples as the splits hold together. Validation always reads every
    sample of every split once. Mix real data and procedural scenes this way::

        data.root=[data/pc/scannet,data/pc/procedural] data.weights=[0.4,0.6]

    Samples: ``points (N, C)``, ``target ()``, ``shift ()``, ``focal_ratio ()``,
    ``scale ()`` (float32) and ``index``.
    """

    default_conf = DEFAULT_CONF

    def __init__(self, conf: dict[str, Any] | None, split: str = "train"):
        self.conf = merge_config(DEFAULT_CONF, conf or {}, prefix="data.")
        check_conf(self.conf)
        if split not in SPLITS:
            raise UserError(f"split '{split}' is not one of {SPLITS}")
        self.weights = None
        if self.conf["root"] is None:
            proc = self.conf["procedural"]
            height, width = proc["size"]
            self.source = ProceduralSource(
                proc["count"],
                proc["seed"],
                height,
                width,
                proc["fov_prior"],
                proc["sensor"],
            )
            self.files: list[list[Path]] = [[]]
            totals = [proc["count"]]
        else:
            roots, weights = _roots_and_weights(self.conf)
            self.files = [generated_files(root) for root in roots]
            self.source = None
            totals = [len(files) for files in self.files]
            if weights is not None and split == "train":
                self.weights = np.asarray(weights) / sum(weights)
        # (source, sample) pairs of this split, source by source.
        self.parts: list[np.ndarray] = []
        for index, total in enumerate(totals):
            order = np.random.default_rng(12345).permutation(total)
            cut = int(round(self.conf["train_split"] * total))
            part = order[:cut] if split == "train" else order[cut:]
            if len(part) == 0:
                raise UserError(
                    f"data.train_split {self.conf['train_split']} leaves no {split} "
                    f"sample of {total}"
                    + ("" if len(totals) == 1 else f" in data.root[{index}]")
                )
            self.parts.append(part)
        self.items = [(s, int(i)) for s, part in enumerate(self.parts) for i in part]
        self.split, self.epoch = split, 0
        self.preloaded: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        if self.conf["preload"] and self.source is None:
            self.preloaded = {
                (s, i): load_generated(self.files[s][i]) for s, i in self.items
            }

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def item(self, index: int, rng: np.random.Generator) -> tuple[int, int]:
        """``(source, sample)`` read for ``index``: fixed, or drawn by ``weights``."""
        if self.weights is None:
            return self.items[index]
        source = int(rng.choice(len(self.weights), p=self.weights))
        part = self.parts[source]
        return source, int(part[rng.integers(len(part))])

    def frame(self, source: int, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Metric ``depth (H, W)`` and ``K (3, 3)`` of one sample of one source."""
        if (source, item) in self.preloaded:
            return self.preloaded[(source, item)]
        if self.source is not None:
            frame = self.source.load(item)
            return frame.depth, frame.K
        return load_generated(self.files[source][item])

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.conf["seed"], self.epoch, int(index)])
        depth, K = self.frame(*self.item(index, rng))
        return {**distorted_sample(depth, K, rng, self.conf), "index": int(index)}


def draw_cloud_views(points: np.ndarray, size: int = 128) -> np.ndarray:
    """Top and side views of a cloud, same scale in both axes.

    Args:
        points: ``(N, 3)`` camera-frame points (x right, y down, z forward).
        size: side of each view in pixels.

    Returns:
        ``(size, 2 * size, 3)`` uint8 RGB: top view (x right, z up) | side view
        (z right, -y up).
    """
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    extent = max(float(np.percentile(np.abs(points), 99)), 1e-6) * 1.1
    views = []
    for right, up in ((x + extent, z), (z, extent - y)):
        canvas = np.full((size, size, 3), 255, np.uint8)
        cols = right / (2 * extent) * (size - 1)
        rows = (1 - up / (2 * extent)) * (size - 1)
        keep = (cols >= 0) & (cols <= size - 1) & (rows >= 0) & (rows <= size - 1)
        canvas[rows[keep].round().astype(int), cols[keep].round().astype(int)] = (
            40,
            70,
            200,
        )
        views.append(canvas)
    return np.concatenate(views, axis=1)


def cloud_panels(
    batch: dict[str, Any], pred: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """TensorBoard panel of the first sample's cloud with its target and prediction."""
    image = draw_cloud_views(batch["points"][0, :, :3].detach().float().cpu().numpy())
    text = f"t {float(batch['target'][0]):.3f} p {float(pred['value'][0]):.3f}"
    cv2.putText(image, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (200, 0, 0))
    return {"cloud": torch.from_numpy(image).permute(2, 0, 1).float() / 255.0}


def main(argv: list[str] | None = None) -> int:
    """``python -m datasets.pointcloud --show``: a PNG grid of distorted training clouds."""
    parser = ArgumentParser(
        prog="python -m datasets.pointcloud",
        description="Draw distorted training clouds (top and side views) with targets.",
    )
    parser.add_argument("--show", action="store_true", help="write the sample grid")
    parser.add_argument(
        "--root",
        default=None,
        help="data_gen.py pointclouds folder (default: procedural)",
    )
    parser.add_argument(
        "--target", default="focal", choices=TARGETS, help="target shown"
    )
    parser.add_argument("--count", type=int, default=8, help="number of samples")
    parser.add_argument(
        "--out", type=Path, default=Path("pointcloud_samples.png"), help="PNG to write"
    )
    args = parser.parse_args(argv)

    def run() -> int:
        if not args.show:
            parser.print_help()
            return 0
        from utils.io import atomic_write_image

        conf = {"root": args.root, "target": args.target}
        if args.root is None:
            conf["procedural"] = {"count": max(args.count * 2, 4)}
        dataset = PointCloudDataset(conf, "train")
        rows = []
        for index in range(min(args.count, len(dataset))):
            sample = dataset[index]
            tile = draw_cloud_views(sample["points"][:, :3])
            label = (
                f"s {float(sample['shift']):+.2f} r {float(sample['focal_ratio']):.2f}"
            )
            cv2.putText(
                tile, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (200, 0, 0)
            )
            rows.append(tile)
        grid = np.concatenate(rows, axis=0)
        atomic_write_image(args.out, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        print(f"wrote {args.out}")
        return 0

    return run_cli(run, "python -m datasets.pointcloud")


if __name__ == "__main__":
    sys.exit(main())
