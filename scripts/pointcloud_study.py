"""Compare inference settings of the point-cloud module on validation depth maps.

Runs ``evaluation.py pointcloud`` for every combination of ``--draws``, ``--mirror`` and
``--iterations`` on each validation folder (``data_gen.py pointclouds`` folders: procedural
scenes of a seed that is neither the training nor the test seed, and real frames such as
the Middlebury Motorcycle), and writes one table: per folder the median vertical-FOV error
against the 60-degree start's (and their ratio) and the median shift error. A folder with
fewer than ``--few`` depth maps is evaluated once per seed of ``--real-seeds`` (each seed
draws another shift distortion and other points), and its medians are taken over all of
those runs.

    python data_gen.py pointclouds --procedural 100 --size 96,128 --seed 2 \
        --out data/pointclouds/val
    python scripts/pointcloud_study.py --focal-model logs/pointcloud_focal/checkpoints/best.pt \
        --shift-model logs/pointcloud_shift/checkpoints/best.pt \
        --val data/pointclouds/val data/pointclouds/motorcycle --out outputs/pointcloud_study

Writes ``study.md`` and ``study.json`` in ``--out`` (the runs themselves under ``runs/``).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.devices import add_device_argument, add_precision_argument  # noqa: E402
from evaluators import pointcloud as evaluator  # noqa: E402
from utils.arguments import ArgumentParser  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import atomic_write_text, ensure_writable_dir  # noqa: E402

PROG = "pointcloud_study.py"


def depth_count(folder: Path) -> int:
    """Depth maps in a ``data_gen.py pointclouds`` folder."""
    depths = folder / "depths"
    if not depths.is_dir():
        raise UserError(f"{folder}: not a data_gen.py pointclouds folder (no depths/)")
    return sum(1 for _ in depths.iterdir())


def run_setting(
    args, folder: Path, seeds: Sequence[int], draws: int, mirror: bool, iterations: int
) -> dict:
    """Median FOV errors (recovered, start) and median shift error over ``seeds`` runs."""
    rows = []
    for seed in seeds:
        tag = f"d{draws}_{'m' if mirror else 'n'}_i{iterations}_s{seed}"
        out = Path(args.out) / "runs" / folder.name / tag
        argv = [
            "--focal-model", args.focal_model,
            "--shift-model", args.shift_model,
            "--depth", str(folder),
            f"--distort-shift={args.distort_shift}",
            "--seed", str(seed),
            "--draws", str(draws),
            "--mirror" if mirror else "--no-mirror",
            "--iterations", str(iterations),
            "--precision", args.precision,
            "--device", args.device,
            "--out", str(out),
        ]  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            code = evaluator.main(argv)
        if code != 0:
            raise UserError(f"evaluation of {folder} with {tag} failed")
        rows += json.loads((out / "predictions.json").read_text())
    fov = float(np.median([r["fov_error"] for r in rows]))
    start = float(np.median([r["baseline_fov_error"] for r in rows]))
    return {
        "fov_error": fov,
        "start_fov_error": start,
        "ratio": fov / start,
        "shift_error": float(np.median([r["shift_error"] for r in rows])),
        "maps": len(rows),
    }


def table(results: list[dict], folders: list[str]) -> str:
    """Markdown: one row per setting, FOV error, ratio and shift error per folder."""
    head = "| draws | mirror | iterations | " + " | ".join(
        f"{name}: FOV error (ratio) | {name}: shift error" for name in folders
    )
    lines = [head + " |", "|---|---|---|" + "---|---|" * len(folders)]
    for result in results:
        cells = [str(result["draws"]), "yes" if result["mirror"] else "no"]
        cells.append(str(result["iterations"]))
        for name in folders:
            r = result["folders"][name]
            cells += [
                f"{r['fov_error']:.2f} ({r['ratio']:.2f})",
                f"{r['shift_error']:.4f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--focal-model", required=True, help="train_3d.py focal checkpoint"
    )
    parser.add_argument(
        "--shift-model", required=True, help="train_3d.py shift checkpoint"
    )
    parser.add_argument(
        "--val",
        nargs="+",
        required=True,
        help="validation data_gen.py pointclouds folders",
    )
    parser.add_argument(
        "--draws", nargs="+", type=int, default=[4, 8, 16], help="draw counts to try"
    )
    parser.add_argument(
        "--mirror",
        nargs="+",
        choices=["no", "yes"],
        default=["no", "yes"],
        help="mirror settings to try",
    )
    parser.add_argument(
        "--iterations",
        nargs="+",
        type=int,
        default=[1, 2],
        help="shift-then-focal pass counts to try",
    )
    parser.add_argument(
        "--distort-shift", default="-0.25,0.8", help="LO,HI as evaluation.py pointcloud"
    )
    parser.add_argument(
        "--few", type=int, default=10, help="folders with fewer maps use --real-seeds"
    )
    parser.add_argument(
        "--real-seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2, 3, 4],
        help="seeds of the runs pooled for a folder of few maps",
    )
    add_device_argument(parser)
    add_precision_argument(parser, "fp32", note="of the point-cloud networks; no int8")
    parser.add_argument(
        "--out", default="outputs/pointcloud_study", help="output folder"
    )
    args = parser.parse_args(argv)

    def run() -> int:
        out = ensure_writable_dir(args.out)
        folders = [Path(v) for v in args.val]
        seeds = {
            f.name: args.real_seeds if depth_count(f) < args.few else [0]
            for f in folders
        }
        results = []
        grid = itertools.product(args.draws, args.mirror, args.iterations)
        for draws, mirror, iterations in grid:
            result = {
                "draws": draws,
                "mirror": mirror == "yes",
                "iterations": iterations,
            }
            result["folders"] = {
                f.name: run_setting(
                    args, f, seeds[f.name], draws, mirror == "yes", iterations
                )
                for f in folders
            }
            results.append(result)
        names = [f.name for f in folders]
        atomic_write_text(out / "study.json", json.dumps(results, indent=1) + "\n")
        atomic_write_text(out / "study.md", table(results, names))
        print(table(results, names), end="")
        print(f"wrote {out / 'study.md'} and {out / 'study.json'}")
        return 0

    return run_cli(run, PROG)


if __name__ == "__main__":
    sys.exit(main())
