"""Benchmark: score 580 cached HPatches pairs with every metric of the superpoint preset.

Builds a synthetic release-sized set (57 i + 59 v sequences, 240x320 images stored as
tiny PNGs, since scoring only reads their headers) with cached features of 1000
keypoints and 256-D float32 descriptors per image, about 60 % of them true
correspondences, then times ``evaluators.hpatches.evaluate`` (feature loading,
repeatability/MLE, cross-check matching, RANSAC, NN mAP, matching score, JSON, markdown
and the per-sequence plot).

    python benchmarks/bench_hpatches_scoring.py [--num-keypoints 1000] [--threads 2]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.features import write_features  # noqa: E402
from evaluators.hpatches import PRESETS, evaluate  # noqa: E402
from geometry.homography import points_inside, sample_homography, warp_points  # noqa: E402
from utils.arguments import ArgumentParser  # noqa: E402

SHAPE = (240, 320)


def build_dataset(root: Path, num_keypoints: int, dim: int, seed: int = 0) -> None:
    """Write 116 sequences with images, homographies and ``.bench`` feature files."""
    rng = np.random.default_rng(seed)
    blank = np.zeros((*SHAPE, 3), np.uint8)
    names = [f"i_seq{i:02d}" for i in range(57)] + [f"v_seq{i:02d}" for i in range(59)]
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        kp0 = rng.uniform(0, [SHAPE[1] - 1, SHAPE[0] - 1], (num_keypoints, 2))
        desc0 = rng.normal(size=(num_keypoints, dim)).astype(np.float32)
        scores0 = rng.random(num_keypoints).astype(np.float32)
        for index in range(1, 7):
            cv2.imwrite(str(folder / f"{index}.png"), blank)
        feats = {
            "keypoints": kp0.astype(np.float32),
            "scores": scores0,
            "descriptors": desc0,
            "imsize": np.array([SHAPE[1], SHAPE[0]]),
        }
        write_features(folder / "1.png.bench", feats)
        for k in range(2, 7):
            H = np.eye(3) if name[0] == "i" else sample_homography(SHAPE, rng)
            np.savetxt(folder / f"H_1_{k}", H)
            warped = warp_points(kp0, H) + rng.normal(0, 1.0, kp0.shape)
            true = points_inside(warped, SHAPE) & (rng.random(num_keypoints) < 0.6)
            kp1 = rng.uniform(0, [SHAPE[1] - 1, SHAPE[0] - 1], (num_keypoints, 2))
            kp1[true] = warped[true]
            desc1 = rng.normal(size=(num_keypoints, dim)).astype(np.float32)
            desc1[true] = desc0[true] + 0.5 * rng.normal(size=(true.sum(), dim))
            feats = {
                "keypoints": kp1.astype(np.float32),
                "scores": rng.random(num_keypoints).astype(np.float32),
                "descriptors": desc1,
                "imsize": np.array([SHAPE[1], SHAPE[0]]),
            }
            write_features(folder / f"{k}.png.bench", feats)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        description=__doc__.split("\n")[0],
    )
    parser.add_argument(
        "--num-keypoints", type=int, default=1000, help="keypoints per image"
    )
    parser.add_argument("--dim", type=int, default=256, help="descriptor size")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--workdir", default=None, help="keep the data here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp())
    data = work / "data"
    try:
        if not data.is_dir():
            t0 = time.perf_counter()
            build_dataset(data, args.num_keypoints, args.dim)
            print(f"built 116 sequences in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        result = evaluate(
            data,
            PRESETS["superpoint"],
            "bench",
            work / "out",
            num_match_plots=0,
            progress=False,
        )
        total = time.perf_counter() - t0
        s = result.summary
        pairs = s["num_pairs"]
        print(
            f"scored {pairs} pairs ({args.num_keypoints} keypoints, {args.dim}-D) "
            f"with preset superpoint, {args.threads} threads"
        )
        print(
            f"scoring loop: {s['scoring_seconds']:.2f} s "
            f"({pairs / s['scoring_seconds']:.1f} pairs/s)"
        )
        print(
            f"with outputs (JSON, markdown, plot): {total:.2f} s "
            f"({pairs / total:.1f} pairs/s)"
        )
        r = s["results"]["all"]
        print(
            f"sanity: repeatability {r['repeatability']:.3f}, "
            f"H acc@3 {r['homography@3px']:.3f}, NN mAP {r['nn_map']:.3f}"
        )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
