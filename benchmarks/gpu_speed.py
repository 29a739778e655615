"""Inference throughput on one device: homographic adaptation and feature extraction.

    python -m benchmarks.gpu_speed --device cuda --out speed.json

1. Homographic adaptation at 240x320 with 100 homographies (full-width MagicPoint, batched
   warps) on the built-in photographs: images/s and the projected time for the 82,783 COCO
   train2014 images;
2. SuperPoint extraction at 480x640 and R2D2 multi-scale extraction at 800x640 (published
   defaults): seconds per image, the median of ``--repeats`` timed calls after a warm-up.

Random weights: the speed does not depend on them. ``--tiny`` runs toy sizes (a test of the
script). ``scripts/gpu_check.sh`` runs this as its ``speed`` step.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
COCO_TRAIN2014 = 82_783
TINY_SP = {"channels": [8, 8, 16, 16], "head_channels": 16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def homographic_adaptation_speed(device: torch.device, tiny: bool) -> dict[str, Any]:
    """Images/s of batched HA at 240x320 with 100 homographies, and the COCO projection."""
    import cv2

    from datasets.hpatches_demo import load_photos
    from engine.devices import resolve_precision
    from models.superpoint import MagicPoint
    from pipelines.homographic_adaptation import (
        homographic_adaptation,
        model_detector,
        sample_homographies,
    )

    shape, num = ((64, 80), 4) if tiny else ((240, 320), 100)
    model = MagicPoint(TINY_SP if tiny else {}).to(device)
    precision = resolve_precision("auto", device)
    if precision == "fp16":
        precision = "fp32"  # model_detector casts the network: bf16 or fp32 only
    detector = model_detector(model, precision, channels_last=device.type == "cpu")
    photos = []
    for _, photo in load_photos("builtin")[: 2 if tiny else 8]:
        gray = photo if photo.ndim == 2 else photo.mean(-1)
        gray = cv2.resize(gray.astype(np.float32), shape[::-1])
        photos.append(torch.from_numpy(gray / 255.0)[None, None].float().to(device))
    homographies = [
        sample_homographies(shape, num, np.random.default_rng(k))
        for k in range(len(photos))
    ]
    homographic_adaptation(photos[0], detector, homographies[0][:4])
    synchronize(device)
    start = time.perf_counter()
    for image, Hs in zip(photos, homographies):
        homographic_adaptation(image, detector, Hs, batch_size=100 if num > 25 else 25)
    synchronize(device)
    rate = len(photos) / (time.perf_counter() - start)
    return {
        "size": f"{shape[0]}x{shape[1]}",
        "homographies": num,
        "precision": precision,
        "images_per_s": round(rate, 3),
        "coco_train2014_hours": round(COCO_TRAIN2014 / rate / 3600, 2),
    }


def extraction_speed(device: torch.device, tiny: bool, repeats: int) -> dict[str, Any]:
    """Seconds per image: SuperPoint at 480x640, R2D2 multi-scale at 800x640."""
    from models.extractor import Extractor
    from models.r2d2 import R2D2Extractor
    from models.r2d2_net import R2D2Net
    from models.superpoint import SuperPoint

    sp_shape, r2_shape = ((64, 80), (96, 128)) if tiny else ((480, 640), (640, 800))
    superpoint = Extractor(
        SuperPoint(TINY_SP if tiny else {}), "superpoint", device=str(device)
    )
    r2d2_net = R2D2Net(**({"mchan": 1} if tiny else {}))
    r2d2 = R2D2Extractor({"min_size": 32 if tiny else 256}, net=r2d2_net.to(device))
    results = {}
    for kind, extractor, shape in (
        ("superpoint", superpoint, sp_shape),
        ("r2d2_multiscale", r2d2, r2_shape),
    ):
        channels = 1 if kind == "superpoint" else 3
        image = torch.rand(1, channels, *shape, device=device)
        extractor(image)
        times = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            extractor(image)
            synchronize(device)
            times.append(time.perf_counter() - start)
        name = f"{kind}_{shape[1]}x{shape[0]}"
        results[name] = {"seconds": round(float(np.median(times)), 4)}
    return results


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from engine.devices import add_device_argument, resolve_device
    from utils.arguments import ArgumentParser
    from utils.errors import run_cli

    parser = ArgumentParser(
        prog="python -m benchmarks.gpu_speed", description=__doc__.split("\n")[0]
    )
    add_device_argument(parser)
    parser.add_argument("--tiny", action="store_true", help="toy sizes (a test)")
    parser.add_argument("--repeats", type=int, default=5, help="timed extractions")
    parser.add_argument("--out", required=True, help="JSON file of the figures")
    args = parser.parse_args(argv)

    def run() -> int:
        device = resolve_device(args.device)
        with torch.inference_mode():
            report = {
                "homographic_adaptation": homographic_adaptation_speed(
                    device, args.tiny
                ),
                "extraction": extraction_speed(device, args.tiny, args.repeats),
            }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report))
        return 0

    return run_cli(run, "gpu_speed")


if __name__ == "__main__":
    sys.exit(main())
