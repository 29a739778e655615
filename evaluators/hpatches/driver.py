"""HPatches evaluation driver and command line: extract features when a model is given, score
every pair under the preset, summarise, and write every output.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datasets.hpatches import (
    NUM_SEQUENCES_RELEASE,
    adapt_homography,
    find_image,
    image_size,
    list_sequences,
    preprocess_image,
    read_homography,
    read_image,
    resize_plan,
    resolve_root,
)
from engine.devices import add_device_argument, add_precision_argument
from evaluators.hpatches.caches import read_d2net_cache, write_d2net_cache
from evaluators.hpatches.features import Features, features_path, load_features
from evaluators.hpatches.outputs import (
    _cache_row,
    _d2net_row,
    _jsonable,
    _write_text,
    markdown_table,
    plot_homography_curves,
    plot_matches,
    plot_mma,
    plot_repeatability,
)
from evaluators.hpatches.presets import PRESETS, Preset, apply_overrides
from evaluators.hpatches.scoring import failed_pair, score_pair
from evaluators.hpatches.summary import summarize
from utils.arguments import ArgumentParser
from utils.errors import UserError, run_cli


@dataclass
class EvalResult:
    """What :func:`evaluate` returns: per-pair records, summary and output folder."""

    records: list[dict]
    summary: dict
    out_dir: Path


def _warn(message: str) -> None:
    print(f"evaluation.py hpatches: warning: {message}", file=sys.stderr)


def export_features(
    model: str,
    root: Path,
    sequences: list[str],
    preset: Preset,
    tag: str | None,
    features_dir: Path | None,
    device: str = "cpu",
    skip_bad: bool = False,
    progress: bool = True,
    no_overwrite: bool = False,
) -> str:
    """Extract features for a preset; returns the tag.

    Files whose provenance record matches (same weights hash or OpenCV method, options,
    preset, preprocessing and image size) are reused; others are re-extracted and counted
    as stale, or refused with ``no_overwrite``. The default tag is the extractor's (it
    names a checkpoint's run, ``<run>-best``) plus the preset.
    """
    from models.extractor import build_extractor, extractor_options
    from pipelines.extraction import extract_to_files

    # The presets' detection threshold and NMS radius are SuperPoint-family settings; a
    # model that has its own (R2D2) or none (SIFT, ORB) gets only what it understands,
    # and the keypoint budget (top_k) is applied to every model after extraction. Keys
    # the user added go to the model as they are: it names a misspelled one.
    understood = set(extractor_options(model))
    base = PRESETS.get(preset.name.split("[")[0])
    optional = set(base.extractor_conf) if base else set()
    dropped = sorted(optional & set(preset.extractor_conf) - understood)
    conf = {k: v for k, v in preset.extractor_conf.items() if k not in dropped}
    if dropped:
        print(
            f"evaluation.py hpatches: note: preset {preset.name}'s "
            f"{', '.join(dropped)} not applied to {model} "
            f"(it takes {', '.join(sorted(understood))})",
            file=sys.stderr,
        )
    extractor = build_extractor(model, device, conf)
    tag = tag or f"{extractor.tag}-{preset.name}"
    jobs = []
    for name in sequences:
        seq_dir = root / name
        for index in range(1, 7):
            try:
                image = find_image(seq_dir, index)
            except UserError as err:
                if not skip_bad:
                    raise
                _warn(str(err))
                continue
            jobs.append((image, features_path(image, tag, root, features_dir)))
    report = extract_to_files(
        extractor,
        jobs,
        resize=preset.resize,
        top_k=preset.top_k,
        skip_bad=skip_bad,
        progress=progress,
        preset=preset.name,
        no_overwrite=no_overwrite,
    )
    print(f"features {tag}: {report.summary()}")
    return tag


def check_sequences(root: Path, names: list[str]) -> None:
    """Check every sequence's images (headers) and homographies before any work starts.

    Raises:
        UserError: the first missing or unreadable image, or missing or malformed
            ``H_1_k``, naming the file.
    """
    for name in names:
        seq_dir = root / name
        for index in range(1, 7):
            image_size(find_image(seq_dir, index))
        for k in range(2, 7):
            read_homography(seq_dir / f"H_1_{k}")


def output_name(tag: str, preset: Preset) -> str:
    """Default output folder name: the tag and the preset, the preset named once."""
    return tag if tag.endswith(f"-{preset.name}") else f"{tag}-{preset.name}"


def evaluate(
    data: str | Path,
    preset: Preset,
    tag: str,
    out_dir: str | Path,
    features_dir: str | Path | None = None,
    skip_bad: bool = False,
    compare: list[tuple[str, Path]] | None = None,
    num_match_plots: int = 4,
    seed: int = 0,
    progress: bool = True,
    write_outputs: bool = True,
) -> EvalResult:
    """Score cached features of every pair with a preset and write the outputs.

    Raises:
        UserError: bad input (one line naming the file), unless ``skip_bad``, where the
            affected pairs are scored as failed (:func:`failed_pair`) and counted.
    """
    root = resolve_root(data)
    features_dir = Path(features_dir) if features_dir else None
    out_dir = Path(out_dir)
    caches = [read_d2net_cache(p, n) for n, p in (compare or [])]
    if caches and preset.protocol != "d2net":
        raise UserError("--compare reads D2-Net MMA caches: use it with --preset d2net")
    names = list_sequences(root, exclude=preset.exclude)
    need_desc = preset.protocol != "superpoint"
    records: list[dict] = []
    n_features: dict[str, list[int]] = {"all": [], "i": [], "v": []}
    d2net_feats: list[int] = []
    notes: list[str] = []
    plot_jobs: list[tuple] = []
    extractors: set[str] = set()
    start = time.perf_counter()

    def fail(name: str, k: int, message: str) -> None:
        if not skip_bad:
            raise UserError(message)
        _warn(f"pair {name} 1-{k} counted as failed: {message}")
        records.append(
            {
                "scene": name,
                "kind": name[0],
                "index": k,
                "failed": True,
                "error": message,
                **failed_pair(preset),
            }
        )

    # Example match images are spread over the sorted list (so both i and v appear).
    plot_seqs = (
        set(
            np.linspace(0, len(names) - 1, min(num_match_plots, len(names)))
            .round()
            .astype(int)
            .tolist()
        )
        if num_match_plots > 0
        else set()
    )
    for s_idx, name in enumerate(
        tqdm(names, desc=f"score {preset.name}", disable=not progress, leave=False)
    ):
        # Images and homographies are checked pair by pair, so a bad file fails only
        # the pairs that need it (all five when it is image 1 or its features).
        seq_dir = root / name
        try:
            image0 = find_image(seq_dir, 1)
            orig0 = image_size(image0)
            shape0 = resize_plan(orig0, preset.resize)[1]
            f0 = load_features(
                features_path(image0, tag, root, features_dir),
                shape0,
                orig0,
                preset,
                need_desc,
            )
        except UserError as err:
            for k in range(2, 7):
                fail(name, k, str(err))
            continue
        extractors.add(_extractor_id(f0))
        n_features["all"].append(len(f0.keypoints))
        n_features[name[0]].append(len(f0.keypoints))
        d2net_feats.append(len(f0.keypoints))
        for k in range(2, 7):
            try:
                image1 = find_image(seq_dir, k)
                H_orig = read_homography(seq_dir / f"H_1_{k}")
                orig1 = image_size(image1)
                shape1 = resize_plan(orig1, preset.resize)[1]
                f1 = load_features(
                    features_path(image1, tag, root, features_dir),
                    shape1,
                    orig1,
                    preset,
                    need_desc,
                )
            except UserError as err:
                fail(name, k, str(err))
                continue
            extractors.add(_extractor_id(f1))
            H = adapt_homography(H_orig, orig0, orig1, preset.resize)
            metrics = score_pair(preset, f0, f1, H, shape0, shape1, seed)
            records.append(
                {"scene": name, "kind": name[0], "index": k, "failed": False, **metrics}
            )
            n_features["all"].append(len(f1.keypoints))
            n_features[name[0]].append(len(f1.keypoints))
            d2net_feats.append(len(f1.keypoints))
            if k == 6 and s_idx in plot_seqs:
                plot_jobs.append((name, image0, image1, f0, f1, H))
    elapsed = time.perf_counter() - start
    if not records:
        raise UserError(f"{root}: no pair to evaluate")
    if preset.protocol == "superpoint" and all(
        math.isnan(r.get("nn_map", 0.0)) for r in records if not r["failed"]
    ):
        notes.append("no descriptors (detector only): descriptor metrics are n/a")
    if preset.protocol == "superpoint" and len(names) != NUM_SEQUENCES_RELEASE:
        notes.append(
            f"{len(names)} sequences, not the full release's {NUM_SEQUENCES_RELEASE}"
        )
    if preset.protocol != "superpoint" and len(names) != NUM_SEQUENCES_RELEASE - 8:
        notes.append(f"{len(names)} sequences, not the protocol's 108")
    if len(extractors) > 1:
        notes.append(
            f"the '{tag}' feature files come from {len(extractors)} different "
            f"extractors ({', '.join(sorted(extractors))})"
        )
        _warn(notes[-1])
    summary = {
        "preset": preset.to_dict(),
        "preset_name": preset.name,
        "features": tag,
        "features_extractors": sorted(extractors),
        "data": str(root),
        "num_sequences": len(names),
        "num_pairs": len(records),
        "num_failed_pairs": sum(r["failed"] for r in records),
        "scoring_seconds": elapsed,
        "notes": notes,
        "results": summarize(preset, records, n_features),
        "compare": [{k: _jsonable(v) for k, v in c.items()} for c in caches],
    }
    if write_outputs:
        _write_outputs(
            out_dir, preset, tag, records, summary, caches, plot_jobs, d2net_feats
        )
    return EvalResult(records, summary, out_dir)


def _extractor_id(features: Features) -> str:
    """The extractor a feature file names (weights hash or OpenCV method)."""
    record = features.provenance or {}
    return str((record.get("extractor") or {}).get("id", "unrecorded"))


def _write_outputs(
    out_dir, preset, tag, records, summary, caches, plot_jobs, d2net_feats
):
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text(out_dir / "pairs.json", json.dumps(_jsonable(records), indent=1))
    _write_text(out_dir / "summary.json", json.dumps(_jsonable(summary), indent=2))
    results = summary["results"]
    if preset.protocol == "d2net":
        rows = [(tag, _d2net_row(results))] + [
            (c["name"], _cache_row(c)) for c in caches
        ]
        write_d2net_cache(
            out_dir / f"{tag}.npy", records, d2net_feats, preset.mma_thresholds
        )
        plot_mma(out_dir / "mma.png", tag, results, preset, caches)
    else:
        rows = [(tag, results["all"])]
    if preset.protocol == "superpoint":
        plot_repeatability(out_dir / "repeatability_per_sequence.png", records, preset)
    if preset.protocol == "gluefactory":
        plot_homography_curves(out_dir / "homography_recall.png", records, preset)
    note = f", {summary['num_sequences']} sequences, {summary['num_pairs']} pairs"
    if summary["num_failed_pairs"]:
        note += f", {summary['num_failed_pairs']} failed"
    table = markdown_table(preset, rows, note)
    if summary["notes"]:
        table += "\n" + "\n".join(f"Note: {n}." for n in summary["notes"]) + "\n"
    _write_text(out_dir / "results.md", table)
    for name, image0, image1, f0, f1, H in plot_jobs:
        try:
            im0 = preprocess_image(read_image(image0, preset.gray), preset.resize)
            im1 = preprocess_image(read_image(image1, preset.gray), preset.resize)
        except UserError as err:
            _warn(f"no match image: {err}")
            continue
        plot_matches(
            out_dir / f"matches_{name}_1-6.png",
            im0,
            im1,
            f0,
            f1,
            H,
            preset.correct_px,
            f"{tag} {name} 1-6",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="evaluation.py hpatches",
        description="Evaluate local features on HPatches with a named protocol preset.",
    )
    parser.add_argument(
        "--data",
        default="data/hpatches_demo",
        help="hpatches-sequences-release folder (or its parent), or a demo set",
    )
    parser.add_argument(
        "--preset",
        default="superpoint",
        choices=sorted(PRESETS),
        help="evaluation protocol (--list-presets describes them)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--features", default=None, help="tag of cached feature files")
    source.add_argument(
        "--model",
        default=None,
        help="sift, orb or a checkpoint: extract (reusing files whose provenance record "
        "matches), then score",
    )
    parser.add_argument(
        "--tag",
        default=None,
        help="with --model: feature tag (default: MODEL-PRESET, where MODEL names a "
        "checkpoint's run, e.g. <run>-best-superpoint)",
    )
    parser.add_argument(
        "--no-overwrite",
        action="store_true",
        help="with --model: refuse to replace feature files written by another model or "
        "with other settings (default: re-extract them and report them as stale)",
    )
    parser.add_argument(
        "--features-dir",
        default=None,
        help="feature files live here (<seq>/<image>.<tag>) instead of next to images",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default: outputs/hpatches/<tag>-<preset>, the preset named "
        "once)",
    )
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="[NAME=]FILE.npy",
        help="D2-Net-format caches to add to the MMA plot and table (--preset d2net)",
    )
    parser.add_overrides(
        "preset fields, e.g. top_k=500 extractor_conf.nms_radius=8 (the preset name "
        "records them)"
    )
    parser.keep_assignments("--compare")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="warn and count pairs with bad input as failed",
    )
    parser.add_argument(
        "--num-match-plots", type=int, default=4, help="example match images to draw"
    )
    parser.add_argument("--seed", type=int, default=0, help="RANSAC seed")
    add_device_argument(parser)
    add_precision_argument(
        parser,
        None,
        "extractor_conf.precision",
        "with --model; default fp32, as the references",
    )
    parser.add_argument(
        "--list-presets", action="store_true", help="print the presets and exit"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``evaluation.py hpatches ...`` (see the module docstring)."""
    args = build_parser().parse_args(argv)

    def run() -> int:
        if args.list_presets:
            for p in PRESETS.values():
                print(f"{p.name:14s} {p.description}  [{p.reference}]")
            return 0
        if not args.features and not args.model:
            raise UserError("give --features TAG (cached) or --model sift|orb|CKPT")
        overrides = list(args.overrides)
        if args.precision is not None:
            overrides.append(f"extractor_conf.precision={args.precision}")
        preset = apply_overrides(PRESETS[args.preset], overrides)
        compare = []
        for item in args.compare:
            name, sep, path = item.partition("=")
            compare.append((name, Path(path)) if sep else (Path(item).stem, Path(item)))
        root = resolve_root(args.data)
        names = list_sequences(root, exclude=preset.exclude)
        # Everything that can be checked is checked before features are extracted.
        for name, path in compare:
            read_d2net_cache(path, name)
        if compare and preset.protocol != "d2net":
            raise UserError(
                "--compare reads D2-Net MMA caches: use it with --preset d2net"
            )
        if not args.skip_bad:
            check_sequences(root, names)
        tag = args.features
        if args.model:
            tag = export_features(
                args.model,
                root,
                names,
                preset,
                args.tag,
                Path(args.features_dir) if args.features_dir else None,
                args.device,
                args.skip_bad,
                no_overwrite=args.no_overwrite,
            )
        out = (
            Path(args.out)
            if args.out
            else Path("outputs/hpatches") / output_name(tag, preset)
        )
        result = evaluate(
            root,
            preset,
            tag,
            out,
            args.features_dir,
            args.skip_bad,
            compare,
            args.num_match_plots,
            args.seed,
        )
        print((out / "results.md").read_text(), end="")
        s = result.summary
        print(
            f"{s['num_pairs']} pairs scored in {s['scoring_seconds']:.1f} s; "
            f"outputs in {out}"
        )
        return 0

    return run_cli(run, "evaluation.py hpatches")


if __name__ == "__main__":
    sys.exit(main())
