"""``evaluation.py pointcloud``: recover focal length and depth shift, write and score clouds.

For each depth map (LeReS's order): normalise it (``geometry.camera.normalize_depth``, as in
training), start from a ``--fov-init`` (60 degree) vertical field of view with the principal
point at the image centre, predict the focal ratio, then the shift with the new focal, then
the focal again on the shift-corrected depth. ``--iterations N`` repeats the shift and
focal passes N times (each later shift pass reads the corrected depth normalised again;
the shifts compose into one shift of the first normalised depth). Prints the recovered
focal and shift, and writes the corrected cloud as ``clouds/<name>.ply`` (open3d;
coloured when RGB is given).

With the true intrinsics (``--intrinsics``, per-file intrinsics files, or the
``intrinsics/`` of a ``data_gen.py pointclouds`` folder) the depth is taken as ground truth
and scored beside the 60-degree baseline (no correction): median and mean vertical-FOV
error in degrees, median relative focal error, shift error (in normalised-depth units) and
AbsRel of the corrected depth after a median scale alignment, into ``summary.json``,
``results.md`` (the summary table, then one row per depth map: true, starting and
recovered FOV, both FOV errors, true and recovered shift and the shift error),
``predictions.json`` and ``error_cdf.png``. ``--distort-shift LO,HI
--seed S`` first turns the metric depth into an emulated network output whose normalised
depth has a known shift drawn in [LO, HI] (an affine map of the depth: the normalisation
removes any additive part, so the shift of the normalised depth is what remains of it).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from datasets.depth_io import (
    DEPTH_SUFFIXES,
    check_intrinsics_fit,
    clean_depth,
    describe_invalid,
    parse_intrinsics,
    read_depth_file,
    read_intrinsics_file,
)
from datasets.pointcloud import cloud_input
from engine.devices import (
    AutocastCall,
    add_device_argument,
    add_precision_argument,
    inference_precision,
    resolve_device,
)
from evaluators.pointcloud_report import (
    error_cdf_png,
    results_markdown,
    score_item,
    summarise,
)
from geometry.camera import (
    NORMALISATION_OFFSET,
    NORMALISATION_PERCENTILE,
    affine_depth_with_shift,
    depth_to_points,
    focal_to_fov,
    fov_to_focal,
    intrinsics_matrix,
    normalize_depth,
    normalized_shift,
    shift_bounds,
    valid_depth_mask,
)
from models.pointcloud_nets import CloudRegressor, build_cloud_model
from utils.arguments import ArgumentParser
from utils.errors import UserError, run_cli
from utils.io import (
    atomic_write,
    atomic_write_text,
    ensure_writable_dir,
    load_checkpoint,
)

PROG = "evaluation.py pointcloud"
RGB_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Item:
    """One depth map to correct: ``depth (H, W)`` cleaned, optional true ``K`` and ``rgb``."""

    name: str
    depth: np.ndarray
    K: np.ndarray | None
    rgb: np.ndarray | None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Recover focal length and depth shift of depth maps (LeReS point-cloud "
        "module); write corrected .ply clouds and, given true intrinsics, score them.",
    )
    parser.add_argument(
        "--focal-model", required=True, help="train_3d.py focal checkpoint"
    )
    parser.add_argument(
        "--shift-model", required=True, help="train_3d.py shift checkpoint"
    )
    parser.add_argument(
        "--depth",
        required=True,
        help="depth file, folder of depth files, or a data_gen.py pointclouds folder",
    )
    parser.add_argument("--rgb", help="colour image or folder (matched by file stem)")
    parser.add_argument(
        "--depth-scale", type=float, default=1000.0, help="PNG depth units per metre"
    )
    parser.add_argument(
        "--intrinsics",
        help="true intrinsics fx,fy,cx,cy or a file, for every depth map (enables scoring)",
    )
    parser.add_argument(
        "--fov-init", type=float, default=60.0, help="starting vertical FOV (degrees)"
    )
    parser.add_argument(
        "--distort-shift",
        help="LO,HI: emulate a network output whose normalised depth is shifted by a "
        "known amount drawn in [LO, HI] (needs true intrinsics; write "
        "--distort-shift=-0.25,0.8 when LO is negative)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="distortion and point sampling"
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=16,
        help="point samplings of each cloud whose predictions are averaged (LeReS: 1)",
    )
    parser.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="every other draw reads the scene's left-right mirror image (same focal "
        "and shift; LeReS: --no-mirror)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=1,
        help="shift-then-focal passes after the first focal pass (1: LeReS's "
        "focal-shift-focal)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/pointcloud_eval"),
        help="output folder",
    )
    add_device_argument(parser)
    add_precision_argument(parser, "fp32", note="of the point-cloud networks; no int8")
    parser.add_overrides("settings", keys="options")
    return parser


def load_model(path: str, target: str, option: str) -> tuple[CloudRegressor, dict]:
    """A trained regressor and its run config; checks it predicts ``target``."""
    ckpt = load_checkpoint(path)
    conf = ckpt.get("config") if isinstance(ckpt, dict) else None
    if not conf or "model" not in conf or "model" not in ckpt:
        raise UserError(f"{option} '{path}' is not a train_3d.py checkpoint")
    if conf["model"].get("target") != target:
        raise UserError(
            f"{option} '{path}' predicts {conf['model'].get('target')!r}, not {target!r}"
        )
    model = build_cloud_model(conf["model"], conf.get("loss"))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise UserError(
            f"{option} '{path}' does not match its config: {first}"
        ) from None
    return model.eval(), conf


def _find_rgb(rgb: str | None, stem: str, single: bool) -> np.ndarray | None:
    if rgb is None:
        return None
    path = Path(rgb)
    if path.is_dir():
        candidates = [path / f"{stem}{s}" for s in RGB_SUFFIXES]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            return None
    elif not single:
        raise UserError(f"--rgb '{rgb}' must be a folder when --depth is a folder")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"RGB image '{path}' cannot be read")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def gather(args: argparse.Namespace) -> tuple[list[Item], dict[str, int]]:
    """Read and check every input before anything is written."""
    depth_path = Path(args.depth)
    given_K = None
    if args.intrinsics:
        if Path(args.intrinsics).is_file():
            given_K = read_intrinsics_file(args.intrinsics)
        else:
            given_K = (parse_intrinsics(args.intrinsics), None)
    entries: list[tuple[Path, tuple | None, Path | None]] = []
    if depth_path.is_dir() and (depth_path / "depths").is_dir():
        for file in sorted((depth_path / "depths").glob("*.npz")):
            K_file = depth_path / "intrinsics" / f"{file.stem}.npy"
            K = given_K or (read_intrinsics_file(K_file) if K_file.is_file() else None)
            entries.append((file, K, depth_path / "rgb"))
    elif depth_path.is_dir():
        for file in sorted(depth_path.iterdir()):
            if file.suffix.lower() not in DEPTH_SUFFIXES:
                continue
            own = [file.with_suffix(s) for s in (".json", ".txt")]
            own_K = next((p for p in own if p.is_file()), None)
            K = given_K or (read_intrinsics_file(own_K) if own_K else None)
            entries.append((file, K, None))
    elif depth_path.is_file():
        entries.append((depth_path, given_K, None))
    else:
        raise UserError(f"--depth '{depth_path}' not found")
    if not entries:
        raise UserError(f"--depth '{depth_path}' holds no depth file")
    items, invalid = [], {"nan": 0, "inf": 0, "zero": 0}
    for file, K, rgb_dir in entries:
        scale = args.depth_scale if file.suffix.lower() == ".png" else 1.0
        depth, counts = clean_depth(read_depth_file(file, scale), str(file))
        invalid = {k: invalid[k] + counts[k] for k in invalid}
        if K is not None:
            check_intrinsics_fit(K[0], K[1], depth.shape, str(file))
        rgb_source = args.rgb or (
            str(rgb_dir) if rgb_dir and rgb_dir.is_dir() else None
        )
        rgb = _find_rgb(rgb_source, file.stem, depth_path.is_file())
        if rgb is not None and rgb.shape[:2] != depth.shape:
            rgb = cv2.resize(rgb, depth.shape[::-1], interpolation=cv2.INTER_AREA)
        items.append(Item(file.stem, depth, None if K is None else K[0], rgb))
    if args.distort_shift and any(item.K is None for item in items):
        raise UserError("--distort-shift needs the true intrinsics of every depth map")
    return items, invalid


def parse_range(text: str) -> tuple[float, float]:
    """``"LO,HI"`` with ``-1 < LO <= HI < 1``."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--distort-shift '{text}' is not LO,HI") from None
    if not -1.0 < low <= high < 1.0:
        raise UserError(f"--distort-shift '{text}' needs -1 < LO <= HI < 1")
    return low, high


@torch.no_grad()
def predict(
    model: CloudRegressor,
    conf: dict,
    depth: np.ndarray,
    valid: np.ndarray,
    K: np.ndarray,
    rng: np.random.Generator,
    device: torch.device,
    draws: int = 1,
    mirror: bool = False,
) -> float:
    """The model's prediction for ``depth`` unprojected with ``K``, averaged over ``draws``
    independent samplings of the cloud's points (one batch); ratios (focal, scale) are
    averaged geometrically, as the log-space models regress them.

    With ``mirror`` every other draw samples the left-right mirror image of the scene
    (depth flipped, principal point reflected): a mirrored scene has the same focal length
    and depth shift, so the average also cancels the part of the error that is not
    mirror-symmetric.
    """
    views = [(depth, valid, K)]
    if mirror:
        flipped = K.copy()
        flipped[0, 2] = depth.shape[1] - 1 - K[0, 2]
        views.append((depth[:, ::-1].copy(), valid[:, ::-1].copy(), flipped))
    points = [
        cloud_input(
            *views[i % len(views)],
            conf["data"]["num_points"],
            rng,
            conf["model"]["input_channels"],
            conf["data"].get("normal_radius", 0),
        )
        for i in range(draws)
    ]
    batch = {"points": torch.from_numpy(np.stack(points)).to(device)}
    values = model(batch)["value"].double()
    if conf["model"]["target"] == "shift":
        return float(values.mean())
    return float(values.log().mean().exp())


def recover(
    depth_net: np.ndarray,
    valid: np.ndarray,
    models: dict[str, tuple[CloudRegressor, dict]],
    fov_init: float,
    rng: np.random.Generator,
    device: torch.device,
    draws: int = 1,
    mirror: bool = False,
    iterations: int = 1,
) -> dict[str, Any]:
    """Focal, then shift, then focal again (LeReS) for one emulated or real network depth;
    ``iterations`` > 1 repeats the shift and focal passes.

    A later shift pass reads the corrected depth normalised again (``c`` with minimum
    ``m`` and 98th percentile ``q`` of ``c - m + 0.5``) and predicts its shift ``s'``;
    relative to the first normalised depth the shifts compose to
    ``s + m - 0.5 + s' q``.

    Returns:
        ``focal_init``, ``focal_first``, ``focal`` (pixels), ``shift`` (of the first
        normalised depth), the corrected normalised depth ``corrected (H, W)`` and
        ``normalised (H, W)``.
    """
    height, width = depth_net.shape
    normalised = normalize_depth(depth_net, valid)
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    focal0 = fov_to_focal(fov_init, height)

    def K_of(focal: float) -> np.ndarray:
        return intrinsics_matrix(focal, focal, *centre)

    focal_model, shift_model = models["focal"], models["shift"]
    focal1 = focal0 / predict(
        *focal_model, normalised, valid, K_of(focal0), rng, device, draws, mirror
    )
    focal, shift, corrected = focal1, 0.0, normalised
    for iteration in range(iterations):
        if iteration == 0:
            seen, low, spread = normalised, NORMALISATION_OFFSET, 1.0
        else:
            values = corrected[valid].astype(np.float64)
            low = float(values.min())
            spread = float(
                np.percentile(
                    values - low + NORMALISATION_OFFSET, NORMALISATION_PERCENTILE
                )
            )
            seen = normalize_depth(corrected, valid)
        step = predict(
            *shift_model, seen, valid, K_of(focal), rng, device, draws, mirror
        )
        shift = shift + low - NORMALISATION_OFFSET + step * spread
        # The exact shift is always below the smallest normalised depth: keep depths
        # positive.
        shift = min(shift, float(normalised[valid].min()) - 1e-3)
        corrected = np.where(valid, normalised - shift, 0).astype(np.float32)
        focal = focal / predict(
            *focal_model, corrected, valid, K_of(focal), rng, device, draws, mirror
        )
    return {
        "focal_init": focal0,
        "focal_first": focal1,
        "focal": focal,
        "shift": shift,
        "corrected": corrected,
        "normalised": normalised,
    }


def write_ply(path: Path, points: np.ndarray, colors: np.ndarray | None) -> None:
    """``points (N, 3)`` (and ``colors (N, 3)`` in [0, 1]) as a binary .ply, atomically."""
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(
        o3d.utility.Vector3dVector(points.astype(np.float64))
    )
    if colors is not None:
        cloud.colors = o3d.utility.Vector3dVector(colors.astype(np.float64))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp.ply")
    try:
        if not o3d.io.write_point_cloud(str(temporary), cloud):
            raise UserError(f"open3d could not write '{temporary}'")
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def main(argv: list[str] | None = None) -> int:
    """Command line of ``evaluation.py pointcloud`` (see module docstring)."""
    args = build_parser().parse_args(argv)

    def run() -> int:
        low_high = parse_range(args.distort_shift) if args.distort_shift else None
        if args.draws < 1:
            raise UserError(f"--draws must be >= 1, got {args.draws}")
        if args.iterations < 1:
            raise UserError(f"--iterations must be >= 1, got {args.iterations}")
        if not 0 < args.fov_init < 180:
            raise UserError(f"--fov-init {args.fov_init} is not in (0, 180)")
        device = resolve_device(args.device)
        precision = inference_precision(
            args.precision, device, network="the point-cloud networks"
        )
        models = {
            "focal": load_model(args.focal_model, "focal", "--focal-model"),
            "shift": load_model(args.shift_model, "shift", "--shift-model"),
        }
        models = {
            name: (AutocastCall(model.to(device), device, precision), conf)
            for name, (model, conf) in models.items()
        }
        items, invalid = gather(args)
        if any(invalid.values()):
            print(f"masked invalid depth pixels: {describe_invalid(invalid)}")
        out = ensure_writable_dir(args.out)
        rows = []
        for index, item in enumerate(items):
            rng = np.random.default_rng([args.seed, index])
            valid = valid_depth_mask(item.depth)
            depth_net, true_shift = item.depth, None
            if low_high is not None:
                low = max(low_high[0], 0.9 * shift_bounds(item.depth, valid)[0])
                true_shift = float(rng.uniform(low, max(low, low_high[1])))
                offset = float(rng.uniform(0.0, 2.0))
                depth_net, _ = affine_depth_with_shift(
                    item.depth, valid, true_shift, offset
                )
            elif item.K is not None:
                true_shift = normalized_shift(item.depth, valid)
            result = recover(
                depth_net,
                valid,
                models,
                args.fov_init,
                rng,
                device,
                args.draws,
                args.mirror,
                args.iterations,
            )
            height, width = item.depth.shape
            fov = float(focal_to_fov(result["focal"], height))
            print(
                f"{item.name}: focal {result['focal']:.1f} px (vertical FOV {fov:.1f} deg), "
                f"shift {result['shift']:+.4f}"
            )
            K = intrinsics_matrix(
                result["focal"], result["focal"], (width - 1) / 2, (height - 1) / 2
            )
            points = depth_to_points(result["corrected"].astype(np.float64), K)[valid]
            colors = None if item.rgb is None else item.rgb[valid] / 255.0
            write_ply(out / "clouds" / f"{item.name}.ply", points, colors)
            row = {
                "name": item.name,
                "focal_first": result["focal_first"],
                "focal": result["focal"],
                "fov": fov,
                "shift": result["shift"],
            }
            if item.K is not None:
                row.update(score_item(item.depth, item.K, result, true_shift))
            rows.append(row)
        atomic_write_text(out / "predictions.json", json.dumps(rows, indent=1) + "\n")
        scored = [r for r in rows if "true_focal" in r]
        if scored:
            settings = {
                "fov_init": args.fov_init,
                "distort_shift": list(low_high) if low_high else None,
                "seed": args.seed,
                "draws": args.draws,
                "mirror": args.mirror,
                "precision": precision,
                "iterations": args.iterations,
            }
            summary = summarise(scored, settings)
            atomic_write_text(
                out / "summary.json", json.dumps(summary, indent=2) + "\n"
            )
            table = results_markdown(summary, scored)
            atomic_write_text(out / "results.md", table)
            png = error_cdf_png(scored)
            atomic_write(out / "error_cdf.png", lambda f: f.write(png))
            print(table.split("\n\n")[0], table.split("\n\n")[1], sep="\n\n")
        print(f"wrote {len(rows)} clouds and the results to {out}")
        return 0

    return run_cli(run, PROG)
