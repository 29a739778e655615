"""``export.py homography_adaptation``: homographic adaptation labels for a folder of images.

One ``<out>/<image name>.npz`` per image (``points`` (N, 2) x, y; ``scores``;
``image_size``; ``provenance``, the JSON record of :func:`label_record`), written atomically.
A re-run skips an image whose file records the same detector, precision and settings and
recomputes the others, so labels of different detectors or settings never mix in a folder.
Shards (``--shard i/n``, or ``torchrun``) split the images between processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from engine.devices import (
    add_device_argument,
    add_precision_argument,
    inference_precision,
    resolve_rank_device,
)
from pipelines.homographic_adaptation import (
    HA_HOMOGRAPHY,
    adaptation_keypoints,
    check_aggregation,
    homographic_adaptation,
    model_detector,
    sample_homographies,
)
from utils.arguments import ArgumentParser
from utils.config import parse_shard
from utils.errors import UserError

EXPORT_DEFAULTS: dict = {
    "checkpoint": None,
    "split": "all",
    "num_homographies": 100,
    "aggregation": "sum",
    "batch_size": 25,
    "valid_border_margin": 3,
    "homographies": HA_HOMOGRAPHY,
    "detection_threshold": 0.015,
    "nms_radius": 4,
    "top_k": 0,
    "remove_borders": 0,
    "save_prob": False,
    "precision": "auto",
    "device": "auto",
    "channels_last": True,
    "seed": 0,
    "overlays": 0,
}
"""The ``export`` section (reference: magic-point_coco_export.yaml)."""

# Export settings a label file depends on (batch size, device, memory layout and overlays
# do not change the labels).
LABEL_SETTINGS = (
    "num_homographies",
    "homographies",
    "seed",
    "aggregation",
    "valid_border_margin",
    "detection_threshold",
    "nms_radius",
    "top_k",
    "remove_borders",
    "save_prob",
)


def label_record(conf: dict, precision: str) -> dict:
    """What this run's label files depend on; each file stores it as JSON ``provenance``.

    The detector is named by the SHA-256 of its checkpoint (or, random, by its seed and
    model config), ``precision`` as run (resolved, labelled by
    :func:`models.quantize.precision_label`), plus the image size and the
    :data:`LABEL_SETTINGS`. The per-image source file size is added by the caller.
    """
    from models.quantize import precision_label
    from utils.config import to_plain
    from utils.io import file_sha256

    ex = conf["export"]
    if ex["checkpoint"]:
        detector = {"id": f"sha256:{file_sha256(ex['checkpoint'])}"}
    else:
        detector = {"id": "random", "seed": ex["seed"], "model": conf["model"]}
    record = {
        "detector": detector,
        "precision": precision_label(precision),
        "image_size": conf["data"]["image_size"],
        "export": {key: ex[key] for key in LABEL_SETTINGS},
    }
    # As JSON sees it, so tuples and lists (or 1 and 1.0 kept as int) compare equal.
    return json.loads(json.dumps(to_plain(record), sort_keys=True))


def label_stale_reason(path: Path, record: dict) -> str | None:
    """Why the label file ``path`` cannot stand for ``record``; None if it can."""
    from datasets.features import read_provenance

    stored = read_provenance(path)
    if stored is None:
        return "no provenance record (written by an earlier version, or unreadable)"
    return _first_difference(stored, record)


def _first_difference(was: object, now: object, key: str = "") -> str | None:
    """``"<dotted key> was X, now Y"`` for the first leaf where two records differ."""
    if isinstance(was, dict) and isinstance(now, dict):
        for name in sorted(set(was) | set(now)):
            found = _first_difference(
                was.get(name), now.get(name), f"{key}.{name}" if key else name
            )
            if found:
                return found
        return None
    if was != now:
        return f"{key} was {json.dumps(was)}, now {json.dumps(now)}"
    return None


def export_defaults(user: dict) -> dict:
    """Code defaults of an HA export config, following the user's ``model.name``."""
    from datasets.image_folder import ImageFolder
    from models import get_model

    model_cls = get_model((user.get("model") or {}).get("name", "magicpoint"))
    return {
        "data": ImageFolder.default_conf,
        "model": model_cls.defaults(),
        "export": EXPORT_DEFAULTS,
    }


def image_seed(seed: int, name: str) -> np.random.Generator:
    """Homographies of an image depend only on (seed, name): shards and re-runs agree."""
    import zlib

    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _overlay(image: np.ndarray, points: torch.Tensor, prob: torch.Tensor) -> np.ndarray:
    from utils.visualize import colorize, draw_points, to_rgb_uint8

    rgb = draw_points(to_rgb_uint8(image), points, (0, 255, 0), radius=2)
    return np.concatenate([rgb, colorize(prob)], axis=1)


def export_main(argv: list[str] | None = None) -> int:
    """``export.py homography_adaptation``: HA labels for a folder of images."""
    import os
    import sys
    import time

    from tqdm import tqdm

    from utils.config import load_config, save_config
    from utils.errors import run_cli

    parser = ArgumentParser(
        prog="export.py homography_adaptation",
        description="Homographic adaptation: aggregate a detector over N homographies "
        "per image and write <out>/<image name>.npz (points (N, 2) x, y; scores; "
        "image_size; provenance). Re-runs skip an image whose file records the same "
        "detector, precision and settings, and recompute the others.",
        epilog="Sections: data (datasets.image_folder), model, export (defaults: "
        + ", ".join(
            f"{k}={v}" for k, v in EXPORT_DEFAULTS.items() if k != "homographies"
        )
        + "). Overrides: key.sub=value. torchrun splits the work over processes.",
    )
    parser.add_argument(
        "config", help="YAML config (e.g. configs/magicpoint_coco_export.yaml)"
    )
    parser.add_overrides("config overrides, e.g. export.num_homographies=50")
    parser.add_argument(
        "--images", help="image root (data.root): a folder or 'builtin'"
    )
    parser.add_argument("--out", required=True, help="output folder of the labels")
    parser.add_argument("--checkpoint", help="detector weights (export.checkpoint)")
    parser.add_argument("--shard", help="i/n: process every n-th image from the i-th")
    add_device_argument(parser, "export.device")
    add_precision_argument(parser, None, "export.precision", "of the detector")
    parser.add_argument(
        "--overlays", type=int, help="write PNG overlays for this many images"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_intermixed_args(argv)

    def run() -> int:
        from datasets.augmentation import homography_config
        from datasets.image_folder import list_images, load_gray, resize_image
        from models import build_model
        from utils.io import atomic_savez, atomic_write, ensure_writable_dir

        overrides = list(args.overrides)
        for flag, key in (
            ("images", "data.root"),
            ("checkpoint", "export.checkpoint"),
            ("device", "export.device"),
            ("precision", "export.precision"),
            ("overlays", "export.overlays"),
        ):
            if getattr(args, flag) is not None:
                overrides.append(f"{key}={getattr(args, flag)}")
        conf = load_config(args.config, overrides, export_defaults)
        ex = conf["export"]
        check_aggregation(ex["aggregation"])
        homography_config(ex["homographies"])
        shard, shards = parse_shard(args.shard)
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        shard, shards = shard * world + rank, shards * world
        device = resolve_rank_device(ex["device"])
        precision = inference_precision(
            ex["precision"], device, int8="auto", network="MagicPoint/SuperPoint"
        )
        entries = list_images(conf["data"], ex["split"])[shard::shards]

        if ex["checkpoint"]:
            from models.weights import load_model

            model, _ = load_model(ex["checkpoint"])
        else:
            print(
                "warning: no export.checkpoint given; the detector has random weights "
                "(labels are meaningless, useful only to test the pipeline)",
                file=sys.stderr,
            )
            # Seeded so that every shard and re-run builds the same network.
            torch.manual_seed(ex["seed"])
            model = build_model(conf["model"])
        model = model.to(device)
        detector = model_detector(model, precision, ex["channels_last"])
        # Created once the images and the weights have been read: bad input leaves no
        # folder behind.
        out = ensure_writable_dir(args.out)
        if rank == 0:
            save_config(conf, out / "export_config.yaml")
        size = tuple(int(v) for v in conf["data"]["image_size"])
        record = label_record(conf, precision)
        failed: list[str] = []
        stale: list[tuple[Path, str]] = []
        done = skipped = total_points = empty = 0
        overlays_left = int(ex["overlays"])
        start = time.perf_counter()
        bar = tqdm(
            entries,
            desc=f"HA {shard}/{shards}",
            disable=args.no_progress,
            dynamic_ncols=True,
        )
        for entry in bar:
            target = out / f"{entry.name}.npz"
            source = {"source_bytes": entry.path.stat().st_size} if entry.path else {}
            if target.is_file():
                reason = label_stale_reason(target, {**record, **source})
                if reason is None:
                    skipped += 1
                    continue
                stale.append((target, reason))
            try:
                gray = resize_image(load_gray(entry), size)
            except UserError as err:
                tqdm.write(f"warning: skipping {err}", file=sys.stderr)
                failed.append(str(entry.path or entry.name))
                if stale and stale[-1][0] == target:
                    target.unlink()  # no stale label left behind for the image
                continue
            image = torch.from_numpy(gray.astype(np.float32) / 255.0)[None, None]
            homographies = sample_homographies(
                size,
                ex["num_homographies"],
                image_seed(ex["seed"], entry.name),
                ex["homographies"],
            )
            result = homographic_adaptation(
                image.to(device),
                detector,
                homographies,
                ex["batch_size"],
                ex["aggregation"],
                ex["valid_border_margin"],
            )
            points, scores = adaptation_keypoints(
                result.prob,
                ex["detection_threshold"],
                ex["nms_radius"],
                ex["top_k"],
                ex["remove_borders"],
            )
            arrays = {
                "points": points.cpu().numpy().astype(np.float32),
                "scores": scores.cpu().numpy().astype(np.float32),
                "image_size": np.array(size, np.int64),
                "num_homographies": np.array(ex["num_homographies"]),
            }
            if ex["save_prob"]:
                arrays["prob"] = result.prob.cpu().numpy().astype(np.float16)
            provenance = json.dumps({**record, **source}, sort_keys=True)
            arrays["provenance"] = np.array(provenance)
            atomic_savez(target, **arrays)
            done += 1
            total_points += len(points)
            empty += len(points) == 0
            if overlays_left > 0:
                overlays_left -= 1
                png = _overlay(image[0], points, result.prob)
                ok, data = cv2.imencode(".png", cv2.cvtColor(png, cv2.COLOR_RGB2BGR))
                if ok:
                    path = out / "overlays" / f"{entry.name}.png"
                    atomic_write(path, lambda f, data=data: f.write(data.tobytes()))
        bar.close()
        elapsed = time.perf_counter() - start
        rate = done / elapsed if elapsed > 0 else 0.0
        mean_points = f", {total_points / done:.1f} keypoints/image" if done else ""
        print(
            f"homographic adaptation: {done} exported ({rate:.2f} images/s{mean_points}), "
            f"{skipped} already done, {len(failed)} failed; labels in {out}"
        )
        if stale:
            print(
                f"warning: recomputed {len(stale)} label file(s) made with other "
                f"settings, e.g. {stale[0][0]}: {stale[0][1]}",
                file=sys.stderr,
            )
        if empty:
            print(
                f"warning: {empty} of {done} exported image(s) have no keypoint above "
                f"export.detection_threshold={ex['detection_threshold']} "
                "(an untrained or collapsed detector?)",
                file=sys.stderr,
            )
        if failed:
            print(
                f"warning: {len(failed)} unreadable image(s) skipped: "
                + ", ".join(failed),
                file=sys.stderr,
            )
        return 0

    return run_cli(run, "export.py homography_adaptation")
