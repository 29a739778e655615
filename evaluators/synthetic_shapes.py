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
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy.spatial import cKDTree
from tqdm import tqdm

from engine.devices import (
    add_device_argument,
    add_precision_argument,
    autocast,
    inference_precision,
    resolve_device,
)
from geometry.keypoints import nms
from utils.arguments import ArgumentParser
from utils.config import merge_config
from utils.errors import UserError, run_cli
from utils.io import atomic_write_text, ensure_writable_dir

CLASSICAL = ("harris", "shi", "fast")


def match_detections(
    points: np.ndarray, scores: np.ndarray, gt: np.ndarray, distance: float
) -> np.ndarray:
    """True-positive flags of detections sorted by decreasing score.

    Each detection claims the nearest unclaimed ground-truth point within ``distance``.

    Args:
        points: ``(N, 2)`` detections, ``scores`` ``(N,)``; ``gt`` ``(M, 2)``.

    Returns:
        ``(N,)`` bool, aligned with ``points`` sorted by decreasing score.
    """
    order = np.argsort(-scores, kind="stable")
    points = points[order]
    tp = np.zeros(len(points), dtype=bool)
    if len(gt) == 0 or len(points) == 0:
        return tp
    tree = cKDTree(gt)
    claimed = np.zeros(len(gt), dtype=bool)
    neighbours = tree.query_ball_point(points, r=distance + 1e-9)
    for i, candidates in enumerate(neighbours):
        if not candidates:
            continue
        candidates = np.asarray(candidates)
        free = candidates[~claimed[candidates]]
        if len(free) == 0:
            continue
        nearest = free[np.argmin(np.linalg.norm(gt[free] - points[i], axis=1))]
        claimed[nearest] = True
        tp[i] = True
    return tp


def precision_recall(
    tp: np.ndarray, scores: np.ndarray, n_gt: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Precision-recall curve and mAP from pooled detections.

    Args:
        tp: ``(N,)`` true-positive flags; ``scores`` ``(N,)``; ``n_gt`` total ground truth.

    Returns:
        ``precision``, ``recall`` (with end points added, precision made monotone as in the
        reference) and ``mAP = sum (r_i - r_{i-1}) p_i``.
    """
    order = np.argsort(-scores, kind="stable")
    tp = tp[order]
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(~tp)
    recall = tp_cum / max(n_gt, 1)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1)
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    m_ap = float(np.sum(precision[1:] * (recall[1:] - recall[:-1])))
    return precision, recall, m_ap


def localization_errors(
    points: np.ndarray, gt: np.ndarray, distance: float
) -> np.ndarray:
    """Distance of each detection to its nearest ground truth, for those within ``distance``."""
    if len(points) == 0 or len(gt) == 0:
        return np.zeros(0)
    d, _ = cKDTree(gt).query(points)
    return d[d <= distance]


def classical_response(image: np.ndarray, method: str) -> np.ndarray:
    """Raw score map of an OpenCV detector on a float image in [0, 1].

    As the reference: responses are not normalised per image (so they rank consistently
    across images), the image is on the 0-255 scale, Harris uses block 4 / aperture 3 /
    k 0.04, FAST threshold 10, and Shi-Tomasi scores a corner by the highest quality level
    (of 100) at which ``goodFeaturesToTrack`` still returns it.
    """
    gray = np.clip(image * 255.0, 0, 255).astype(np.float32)
    if method == "harris":
        resp = cv2.cornerHarris(gray, 4, 3, 0.04)
    elif method == "shi":
        resp = np.zeros(gray.shape, np.float32)
        for level in np.linspace(0.0001, 1, 100, endpoint=False):
            corners = cv2.goodFeaturesToTrack(gray, 100, float(level), 5)
            if corners is None:
                break
            xy = np.round(corners[:, 0]).astype(int)
            resp[xy[:, 1], xy[:, 0]] = level
    elif method == "fast":
        resp = np.zeros(gray.shape, np.float32)
        for kp in cv2.FastFeatureDetector_create(10).detect(gray.astype(np.uint8)):
            x, y = int(round(kp.pt[0])), int(round(kp.pt[1]))
            resp[y, x] = max(resp[y, x], kp.response)
    else:
        raise UserError(
            f"unknown method '{method}'; valid: {CLASSICAL} or --checkpoint"
        )
    return np.maximum(resp, 0)


def keep_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the ``k`` highest scores of each ``(H, W)`` map of a batch."""
    if k <= 0:
        return scores
    flat = scores.flatten(1)
    k = min(k, flat.shape[1])
    threshold = flat.topk(k, dim=1).values[:, -1:]
    kept = torch.where(flat >= threshold, flat, torch.zeros_like(flat))
    return kept.view_as(scores)


class Scorer:
    """Accumulates detections over images, per primitive, for one test variant."""

    def __init__(
        self, correct_distance: float, loc_threshold: float, loc_distance: float
    ):
        self.correct, self.loc_thr, self.loc_dist = (
            correct_distance,
            loc_threshold,
            loc_distance,
        )
        self.tp: dict[str, list] = defaultdict(list)
        self.scores: dict[str, list] = defaultdict(list)
        self.n_gt: dict[str, int] = defaultdict(int)
        self.loc: dict[str, list] = defaultdict(list)

    def add(
        self, prob: np.ndarray, gt: np.ndarray, primitive: str, floor: float
    ) -> None:
        ys, xs = np.nonzero(prob > floor)
        points = np.stack([xs, ys], axis=1).astype(np.float64)
        scores = prob[ys, xs]
        order = np.argsort(-scores, kind="stable")
        self.tp[primitive].append(match_detections(points, scores, gt, self.correct))
        self.scores[primitive].append(scores[order])
        self.n_gt[primitive] += len(gt)
        confident = points[scores >= self.loc_thr]
        self.loc[primitive].append(localization_errors(confident, gt, self.loc_dist))

    def results(self) -> dict[str, Any]:
        out: dict[str, Any] = {"per_primitive": {}}
        pooled = {"tp": [], "scores": [], "loc": [], "n_gt": 0}
        for prim in sorted(self.tp):
            tp, sc = np.concatenate(self.tp[prim]), np.concatenate(self.scores[prim])
            loc = np.concatenate(self.loc[prim])
            _, _, m_ap = precision_recall(tp, sc, self.n_gt[prim])
            out["per_primitive"][prim] = {
                "mAP": m_ap if self.n_gt[prim] else None,
                "localization_error": float(loc.mean()) if len(loc) else None,
                "n_gt": self.n_gt[prim],
            }
            pooled["tp"].append(tp)
            pooled["scores"].append(sc)
            pooled["loc"].append(loc)
            pooled["n_gt"] += self.n_gt[prim]
        tp, sc = np.concatenate(pooled["tp"]), np.concatenate(pooled["scores"])
        precision, recall, m_ap = precision_recall(tp, sc, pooled["n_gt"])
        loc = np.concatenate(pooled["loc"])
        per_prim = [
            v["mAP"] for v in out["per_primitive"].values() if v["mAP"] is not None
        ]
        out.update(
            mAP=m_ap,
            mean_primitive_mAP=float(np.mean(per_prim)) if per_prim else None,
            localization_error=float(loc.mean()) if len(loc) else None,
            n_gt=pooled["n_gt"],
            n_detections=int(len(tp)),
            curve={"precision": precision, "recall": recall},
        )
        return out


def _test_set(data_conf: dict[str, Any], noisy: bool, per_primitive: int):
    from datasets.synthetic_shapes import SyntheticShapes

    data_conf = {k: v for k, v in data_conf.items() if k != "name"}
    conf = merge_config(SyntheticShapes.default_conf, data_conf)
    conf["augmentation"]["splits"] = ["test"]
    conf["augmentation"]["homographic"]["enable"] = False
    conf["augmentation"]["photometric"]["enable"] = noisy
    if per_primitive > 0:
        conf["split_sizes"]["test"] = per_primitive
    conf["cache_dir"] = None
    return SyntheticShapes(conf, "test")


def evaluate(
    method: str,
    data_conf: dict[str, Any],
    variant: str,
    args: argparse.Namespace,
    model=None,
    device=None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Score one method on one test variant (``clean`` or ``noisy``)."""
    from engine.data import collate

    dataset = _test_set(data_conf, variant == "noisy", args.num_images)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        num_workers=args.workers,
        collate_fn=collate,
    )
    scorer = Scorer(args.correct_distance, args.loc_threshold, args.loc_distance)
    for batch in tqdm(loader, desc=f"{method} / {variant}", leave=False):
        images = batch["image"]
        if model is not None:
            with torch.inference_mode(), autocast(device, precision):
                heat = model({"image": images.to(device)})["heatmap"].float()
        else:
            heat = torch.from_numpy(
                np.stack([classical_response(im[0].numpy(), method) for im in images])
            )
        if model is not None:
            heat = torch.where(heat > args.threshold, heat, torch.zeros_like(heat))
        heat = nms(heat, args.nms_radius)
        heat = keep_top_k(
            heat, args.top_k if model is not None else args.classical_top_k
        )
        heat = heat.cpu().numpy()
        for b in range(len(images)):
            gt = np.argwhere(batch["keypoint_map"][b].numpy() > 0.5)[:, ::-1]
            scorer.add(
                heat[b], gt.astype(np.float64), batch["primitive"][b], args.floor
            )
    return scorer.results()


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
        from models import build_model
        from models.extractor import SuperPointRunner
        from models.weights import check_and_load_state_dict
        from utils.io import load_checkpoint

        ckpt = load_checkpoint(ckpt_path)
        if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
            raise UserError(
                f"checkpoint '{ckpt_path}' was not written by train_superpoint.py"
            )
        model = build_model(ckpt["config"]["model"]).eval().to(device)
        check_and_load_state_dict(model, ckpt["model"], ckpt_path)
        data_conf = dict(ckpt["config"].get("data", {}))
        data_conf.pop("augmentation", None)
        if args.image_size:
            data_conf["image_size"] = list(args.image_size)
        # The runner applies the precision, as extraction does (evaluate's autocast
        # stays off).
        runner = SuperPointRunner(model, precision, args.channels_last, device)
        entries.append(
            (
                Path(ckpt_path).parent.parent.name or Path(ckpt_path).stem,
                runner,
                data_conf,
            )
        )
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
        curves = {}
        for name, model, data_conf in entries:
            res = evaluate(
                "model" if model is not None else name,
                data_conf,
                variant,
                args,
                model=model,
                device=device,
            )
            curves[name] = res
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
