"""Benchmark: homographic adaptation throughput, batched vs one warp at a time.

Full-size MagicPoint (random weights unless ``--checkpoint``: speed does not depend on
them, label agreement does) on built-in photos
resized to 240x320, 100 homographies per image (the first the identity). Compared in the
same run:

* ``loop``: the reference-style loop, one OpenCV warp, one fp32 detector call and one warp
  back per view (:func:`pipelines.homographic_adaptation.homographic_adaptation_loop`);
* ``batched fp32``: views warped with ``grid_sample`` and run through the detector in
  batches (:func:`pipelines.homographic_adaptation.homographic_adaptation`);
* ``batched fp32 cl``: the same in channels-last memory;
* ``batched int8``: the same with the network's convolutions statically quantised
  (``models.quantize``; ``export.precision=int8``), the fast path of CPUs without native bf16;
* ``batched bf16``: the network cast to bf16 in channels-last layout (what the export uses by
  default on CPUs with AMX/AVX512-BF16; skipped where bf16 would be emulated).

Prints images/s and the speed-ups over the loop, checks that the batched fp32 map equals
the loop's, and for the reduced precisions reports how many of the fp32 labels (threshold
0.015, NMS 4) they reproduce within 1 px, on the last image.

    python benchmarks/bench_homographic_adaptation.py [--images 2] [--threads 2]
        [--checkpoint CKPT]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_superpoint_inference import agreement  # noqa: E402
from benchmarks.common import native_precisions, print_header  # noqa: E402
from models.superpoint import MagicPoint  # noqa: E402
from pipelines.homographic_adaptation import (  # noqa: E402
    adaptation_keypoints,
    homographic_adaptation,
    homographic_adaptation_loop,
    model_detector,
    sample_homographies,
)
from utils.arguments import ArgumentParser  # noqa: E402

SHAPE = (240, 320)


def photos(count: int) -> list[torch.Tensor]:
    import skimage.data as data

    sources = [data.camera(), data.astronaut(), data.coffee(), data.chelsea()]
    out = []
    for k in range(count):
        image = sources[k % len(sources)]
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        image = cv2.resize(image, SHAPE[::-1], interpolation=cv2.INTER_AREA)
        out.append(torch.from_numpy(image.astype(np.float32) / 255.0)[None, None])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--images", type=int, default=2, help="images per variant")
    parser.add_argument("--num", type=int, default=100, help="homographies per image")
    parser.add_argument("--batch-size", type=int, default=25, help="views per batch")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="trained MagicPoint/SuperPoint weights (label agreement is only meaningful "
        "with them; default: random full-size MagicPoint)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    torch.manual_seed(0)
    if args.checkpoint:
        from models.weights import load_model

        model = load_model(args.checkpoint)[0].eval()
    else:
        model = MagicPoint({}).eval()
    images = photos(args.images)
    homographies = [
        sample_homographies(SHAPE, args.num, np.random.default_rng(k))
        for k in range(args.images)
    ]
    print_header(
        f"Homographic adaptation, {SHAPE[0]}x{SHAPE[1]}, {args.num} homographies"
    )
    fp32 = model_detector(model, "fp32")
    variants = {
        "loop": None,
        "batched fp32": fp32,
        "batched fp32 cl": model_detector(model, "fp32", channels_last=True),
        "batched int8": model_detector(model, "int8"),
    }
    if native_precisions(("bf16",)):
        variants["batched bf16"] = model_detector(model, "bf16", channels_last=True)

    for detector in variants.values():
        # Warm-up (one-time kernel selection, allocator growth) on a few views.
        if detector is None:
            homographic_adaptation_loop(images[0], fp32, homographies[0][:3])
        else:
            homographic_adaptation(
                images[0], detector, homographies[0][:3], args.batch_size
            )
    # Variants alternate image by image so that load from other processes on a shared
    # machine affects them alike.
    seconds = dict.fromkeys(variants, 0.0)
    maps = {}
    for image, Hs in zip(images, homographies):
        for name, detector in variants.items():
            start = time.perf_counter()
            if detector is None:
                result = homographic_adaptation_loop(image, fp32, Hs)
            else:
                result = homographic_adaptation(image, detector, Hs, args.batch_size)
            seconds[name] += time.perf_counter() - start
            maps[name] = result.prob
    rates = {name: args.images / s for name, s in seconds.items()}
    for name, rate in rates.items():
        print(
            f"{name:>13}: {rate:.3f} images/s ({1 / rate:.2f} s per image, "
            f"{args.num} homographies, {SHAPE[0]}x{SHAPE[1]}, {args.threads} threads)"
        )
    diff = float((maps["loop"] - maps["batched fp32"]).abs().max())
    print(f"max |batched fp32 - loop| on the last image's map: {diff:.2e}")
    best = max(v for k, v in rates.items() if k != "loop")
    for name in rates:
        if name != "loop":
            print(f"speed-up {name} vs loop: {rates[name] / rates['loop']:.2f}x")
    labels = {
        name: adaptation_keypoints(prob)[0].numpy() for name, prob in maps.items()
    }
    for name in ("batched int8", "batched bf16"):
        if name in labels:
            print(
                f"{name}: {len(labels[name])} labels, "
                f"{100 * agreement(labels['batched fp32'], labels[name]):.1f}% of the "
                f"{len(labels['batched fp32'])} fp32 labels within 1 px"
            )
    print(f"best speed-up vs loop: {best / rates['loop']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
