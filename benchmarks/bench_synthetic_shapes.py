"""Throughput of the Synthetic Shapes generator against the reference recipe.

Prints images/s at 240x320 (all nine primitives in turn) for
(a) our generator in one process, (b) our generator in 2 worker processes, and
(c) a baseline that follows the TF reference recipe in this script: draw at 960x1280 on
the reference background (thresholded uniform noise, 100 discs, box blur of 150-500 px),
multiple polygons filled with the reference's 3000-disc textures, 11x11 Gaussian blur,
resize to 240x320. The baseline draws its shapes with our painters at 960x1280, and
reports its fixed cost (background + blur + resize, no shape) separately, which bounds
what any drawing method at that size can reach. Then it measures a large batch with 2
workers and extrapolates it to 100k images. Every timing is wall-clock, one OpenCV
thread per process.

Then whole processes, start-up included, one worker each, run in turn ``--rounds`` times
(medians): (d) ``data_gen.py synthetic_shapes --workers 1`` writing ``--process-images``
images, against (e) a process drawing as many with the reference recipe (c); and the
training data path at the main job's 120x160: (f) a process reading the shape cache and
augmenting (photometric, homographic) and collating batches of 32, as the main job's
loader does, against (g) the same drawing every shape on the fly.

    python benchmarks/bench_synthetic_shapes.py [--images 270] [--large 2000]
        [--process-images 900] [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import synthetic_shapes as S  # noqa: E402
from datasets.synthetic_shapes.raster import random_color  # noqa: E402
from utils.arguments import ArgumentParser  # noqa: E402

REFERENCE_SIZE = (960, 1280)
OUTPUT_SIZE = (240, 320)


def ours(start: int, count: int, size=OUTPUT_SIZE) -> int:
    """Generate ``count`` samples cycling over the primitives; returns ``count``."""
    cv2.setNumThreads(1)
    for i in range(start, start + count):
        name = S.PRIMITIVES[i % len(S.PRIMITIVES)]
        S.generate_sample(name, S.content_rng(0, name, "train", i), size)
    return count


def _ours_chunk(args: tuple[int, int]) -> int:
    return ours(*args)


def reference_background(rng: np.random.Generator, size) -> np.ndarray:
    """The reference's generate_background at full size (v6 settings)."""
    h, w = size
    dim = max(size)
    image = rng.integers(0, 256, size=size, dtype=np.uint8)
    _, image = cv2.threshold(image, int(rng.integers(256)), 255, cv2.THRESH_BINARY)
    level = float(cv2.mean(image)[0])
    centres = np.stack([rng.integers(0, w, 100), rng.integers(0, h, 100)], 1).tolist()
    for x, y in centres:
        radius = int(rng.integers(int(dim * 0.02), int(dim * 0.031)))
        cv2.circle(image, (x, y), radius, random_color(rng, level), -1)
    kernel = int(rng.integers(150, 500))
    return cv2.blur(image, (kernel, kernel))


def reference_texture(rng, size, level: float, kernel_range) -> np.ndarray:
    """The reference's custom polygon background: 3000 discs, box blur 50-100 px."""
    h, w = size
    image = np.full(size, random_color(rng, level), np.uint8)
    centres = np.stack([rng.integers(0, w, 3000), rng.integers(0, h, 3000)], 1).tolist()
    for x, y in centres:
        cv2.circle(image, (x, y), int(rng.integers(20)), random_color(rng, level), -1)
    kernel = int(rng.integers(*kernel_range))
    return cv2.blur(image, (kernel, kernel)).astype(np.float32)


def baseline(count: int, draw_shapes: bool = True) -> None:
    cv2.setNumThreads(1)
    for i in range(count):
        name = S.PRIMITIVES[i % len(S.PRIMITIVES)]
        rng = np.random.default_rng(i)
        image = reference_background(rng, REFERENCE_SIZE)
        if draw_shapes:
            extra = {}
            if name == "draw_multiple_polygons":
                # The reference textures the whole image for every polygon.
                def texture_fn(rng, shape, level, kernel_range, cell=None):
                    full = reference_texture(rng, REFERENCE_SIZE, level, kernel_range)
                    return full[: shape[0], : shape[1]]

                extra["texture_fn"] = texture_fn
            S.PAINTERS[name](image, rng, **extra)
        image = cv2.GaussianBlur(image, (11, 11), 0)
        cv2.resize(image, OUTPUT_SIZE[::-1], interpolation=cv2.INTER_LINEAR)


def rate(fn, count: int) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def parallel(pool, count: int, workers: int) -> float:
    chunk = max(1, count // (workers * 8))
    tasks = [(s, min(chunk, count - s)) for s in range(0, count, chunk)]
    start = time.perf_counter()
    done = sum(pool.imap_unordered(_ours_chunk, tasks))
    return done / (time.perf_counter() - start)


ROOT = Path(__file__).resolve().parents[1]
TRAIN_SIZE = (120, 160)


def reference_process(count: int) -> int:
    """Body of process (e): ``count`` images of the reference recipe, then exit."""
    baseline(count)
    return 0


def augmentation_process(count: int, cache_dir: str | None) -> int:
    """Body of processes (f)/(g): the main job's training samples, batches of 32."""
    from datasets.synthetic_shapes import SyntheticShapes
    from engine.data import collate

    conf = {
        "image_size": list(TRAIN_SIZE),
        # The split the cache of whole_processes holds (count over the primitives).
        "split_sizes": {
            "train": max(1, count // len(S.PRIMITIVES)),
            "val": 1,
            "test": 1,
        },
        "cache_dir": cache_dir,
        "augmentation": {
            "photometric": {"enable": True},
            "homographic": {"enable": True},
        },
    }
    dataset = SyntheticShapes(conf, "train")
    order = np.random.default_rng(0).permutation(len(dataset))[:count]
    for start in range(0, count, 32):
        collate([dataset[int(i)] for i in order[start : start + 32]])
    return 0


def timed_process(args: list[str]) -> float:
    """Wall seconds of ``python ARGS`` from start to exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def whole_processes(count: int, rounds: int) -> None:
    """(d)-(g): whole processes, start-up included, in turn (see module docstring)."""
    per_primitive = max(1, count // len(S.PRIMITIVES))
    count = per_primitive * len(S.PRIMITIVES)
    script = str(Path(__file__).resolve())
    times: dict[str, list[float]] = {k: [] for k in "defg"}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        gen = ["data_gen.py", "synthetic_shapes", "--splits", "train", "--workers", "1"]
        gen += ["--split-sizes", f"train={per_primitive}"]
        train_size = [str(v) for v in TRAIN_SIZE]
        timed_process([*gen, "--out", str(cache), "--size", *train_size])
        for r in range(rounds):
            out = str(Path(tmp) / f"round{r}")
            size = [str(v) for v in OUTPUT_SIZE]
            times["d"].append(timed_process([*gen, "--out", out, "--size", *size]))
            times["e"].append(
                timed_process([script, "--reference-process", str(count)])
            )
            aug = [script, "--augmentation-process", str(count)]
            times["f"].append(timed_process([*aug, "--cache", str(cache)]))
            times["g"].append(timed_process(aug))
    rate = {k: count / statistics.median(v) for k, v in times.items()}
    print(
        f"\nwhole processes, start-up included, 1 worker, {count} images, median of {rounds}"
    )
    print(f"(d) data_gen.py synthetic_shapes, 240x320 : {rate['d']:8.1f} images/s")
    print(f"(e) reference recipe's drawing, 240x320   : {rate['e']:8.1f} images/s")
    print(f"    ratio (d)/(e)                         : {rate['d'] / rate['e']:8.1f}x")
    print(f"(f) training data from the cache, 120x160 : {rate['f']:8.1f} images/s")
    print(f"(g) training data drawn on the fly        : {rate['g']:8.1f} images/s")
    print(f"    ratio (f)/(g)                         : {rate['f'] / rate['g']:8.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--images", type=int, default=270, help="images for (a), (b)")
    parser.add_argument("--baseline-images", type=int, default=18, help="for (c)")
    parser.add_argument("--large", type=int, default=2000, help="2-worker batch size")
    parser.add_argument(
        "--workers", type=int, default=2, help="processes of the parallel run"
    )
    parser.add_argument(
        "--process-images", type=int, default=900, help="images of (d)-(g)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="repeats of (d)-(g)")
    parser.add_argument(
        "--skip-processes", action="store_true", help="(a)-(c) and the large batch only"
    )
    # The bodies of the timed processes (internal).
    parser.add_argument("--reference-process", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--augmentation-process", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    if args.reference_process:
        return reference_process(args.reference_process)
    if args.augmentation_process:
        return augmentation_process(args.augmentation_process, args.cache)
    ours(0, len(S.PRIMITIVES))  # warm-up (imports, first-call costs)

    single = rate(lambda: ours(0, args.images), args.images)
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["datasets.synthetic_shapes"])
    with context.Pool(args.workers) as pool:
        pool.map(_ours_chunk, [(0, 1)] * args.workers)  # start the workers
        multi = parallel(pool, args.images, args.workers)
        large_start = time.perf_counter()
        large = parallel(pool, args.large, args.workers)
        large_seconds = time.perf_counter() - large_start
    base = rate(lambda: baseline(args.baseline_images), args.baseline_images)
    floor = rate(lambda: baseline(args.baseline_images, False), args.baseline_images)

    print(f"Synthetic Shapes at {OUTPUT_SIZE[0]}x{OUTPUT_SIZE[1]}, all 9 primitives")
    print(
        f"(a) ours, 1 process            : {single:8.1f} images/s ({args.images} images)"
    )
    print(
        f"(b) ours, {args.workers} worker processes   : {multi:8.1f} images/s "
        f"({args.images} images, pool already started)"
    )
    print(
        f"(c) reference recipe, 1 process : {base:8.1f} images/s "
        f"({args.baseline_images} images; 960x1280 draw, blur 11, resize)"
    )
    print(
        f"    its fixed cost alone        : {floor:8.1f} images/s (background+blur+resize)"
    )
    print(f"per-core ratio (a)/(c)          : {single / base:8.1f}x")
    print(f"per-core ratio (a)/(c fixed)    : {single / floor:8.1f}x")
    extrapolated = 100_000 / large
    print(
        f"large batch, {args.workers} workers: measured {args.large} images in "
        f"{large_seconds:.1f} s ({large:.1f} images/s); extrapolated to 100k images: "
        f"{extrapolated / 60:.1f} min"
    )
    if not args.skip_processes:
        whole_processes(args.process_images, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
