"""``data_gen.py pointclouds``: metric depth + exact intrinsics for the point-cloud module.

Reads any mix of ScanNet ``.sens`` files, 3D Ken Burns, Taskonomy, a folder of depth maps
with given intrinsics, and procedural scenes (``datasets.depth_sources``), spreads the
requested number of samples of each source evenly over its scenes, and writes them with
``--workers`` processes in parallel (a progress bar counts the samples)::

    OUT/plan.json                 the sample list and settings (checked on resume)
    OUT/depths/000000.npz         depth (H, W) float32 metres, 0 = invalid; invalid_counts
    OUT/intrinsics/000000.npy     K (3, 3) float64 (vertical FOV convention: geometry.camera)
    OUT/rgb/000000.jpg            colour, when the source has it
    OUT/focals.npy OUT/scales.npy focal fy (pixels) and maximum depth (m) of every sample
    OUT/fovs.npy                  vertical field of view (degrees) of every sample
    OUT/histograms.png            their histograms
    OUT/summary.json              counts per source and masked invalid pixels

Every file is written atomically and a finished sample is skipped on a re-run, so an
interrupted run resumes; ``--shard I/N`` makes process ``I`` of ``N`` write every N-th
sample, and whichever shard finds all samples present writes the distribution files.
The output is the same for any number of workers.

Procedural scenes (``--procedural N``) take a field-of-view prior (``--fov-prior real``,
cameras of real data, or ``wide``, 40-100 degrees) and sensor effects (on by default,
``--no-sensor-effects`` for exact depth); see ``datasets.procedural_scenes``.
``--motorcycle`` writes the real Middlebury frame that scikit-image ships
(``datasets.middlebury``) alone into its folder, marked for validation only.

To train on real data (ScanNet, 3D Ken Burns, Taskonomy) mixed with procedural scenes,
write one folder per source and give ``train_3d.py`` all of them with a sampling weight
each; ``datasets.pointcloud`` shows the commands.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datasets.depth_io import (
    check_intrinsics_fit,
    clean_depth,
    describe_invalid,
    parse_intrinsics,
    read_intrinsics_file,
)
from datasets.depth_sources import (
    FolderSource,
    KenBurnsSource,
    MotorcycleSource,
    ProceduralSource,
    ScanNetSource,
    TaskonomySource,
    spread_evenly,
)
from datasets.procedural_scenes import FOV_PRIORS, parse_size
from geometry.camera import focal_to_fov
from utils.arguments import ArgumentParser
from utils.config import parse_shard
from utils.errors import UserError, run_cli
from utils.io import atomic_write, atomic_write_text, ensure_writable_dir

PROG = "data_gen.py pointclouds"
DATASET_OPTIONS = ("scannet", "kenburns", "taskonomy", "folder")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Write depth maps with exact intrinsics (depths/, intrinsics/) and "
        "their focal/scale distributions for train_3d.py.",
    )
    parser.add_argument("--scannet", help="folder of ScanNet .sens files (recursive)")
    parser.add_argument("--kenburns", help="3D Ken Burns folder (*-depth.exr + meta)")
    parser.add_argument(
        "--taskonomy", help="Taskonomy folder (depth_zbuffer + point_info)"
    )
    parser.add_argument("--folder", help="folder of depth maps (PNG/EXR/NPY/NPZ)")
    parser.add_argument(
        "--depth-scale",
        type=float,
        default=1000.0,
        help="--folder PNG units per metre (1000: ScanNet/Redwood mm, 5000: TUM)",
    )
    parser.add_argument(
        "--intrinsics",
        help="--folder intrinsics for every file: fx,fy,cx,cy or a file (JSON/TXT/NPY); "
        "omit to read <stem>.json / <stem>.txt beside each depth map",
    )
    parser.add_argument(
        "--procedural", type=int, default=0, help="number of procedural scenes"
    )
    parser.add_argument("--size", default="192,256", help="procedural image size H,W")
    parser.add_argument("--seed", type=int, default=0, help="procedural scene stream")
    parser.add_argument(
        "--fov-prior",
        default="real",
        choices=sorted(FOV_PRIORS),
        help="procedural vertical FOV prior: real (RGB-D sensors, phones, photo lenses: "
        "24-70 deg) or wide (uniform 40-100 deg)",
    )
    parser.add_argument(
        "--sensor-effects",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="procedural depth as a sensor returns it (noise, missing returns, range)",
    )
    parser.add_argument(
        "--motorcycle",
        action="store_true",
        help="write the Middlebury 2014 Motorcycle frame (scikit-image) alone, for "
        "validation only",
    )
    parser.add_argument(
        "-n",
        dest="counts",
        help="samples per dataset source, in the order scannet,kenburns,taskonomy,folder "
        "of those given (one number: the same for each)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--shard", default="0/1", help="I/N: write only samples i with i %% N == I"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes writing samples in parallel (same output for any number)",
    )
    return parser


def _sources(args: argparse.Namespace) -> list[tuple[Any, int]]:
    """``(source, sample count)`` in plan order; validates every input before writing."""
    given = [name for name in DATASET_OPTIONS if getattr(args, name)]
    counts: list[int] = []
    if given:
        if not args.counts:
            raise UserError(f"-n is required with --{', --'.join(given)}")
        try:
            counts = [int(v) for v in args.counts.split(",")]
        except ValueError:
            raise UserError(
                f"-n '{args.counts}' is not a comma-separated list"
            ) from None
        if len(counts) == 1:
            counts = counts * len(given)
        if len(counts) != len(given) or min(counts) < 1:
            raise UserError(
                f"-n '{args.counts}' needs {len(given)} positive counts, one for each of "
                f"--{', --'.join(given)}"
            )
    elif args.counts:
        raise UserError(
            "-n counts samples of --scannet/--kenburns/--taskonomy/--folder"
        )
    if args.procedural < 0:
        raise UserError("--procedural must be >= 0")
    if args.motorcycle:
        if given or args.procedural:
            raise UserError(
                "--motorcycle writes the validation frame alone: give it its own --out "
                "without other sources"
            )
        return [(MotorcycleSource(), 1)]
    if not given and args.procedural == 0:
        raise UserError("nothing to generate: give --procedural N or a dataset folder")
    if args.intrinsics and not args.folder:
        raise UserError("--intrinsics applies to --folder only")
    result: list[tuple[Any, int]] = []
    for name, count in zip(given, counts):
        if name == "scannet":
            source = ScanNetSource(args.scannet)
        elif name == "kenburns":
            source = KenBurnsSource(args.kenburns)
        elif name == "taskonomy":
            source = TaskonomySource(args.taskonomy)
        else:
            K = None
            if args.intrinsics:
                if Path(args.intrinsics).is_file():
                    K = read_intrinsics_file(args.intrinsics)[0]
                else:
                    K = parse_intrinsics(args.intrinsics)
            source = FolderSource(args.folder, args.depth_scale, K)
        result.append((source, count))
    if args.procedural:
        height, width = parse_size(args.size, "--size")
        source = ProceduralSource(
            args.procedural,
            args.seed,
            height,
            width,
            args.fov_prior,
            args.sensor_effects,
        )
        result.append((source, args.procedural))
    return result


def make_plan(sources: list[tuple[Any, int]], settings: dict) -> dict[str, Any]:
    """The sample list: each source's count spread evenly over its scenes."""
    samples = []
    for index, (source, count) in enumerate(sources):
        scenes = source.scenes()
        picks = spread_evenly([len(s) for s in scenes], count)
        if len(picks) < count:
            print(
                f"{PROG}: {source.name} holds {len(picks)} frames; taking all of them"
            )
        for scene, frame in picks:
            key = scenes[scene][frame]
            samples.append(
                {"source": index, "name": source.name, "scene": scene, "key": key}
            )
    return json.loads(json.dumps({"settings": settings, "samples": samples}))


def _paths(out: Path, index: int) -> dict[str, Path]:
    stem = f"{index:06d}"
    return {
        "depth": out / "depths" / f"{stem}.npz",
        "K": out / "intrinsics" / f"{stem}.npy",
        "rgb": out / "rgb" / f"{stem}.jpg",
    }


def _write_sample(out: Path, index: int, source: Any, key: Any) -> dict[str, int]:
    frame = source.load(tuple(key) if isinstance(key, list) else key)
    check_intrinsics_fit(frame.K, None, frame.depth.shape, frame.name)
    depth, counts = clean_depth(frame.depth, frame.name)
    paths = _paths(out, index)
    if frame.rgb is not None:
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
        if ok:
            atomic_write(paths["rgb"], lambda f: f.write(jpg.tobytes()))
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(frame.K, np.float64))
    atomic_write(paths["K"], lambda f: f.write(buffer.getvalue()))
    invalid = np.array([counts["nan"], counts["inf"], counts["zero"]], np.int64)
    # The depth file is written last: its presence marks a finished sample.
    atomic_write(
        paths["depth"],
        lambda f: np.savez_compressed(f, depth=depth, invalid_counts=invalid),
    )
    return counts


_WORKER: dict[str, Any] = {}


def _worker_init(out: Path, sources: list, samples: list) -> None:
    # One OpenCV thread per process: parallelism comes from the processes.
    cv2.setNumThreads(1)
    _WORKER.update(out=out, sources=sources, samples=samples)


def _write_indexed(index: int) -> dict[str, int]:
    sample = _WORKER["samples"][index]
    source = _WORKER["sources"][sample["source"]]
    return _write_sample(_WORKER["out"], index, source, sample["key"])


def _finished(out: Path, index: int) -> bool:
    paths = _paths(out, index)
    return paths["depth"].is_file() and paths["K"].is_file()


def write_distributions(out: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """``focals.npy``, ``fovs.npy``, ``scales.npy``, ``histograms.png``, ``summary.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = len(plan["samples"])
    focals, fovs, scales = np.zeros(total), np.zeros(total), np.zeros(total)
    invalid = np.zeros(3, np.int64)
    per_source: dict[str, int] = {}
    for index, sample in enumerate(plan["samples"]):
        paths = _paths(out, index)
        K = np.load(paths["K"])
        with np.load(paths["depth"]) as data:
            depth = data["depth"]
            invalid += data["invalid_counts"]
        focals[index] = K[1, 1]
        fovs[index] = focal_to_fov(K[1, 1], depth.shape[0])
        scales[index] = float(depth.max())
        per_source[sample["name"]] = per_source.get(sample["name"], 0) + 1
    for name, values in (("focals", focals), ("fovs", fovs), ("scales", scales)):
        buffer = io.BytesIO()
        np.save(buffer, values)
        atomic_write(out / f"{name}.npy", lambda f, b=buffer: f.write(b.getvalue()))
    figure, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    for axis, values, label in (
        (axes[0], fovs, "vertical FOV (deg)"),
        (axes[1], focals, "focal fy (px)"),
        (axes[2], scales, "max depth (m)"),
    ):
        axis.hist(values, bins=30, color="tab:blue")
        axis.set_xlabel(label)
    axes[0].set_ylabel("samples")
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=80)
    plt.close(figure)
    atomic_write(out / "histograms.png", lambda f: f.write(png.getvalue()))
    summary = {
        "samples": total,
        "per_source": per_source,
        "invalid_pixels": dict(zip(("nan", "inf", "zero"), invalid.tolist())),
        "fov_deg": {"min": float(fovs.min()), "max": float(fovs.max())},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command line of ``data_gen.py pointclouds`` (see module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)

    def run() -> int:
        from tqdm import tqdm

        shard, shards = parse_shard(args.shard)
        sources = _sources(args)
        if args.workers < 1:
            raise UserError(f"--workers must be >= 1, got {args.workers}")
        settings = {
            "sources": [[s.name, n] for s, n in sources],
            "depth_scale": args.depth_scale,
            "intrinsics": args.intrinsics,
            "size": args.size if args.procedural else None,
            "seed": args.seed if args.procedural else None,
            "fov_prior": args.fov_prior if args.procedural else None,
            "sensor_effects": args.sensor_effects if args.procedural else None,
            "validation_only": bool(args.motorcycle),
        }
        plan = make_plan(sources, settings)
        for sample in plan["samples"]:
            key = sample["key"]
            sources[sample["source"]][0].check(
                tuple(key) if isinstance(key, list) else key
            )
        out = ensure_writable_dir(args.out)
        plan_path = out / "plan.json"
        if plan_path.is_file():
            try:
                existing = json.loads(plan_path.read_text())
            except json.JSONDecodeError:
                existing = None
            if existing != plan:
                raise UserError(
                    f"'{plan_path}' holds another plan (other sources or settings); "
                    "use another --out"
                )
        else:
            atomic_write_text(plan_path, json.dumps(plan) + "\n")
        todo = [
            i
            for i in range(shard, len(plan["samples"]), shards)
            if not _finished(out, i)
        ]
        invalid = {"nan": 0, "inf": 0, "zero": 0}
        touched = 0
        # Starting a process costs about as much as rendering a few samples.
        workers = min(args.workers, max(1, len(todo) // 8))
        init_args = (out, [source for source, _ in sources], plan["samples"])
        with tqdm(total=len(todo), desc=PROG, unit="sample", dynamic_ncols=True) as bar:
            if workers == 1:
                _worker_init(*init_args)
                results = map(_write_indexed, todo)
                pool = None
            else:
                # forkserver: workers start from a clean process, so no thread pool
                # (OpenCV, OpenMP) of this one is inherited mid-state.
                context = mp.get_context("forkserver")
                pool = context.Pool(workers, _worker_init, init_args)
                results = pool.imap_unordered(_write_indexed, todo, chunksize=4)
            try:
                for counts in results:
                    touched += any(counts.values())
                    invalid = {k: invalid[k] + counts[k] for k in invalid}
                    bar.update()
            finally:
                if pool is not None:
                    pool.terminate()
                    pool.join()
        print(
            f"wrote {len(todo)} samples to {out} "
            f"({len(plan['samples']) - len(todo)} already there)"
        )
        if touched:
            print(
                f"masked invalid depth pixels in {touched} of {len(todo)} samples: "
                f"{describe_invalid(invalid)}"
            )
        if all(_finished(out, i) for i in range(len(plan["samples"]))):
            summary = write_distributions(out, plan)
            print(
                f"distributions: {summary['samples']} samples, vertical FOV "
                f"{summary['fov_deg']['min']:.1f}-{summary['fov_deg']['max']:.1f} deg; "
                f"{out / 'histograms.png'}"
            )
        else:
            print("other shards still have samples to write; distributions not yet")
        return 0

    return run_cli(run, PROG)
