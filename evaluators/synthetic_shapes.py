"""Detector evaluation on the Synthetic Shapes test set (``evaluation.py synthetic_shapes``).

Protocol of the SuperPoint reference: detections are the NMS'd probability map (radius 4) above a
near-zero floor; over all test images, detections sorted by score are true positives when they
lie within ``correct_distance`` (4 px) of a ground-truth keypoint not yet claimed (nearest first),
which gives the precision-recall curve; mAP is the area under its upper envelope, pooled over
all primitives (the reference's number) and also averaged per primitive (primitives without
keypoints, ellipses and noise, only add false positives to the pooled curve). Localisation
error is the mean distance of correct detections among those with probability >= 0.5 (2 px
radius). The same command scores OpenCV's Harris, Shi-Tomasi and FAST responses (NMS'd the same
way) so the baselines are measured by the same code. Two test variants: ``clean`` and ``noisy``
(photometric augmentation on). OpenCV responses are raw (not normalised per image) and keep
their 300 strongest points after NMS, as the reference evaluation does.

Speed: each test image is drawn once per variant and scored by every method. The OpenCV
baselines (response, NMS, top 300, matching) run in the DataLoader workers, inside the
collation of each batch, while the main process runs the networks on the same batches;
Shi-Tomasi's 100 quality levels come from one ``goodFeaturesToTrack`` call and the
eigenvalue map it thresholds (``evaluators.synthetic_scoring.shi_tomasi_response``). The
numbers are those of scoring one method at a time over separately drawn test sets
(``tests/test_eval_synthetic_speed.py`` compares the two on a small set).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from engine.devices import (
    add_device_argument,
    add_precision_argument,
    inference_precision,
    resolve_device,
)
from evaluators.synthetic_scoring import (
    CLASSICAL,
    SHI_LEVELS,
    ClassicalScoring,
    ImageScore,
    Scorer,
    ScoringSettings,
    classical_response,
    keep_top_k,
    localization_errors,
    match_detections,
    one_opencv_thread,
    precision_recall,
    score_network,
    shi_tomasi_response,
)
from utils.arguments import ArgumentParser
from utils.config import merge_config
from utils.errors import UserError, run_cli
from utils.io import atomic_write_text, ensure_writable_dir

__all__ = [
    "CLASSICAL",
    "SHI_LEVELS",
    "ClassicalScoring",
    "ImageScore",
    "Scorer",
    "ScoringSettings",
    "build_parser",
    "classical_response",
    "evaluate_all",
    "keep_top_k",
    "localization_errors",
    "main",
    "match_detections",
    "precision_recall",
    "run",
    "shi_tomasi_response",
]


def _test_set(
    data_conf: dict[str, Any], noisy: bool, per_primitive: int, split: str = "test"
):
    """The Synthetic Shapes ``split`` a detector trained with ``data_conf`` is scored on:
    whole images (a training ``crop`` does not apply), un-warped, photometric augmentation
    on for the noisy variant, drawn on the fly."""
    from datasets.synthetic_shapes import SyntheticShapes

    data_conf = {k: v for k, v in data_conf.items() if k != "name"}
    conf = merge_config(SyntheticShapes.default_conf, data_conf)
    conf["augmentation"]["splits"] = [split]
    conf["augmentation"]["homographic"]["enable"] = False
    conf["augmentation"]["photometric"]["enable"] = noisy
    if per_primitive > 0:
        conf["split_sizes"][split] = per_primitive
    conf["cache_dir"] = None
    conf["crop"] = None
    return SyntheticShapes(conf, split)


def _worker_context():
    """Workers started from a clean server process: a worker forked from a process whose
    OpenCV thread pool has run (training in the same process, a previous pass) can hang
    in OpenCV's calls."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["evaluators.synthetic_scoring", "datasets.synthetic_shapes"]
    )
    return context


def _picklable(model: Any) -> bool:
    """Whether a runner can go to the loader workers: an int8 runner does not pickle,
    so it stays in the main process."""
    return getattr(model, "quantized", None) is None


def evaluate_all(
    entries: Sequence[tuple[str, Any, dict[str, Any]]],
    variant: str,
    args: argparse.Namespace,
    device: torch.device | None = None,
    split: str = "test",
) -> dict[str, dict[str, Any]]:
    """Score every entry on one test variant (``clean`` or ``noisy``).

    Args:
        entries: ``(name, model or None, data_conf)``; ``None`` means the OpenCV
            method ``name``. A model runs as given (:func:`load_entry` wraps a
            checkpoint in the runner that applies the precision). Entries whose test
            sets are the same (same resolved data settings) are scored in one pass.
        args: the protocol (``build_parser`` options).
        split: ``test``, or ``val`` when choosing a recipe.

    Returns:
        ``{name: Scorer.results()}`` in the order of ``entries``.
    """
    settings = ScoringSettings.from_args(args)
    groups: dict[str, list[int]] = {}
    datasets = {}
    for i, (_, _, data_conf) in enumerate(entries):
        dataset = _test_set(data_conf, variant == "noisy", args.num_images, split)
        key = json.dumps(dataset.conf, sort_keys=True, default=str)
        groups.setdefault(key, []).append(i)
        datasets.setdefault(key, dataset)
    results: dict[int, dict[str, Any]] = {}
    # On a CPU with loader workers, the networks run in the workers too (one thread
    # each, beside the baselines), so the cores are not split between the main
    # process's threads and the workers; on a GPU they run in the main process.
    in_workers = args.workers > 0 and (device is None or device.type == "cpu")
    for key, members in groups.items():
        methods = [entries[i][0] for i in members if entries[i][1] is None]
        networks = {
            i: entries[i][1]
            for i in members
            if entries[i][1] is not None and in_workers and _picklable(entries[i][1])
        }
        loader = torch.utils.data.DataLoader(
            datasets[key],
            batch_size=args.batch_size,
            num_workers=args.workers,
            collate_fn=ClassicalScoring(methods, settings, networks),
            worker_init_fn=one_opencv_thread,
            multiprocessing_context=_worker_context() if args.workers else None,
        )
        scorers = {i: settings.scorer() for i in members}
        names = ", ".join(entries[i][0] for i in members)
        for batch in tqdm(loader, desc=f"{names} / {variant}", leave=False):
            for i in members:
                name, model, _ = entries[i]
                if model is None:
                    scored = batch["classical"][name]
                elif i in networks:
                    scored = batch["networks"][i]
                else:
                    scored = score_network(
                        model, batch["image"], batch["gt"], settings, device
                    )
                for prim, one in zip(batch["primitive"], scored):
                    scorers[i].add_scored(prim, one)
        results.update({i: scorers[i].results() for i in members})
    return {entries[i][0]: results[i] for i in range(len(entries))}


def _plot(curves: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=120)
    for label, res in curves.items():
        c = res["curve"]
        ax.plot(c["recall"], c["precision"], label=f"{label} (mAP {res['mAP']:.3f})")
    ax.set(
        xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="evaluation.py synthetic_shapes",
        description="Precision-recall, mAP and localisation error of a detector on the "
        "Synthetic Shapes test set (clean and noisy), with OpenCV baselines.",
    )
    p.add_argument(
        "--checkpoint", action="append", default=[], help="model checkpoint(s)"
    )
    p.add_argument(
        "--methods", nargs="*", default=[], choices=CLASSICAL, help="OpenCV baselines"
    )
    p.add_argument(
        "--variants",
        nargs="+",
        default=["clean", "noisy"],
        choices=["clean", "noisy"],
        help="test sets: clean images, or noisy ones (photometric augmentation on)",
    )
    p.add_argument(
        "--num-images", type=int, default=500, help="test images per primitive"
    )
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=None,
        help="H W (default: the checkpoint's training size, else 120 160)",
    )
    p.add_argument("--out", default="outputs/eval_synthetic", help="output folder")
    p.add_argument(
        "--threshold", type=float, default=0.001, help="model detection threshold"
    )
    p.add_argument(
        "--top-k", type=int, default=0, help="model keypoints per image (0: all)"
    )
    p.add_argument(
        "--classical-top-k", type=int, default=300, help="OpenCV keypoints per image"
    )
    p.add_argument(
        "--nms-radius", type=int, default=4, help="NMS radius in pixels (all methods)"
    )
    p.add_argument("--correct-distance", type=float, default=4.0, help="px, for mAP")
    p.add_argument(
        "--floor", type=float, default=1e-4, help="detections below are dropped"
    )
    p.add_argument(
        "--loc-threshold", type=float, default=0.5, help="prob. for loc. error"
    )
    p.add_argument("--loc-distance", type=float, default=2.0, help="px, for loc. error")
    p.add_argument(
        "--batch-size", type=int, default=32, help="test images per forward pass"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="processes drawing test images"
    )
    add_device_argument(p)
    add_precision_argument(p, "fp32", note="of the model, as in extraction")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the model's convolutions in channels-last memory layout",
    )
    p.add_overrides("settings", keys="options")
    return p


def load_entry(
    checkpoint: str | Path,
    device: torch.device,
    precision: str,
    channels_last: bool = True,
) -> tuple[str, Any, dict[str, Any]]:
    """``(run name, runner, data settings)`` of a ``train_superpoint.py`` checkpoint, for
    :func:`evaluate_all`: the runner applies ``precision`` (resolved) as extraction does,
    and the data settings are the run's without its training augmentation."""
    from models import build_model
    from models.extractor import SuperPointRunner
    from models.weights import check_and_load_state_dict
    from utils.io import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise UserError(
            f"checkpoint '{checkpoint}' was not written by train_superpoint.py"
        )
    model = build_model(ckpt["config"]["model"]).eval().to(device)
    check_and_load_state_dict(model, ckpt["model"], checkpoint)
    data_conf = dict(ckpt["config"].get("data", {}))
    data_conf.pop("augmentation", None)
    runner = SuperPointRunner(model, precision, channels_last, device)
    return (
        Path(checkpoint).parent.parent.name or Path(checkpoint).stem,
        runner,
        data_conf,
    )


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if not args.checkpoint and not args.methods:
        raise UserError(
            "nothing to evaluate: give --checkpoint CKPT and/or --methods ..."
        )
    device = resolve_device(args.device)
    precision = inference_precision(
        args.precision, device, int8="auto", network="MagicPoint/SuperPoint"
    )
    entries: list[tuple[str, Any, dict]] = []
    for ckpt_path in args.checkpoint:
        entry = load_entry(ckpt_path, device, precision, args.channels_last)
        if args.image_size:
            entry[2]["image_size"] = list(args.image_size)
        entries.append(entry)
    base = {"image_size": list(args.image_size or (120, 160))}
    if entries and not args.image_size:
        base = {"image_size": entries[0][2].get("image_size", [120, 160])}
    entries += [(m, None, base) for m in args.methods]
    # Created once every input has been read, so bad input leaves no folder behind.
    out_dir = ensure_writable_dir(args.out)

    results: dict[str, Any] = {
        "protocol": {
            k: v
            for k, v in vars(args).items()
            if k not in ("checkpoint", "methods", "overrides")
        }
    }
    for variant in args.variants:
        curves = evaluate_all(entries, variant, args, device)
        _plot(curves, out_dir / f"pr_{variant}.png", f"Synthetic Shapes ({variant})")
        results[variant] = {
            name: {k: v for k, v in res.items() if k != "curve"}
            for name, res in curves.items()
        }
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    lines = [
        "| method | variant | mAP @4px | mean per-primitive mAP | loc. error (px) "
        "| detections |",
        "|---|---|---|---|---|---|",
    ]
    for variant in args.variants:
        for name, res in results[variant].items():
            lines.append(
                f"| {name} | {variant} | {_fmt(res['mAP'])} | "
                f"{_fmt(res['mean_primitive_mAP'])} | "
                f"{_fmt(res['localization_error'])} | {res['n_detections']} |"
            )
    table = "\n".join(lines)
    atomic_write_text(out_dir / "results.md", table + "\n")
    print(table)
    print(f"written: {out_dir}/results.json, results.md, pr_*.png")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    def job() -> int:
        run(argv)
        return 0

    return run_cli(job, "evaluation.py synthetic_shapes")


if __name__ == "__main__":
    sys.exit(main())
