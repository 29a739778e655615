"""Benchmark of R2D2 multi-scale extraction: NAVER-style reference loop vs ours.

Runs the published multi-scale protocol (scale factor 2^0.25, sizes in [256, 1024],
thresholds 0.7, top 5000) on one 800x640 image (scikit-image's astronaut, resized) with

- ``reference``: a plain re-implementation of the loop in NAVER's ``extract.py`` (the
  full network forward with batch norm, softmax heads and L2-normalised descriptor map
  at every scale, NCHW float32, ``torch.no_grad``), and
- ``ours fp32`` / ``ours int8`` / ``ours bf16``: :class:`models.r2d2.R2D2Extractor` (batch
  norm folded into the convolutions, channels-last, heads as one chunked matrix product,
  descriptors normalised at keypoints only, ``torch.inference_mode``; int8: the trunk
  statically quantised (``models.quantize``), the fast path of CPUs without native bf16;
  bf16: the trunk under bf16 autocast, its first convolutions in float32, only where the
  CPU runs bf16 natively; each through the ``precision`` setting),

and reports seconds per image (best and median of ``--repeats`` interleaved runs: the
machine is shared, the best run is the closest to the unloaded time) and the keypoint
agreement with the reference (fraction of reference keypoints with a keypoint of the
same pyramid level within 1 px, and the reverse). Both use the pixel-centre convention
of :mod:`geometry.homography` for the mapping back to the input image: the reference loop is
NAVER's except for that one line (``(x + 0.5) * W / w - 0.5`` instead of ``x * W / w``).

Without ``--weights`` the network is randomly initialised, its batch-norm statistics are
estimated on the image and the two head biases are set so that about 20% of the pixels
pass each 0.7 threshold, which gives a realistic number of keypoints; timings do not
depend on the weights. With ``--weights r2d2_WASF_N16.pt`` NAVER's model is used as is.

Run from the repository root: ``python -m benchmarks.bench_r2d2_extract [--repeats 3]``.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from typing import Any

import cv2
import skimage.data
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.common import native_precisions
from engine.devices import cpu_line
from models.r2d2 import R2D2Extractor, load_r2d2_net
from models.r2d2_net import R2D2Net
from utils.arguments import ArgumentParser
from utils.errors import run_cli


def reference_extract(
    net: R2D2Net,
    image: torch.Tensor,
    scale_f: float = 2**0.25,
    min_scale: float = 0.0,
    max_scale: float = 1.0,
    min_size: int = 256,
    max_size: int = 1024,
    reliability_thr: float = 0.7,
    repeatability_thr: float = 0.7,
    top_k: int = 5000,
) -> dict[str, torch.Tensor]:
    """NAVER-style multi-scale extraction, written as plainly as the reference.

    Args:
        net: network in eval mode.
        image: ``(1, 3, H, W)`` RGB in [0, 1].

    Returns:
        ``keypoints (N, 2)``, ``scales (N,)``, ``keypoint_scores (N,)``,
        ``descriptors (N, D)``, sorted by decreasing score.
    """
    max_filter = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    _, _, height, width = image.shape
    img = net.normalize(image)
    s = 1.0
    xs_all, ys_all, ss_all, rel_all, rep_all, desc_all = [], [], [], [], [], []
    while s + 0.001 >= max(min_scale, min_size / max(height, width)):
        if s - 0.001 <= min(max_scale, max_size / max(height, width)):
            nh, nw = img.shape[2:]
            with torch.no_grad():
                x = net.features(img)
                reliability, repeatability = net.confidence_maps(x, net.clf, net.sal)
                descriptors = F.normalize(x, p=2, dim=1)
            maxima = repeatability == max_filter(repeatability)
            maxima *= repeatability >= repeatability_thr
            maxima *= reliability >= reliability_thr
            y, x_ = maxima.nonzero().t()[2:4]
            rel_all.append(reliability[0, 0, y, x_])
            rep_all.append(repeatability[0, 0, y, x_])
            desc_all.append(descriptors[0, :, y, x_].t())
            xs_all.append((x_.float() + 0.5) * width / nw - 0.5)
            ys_all.append((y.float() + 0.5) * height / nh - 0.5)
            ss_all.append(torch.full((len(y),), 32 / s))
        s /= scale_f
        nh, nw = round(height * s), round(width * s)
        img = F.interpolate(img, (nh, nw), mode="bilinear", align_corners=False)
    scores = torch.cat(rel_all) * torch.cat(rep_all)
    order = scores.argsort(descending=True)[:top_k]
    return {
        "keypoints": torch.stack([torch.cat(xs_all), torch.cat(ys_all)], -1)[order],
        "scales": torch.cat(ss_all)[order],
        "keypoint_scores": scores[order],
        "descriptors": torch.cat(desc_all)[order],
    }


def agreement(
    found: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], tol: float = 1.0
) -> tuple[float, float]:
    """Fractions of reference / found keypoints matched within ``tol`` px (same scale).

    Returns:
        ``(recall, precision)``: share of reference keypoints with a found keypoint of
        the same pyramid level within ``tol``, and the reverse.
    """

    def matched(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        if len(a["keypoints"]) == 0:
            return 1.0
        hits = 0
        for scale in torch.unique(a["scales"]):
            pa = a["keypoints"][a["scales"] == scale]
            pb = b["keypoints"][b["scales"] == scale]
            if len(pb):
                # The matrix-product shortcut of cdist is off by ~0.05 px here.
                dist = torch.cdist(pa, pb, compute_mode="donot_use_mm_for_euclid_dist")
                hits += int((dist.min(dim=1).values <= tol).sum())
        return hits / len(a["keypoints"])

    return matched(reference, found), matched(found, reference)


def calibrated_random_net(image: torch.Tensor, seed: int = 0) -> R2D2Net:
    """Random R2D2 with batch-norm statistics from ``image`` and head biases set so
    that about 20% of the pixels pass each 0.7 threshold (see the module docstring)."""
    torch.manual_seed(seed)
    net = R2D2Net()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration pass
    small = F.interpolate(image, scale_factor=0.5, mode="bilinear", align_corners=False)
    net.train()
    with torch.no_grad():
        net(small)
    net.eval()
    with torch.no_grad():
        feats = net.features(net.normalize(small))
        squared = feats * feats
        logits = net.clf(squared)
        diff = (logits[:, 1] - logits[:, 0]).flatten()
        sal = net.sal(squared).flatten()
        # sigmoid(d) >= 0.7  <=>  d >= log(0.7 / 0.3); s / (1 + s) >= 0.7 with
        # s = softplus(z)  <=>  z >= log(exp(7 / 3) - 1).
        net.clf.bias[1] += math.log(0.7 / 0.3) - torch.quantile(diff, 0.8)
        net.sal.bias += math.log(math.exp(7 / 3) - 1) - torch.quantile(sal, 0.8)
    return net


def benchmark_image(width: int = 800, height: int = 640) -> torch.Tensor:
    """scikit-image's astronaut resized to ``width x height``, ``(1, 3, H, W)`` [0,
    1]."""
    rgb = cv2.resize(skimage.data.astronaut(), (width, height), cv2.INTER_AREA)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def timed(fn, repeats: int) -> tuple[list[float], Any]:
    """Run ``fn`` ``repeats`` times; return each run's seconds and the last output."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="benchmarks/bench_r2d2_extract.py",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--weights",
        help="train_r2d2.py or NAVER checkpoint (default: calibrated random)",
    )
    parser.add_argument("--width", type=int, default=800, help="image width")
    parser.add_argument("--height", type=int, default=640, help="image height")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per method (best reported)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: keep)"
    )
    parser.add_argument("--skip-reference", action="store_true", help="ours only")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    def run() -> int:
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        image = benchmark_image(args.width, args.height)
        if args.weights:
            net = load_r2d2_net(args.weights)
        else:
            net = calibrated_random_net(image)
        # Warm-up image: smallest size that still gives two pyramid levels.
        warm = F.interpolate(image, scale_factor=320 / max(image.shape[-2:]))
        results: dict[str, Any] = {
            "image": f"{args.width}x{args.height}",
            "threads": torch.get_num_threads(),
            "weights": args.weights or "random (calibrated)",
        }
        outputs = {}
        methods = []
        if not args.skip_reference:
            methods.append(("reference fp32", lambda im: reference_extract(net, im)))
        for precision in ["fp32", "int8"] + native_precisions(("bf16",)):
            extractor = R2D2Extractor({"precision": precision}, net=net)
            methods.append((f"ours {precision}", extractor))
        for _, fn in methods:
            fn(warm)  # first-call set-up (oneDNN primitives, folded trunk)
        # Methods are interleaved within each repeat so that load from other processes
        # hits them alike; the fastest run is the best estimate of the unloaded time.
        times: dict[str, list[float]] = {name: [] for name, _ in methods}
        for _ in range(args.repeats):
            for name, fn in methods:
                seconds, outputs[name] = timed(lambda fn=fn: fn(image), 1)
                times[name] += seconds
        for name, _ in methods:
            results[name] = {
                "seconds_per_image": min(times[name]),
                "median_seconds": statistics.median(times[name]),
                "all_seconds": times[name],
                "keypoints": len(outputs[name]["keypoints"]),
            }
        if "reference fp32" in outputs:
            ref = outputs["reference fp32"]
            base = results["reference fp32"]["seconds_per_image"]
            for name in outputs:
                if name == "reference fp32":
                    continue
                recall, precision = agreement(outputs[name], ref)
                results[name]["recall_1px"] = recall
                results[name]["precision_1px"] = precision
                results[name]["speedup"] = base / results[name]["seconds_per_image"]
        print(cpu_line())
        print(
            f"R2D2 multi-scale extraction, {results['image']} image, "
            f"{results['threads']} threads, weights: {results['weights']}"
        )
        print(
            f"{'method':<16}{'best s':>8}{'median s':>9}{'speedup':>9}{'#kpts':>7}"
            f"{'ref kpts found <=1px':>22}{'kpts in ref <=1px':>19}"
        )
        for name, _ in methods:
            r = results[name]
            speed = f"{r['speedup']:.2f}x" if "speedup" in r else "1.00x"
            rec = f"{100 * r['recall_1px']:.1f}%" if "recall_1px" in r else "-"
            pre = f"{100 * r['precision_1px']:.1f}%" if "precision_1px" in r else "-"
            print(
                f"{name:<16}{r['seconds_per_image']:>8.2f}"
                f"{r['median_seconds']:>9.2f}{speed:>9}"
                f"{r['keypoints']:>7}{rec:>22}{pre:>19}"
            )
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
        return 0

    return run_cli(run, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
