"""Synthetic Shapes: ``data_gen.py synthetic_shapes``, parallel deterministic generation of the
cache.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from datasets.synthetic_shapes.cache import _read_meta, shard_path
from datasets.synthetic_shapes.primitives import (
    _settings,
    content_rng,
    generate_sample,
    parse_primitives,
)
from datasets.synthetic_shapes.raster import DEFAULT_SPLIT_SIZES, SPLITS
from utils.arguments import ArgumentParser
from utils.errors import UserError, run_cli


def _write_shard(task: tuple[str, str, int, int, int, str, dict]) -> int:
    """Generate and atomically write one shard; returns the number of images."""
    primitive, split, shard, start, count, root, settings = task
    size = settings["image_size"]
    images = np.empty((count, size[0], size[1]), np.uint8)
    keypoints, offsets = [], [0]
    for i in range(count):
        rng = content_rng(settings["seed"], primitive, split, start + i)
        images[i], points = generate_sample(
            primitive, rng, size, settings["supersample"], settings["blur_size"]
        )
        keypoints.append(points)
        offsets.append(offsets[-1] + len(points))
    meta = {**settings, "primitive": primitive, "split": split, "start": start}
    meta["count"] = count
    path = shard_path(Path(root), primitive, split, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(
                handle,
                images=images,
                keypoints=np.concatenate(keypoints).astype(np.float32).reshape(-1, 2),
                offsets=np.asarray(offsets, np.int64),
                meta=np.array(json.dumps(meta)),
            )
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return count


def _worker_init() -> None:
    # One OpenCV thread per process: parallelism comes from the processes.
    cv2.setNumThreads(1)


def _parse_split_sizes(values: Sequence[str]) -> dict[str, int]:
    sizes = dict(DEFAULT_SPLIT_SIZES)
    for item in values:
        name, _, number = item.partition("=")
        if name not in SPLITS or not number.isdigit():
            raise UserError(
                f"--split-sizes: expected SPLIT=N with SPLIT in {SPLITS}, got {item!r}"
            )
        sizes[name] = int(number)
    return sizes


def generate_main(argv: list[str] | None = None) -> int:
    """Command line of ``data_gen.py synthetic_shapes``: write the cache in parallel.

    Output is identical for any ``--workers``; finished shards are skipped on a re-run.
    """
    parser = ArgumentParser(
        prog="data_gen.py synthetic_shapes",
        description="Generate the Synthetic Shapes cache read by "
        "SyntheticShapes(conf={'cache_dir': OUT, ...}).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--primitives", nargs="+", default=["all"], help="names or 'all'"
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=list(SPLITS),
        choices=SPLITS,
        help="splits to generate",
    )
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        default=[120, 160],
        metavar=("H", "W"),
        help="image height and width in pixels",
    )
    parser.add_argument(
        "--supersample", type=int, default=1, help="draw at this multiple"
    )
    parser.add_argument(
        "--blur-size", type=int, default=11, help="reference blur kernel"
    )
    parser.add_argument(
        "--split-sizes",
        nargs="*",
        default=[],
        metavar="SPLIT=N",
        help="images per primitive (defaults: train=10000 val=200 test=500)",
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="images per file")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes drawing shards in parallel (output is the same for any number)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed of the dataset"
    )
    args = parser.parse_args(argv)

    def run() -> int:
        from tqdm import tqdm

        primitives = parse_primitives(
            "all" if args.primitives == ["all"] else args.primitives
        )
        if min(args.size) < 8 or args.supersample < 1 or args.seed < 0:
            raise UserError("--size must be >= 8, --supersample >= 1, --seed >= 0")
        if args.shard_size < 1 or args.workers < 1:
            raise UserError("--shard-size and --workers must be >= 1")
        sizes = _parse_split_sizes(args.split_sizes)
        settings = _settings(
            {
                "seed": args.seed,
                "image_size": args.size,
                "supersample": args.supersample,
                "blur_size": args.blur_size,
            }
        )
        tasks, skipped = [], 0
        for primitive in primitives:
            for split in args.splits:
                for shard, start in enumerate(range(0, sizes[split], args.shard_size)):
                    count = min(args.shard_size, sizes[split] - start)
                    path = shard_path(args.out, primitive, split, shard)
                    if path.exists():
                        meta = _read_meta(path)
                        if {k: meta.get(k) for k in settings} != settings or (
                            meta.get("start"),
                            meta.get("count"),
                        ) != (start, count):
                            raise UserError(
                                f"{path} exists with other settings; use another --out"
                            )
                        skipped += count
                        continue
                    task = (
                        primitive,
                        split,
                        shard,
                        start,
                        count,
                        str(args.out),
                        settings,
                    )
                    tasks.append(task)
        total = sum(t[4] for t in tasks)
        print(
            f"synthetic shapes: {total} images to write to {args.out} "
            f"({skipped} already there), {args.workers} worker(s)",
            file=sys.stderr,
        )
        with tqdm(total=total, unit="img", desc="synthetic shapes") as bar:
            if args.workers == 1:
                _worker_init()
                for task in tasks:
                    bar.update(_write_shard(task))
            else:
                # forkserver: workers forked from a clean server process, so no thread
                # pool (OpenCV, OpenMP) of this process is inherited mid-state (plain
                # fork deadlocked after DataLoader workers had run).
                context = mp.get_context("forkserver")
                context.set_forkserver_preload(["datasets.synthetic_shapes"])
                with context.Pool(args.workers, _worker_init) as pool:
                    for done in pool.imap_unordered(_write_shard, tasks):
                        bar.update(done)
        return 0

    return run_cli(run, parser.prog)
