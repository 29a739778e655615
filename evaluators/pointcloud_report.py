"""Scores of ``evaluation.py pointcloud``: per-depth-map errors against the true intrinsics
and shift, their summary beside the starting guess, the markdown tables and error CDFs."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from geometry.camera import focal_to_fov, valid_depth_mask


def abs_rel(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    """AbsRel of ``pred`` against ``truth`` after aligning ``pred``'s scale by medians."""
    mask = valid & (pred > 0)
    scale = np.median(truth[mask]) / np.median(pred[mask])
    return float(np.mean(np.abs(scale * pred[mask] - truth[mask]) / truth[mask]))


def score_item(
    depth: np.ndarray, K: np.ndarray, result: dict[str, Any], true_shift: float
) -> dict[str, Any]:
    """Errors of the recovered values and of the starting guess for one depth map.

    Args:
        depth: ``(H, W)`` true depth; ``K``: its true ``(3, 3)`` intrinsics.
        result: :func:`evaluators.pointcloud.recover`'s output.
        true_shift: the shift of ``result['normalised']`` relative to ``depth``.
    """
    height = depth.shape[0]
    valid = valid_depth_mask(depth)
    true_focal = float(K[1, 1])
    true_fov = float(focal_to_fov(true_focal, height))
    scores = {"true_focal": true_focal, "true_fov": true_fov, "true_shift": true_shift}
    for prefix, focal, shift, corrected in (
        ("", result["focal"], result["shift"], result["corrected"]),
        ("baseline_", result["focal_init"], 0.0, result["normalised"]),
    ):
        scores[f"{prefix}fov_error"] = abs(
            float(focal_to_fov(focal, height)) - true_fov
        )
        scores[f"{prefix}rel_focal_error"] = abs(focal - true_focal) / true_focal
        scores[f"{prefix}shift_error"] = abs(shift - true_shift)
        scores[f"{prefix}abs_rel"] = abs_rel(corrected, depth, valid)
    return scores


METRICS = (
    ("median FOV error (deg)", "fov_error", np.median),
    ("mean FOV error (deg)", "fov_error", np.mean),
    ("median relative focal error", "rel_focal_error", np.median),
    ("median shift error", "shift_error", np.median),
    ("mean shift error", "shift_error", np.mean),
    ("mean AbsRel (median-scaled)", "abs_rel", np.mean),
)


def summarise(rows: list[dict[str, Any]], settings: dict) -> dict[str, Any]:
    """Aggregate metrics of the model and the baseline."""
    summary: dict[str, Any] = {
        "count": len(rows),
        **settings,
        "model": {},
        "baseline": {},
    }
    for label, key, reduce in METRICS:
        summary["model"][label] = float(reduce([r[key] for r in rows]))
        summary["baseline"][label] = float(reduce([r[f"baseline_{key}"] for r in rows]))
    return summary


def results_markdown(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The summary table, then one row per scored depth map."""
    start = f"{summary['fov_init']:g}"
    lines = [
        f"Point-cloud module on {summary['count']} depth maps "
        f"(start FOV {start} deg, distort shift "
        f"{summary['distort_shift'] or 'none'}, seed {summary['seed']}, "
        f"{summary['draws']} draws{', mirror' if summary['mirror'] else ''}, "
        f"{summary['iterations']} iteration(s))",
        "",
        f"| metric | {start}-degree baseline | recovered | ratio |",
        "|---|---|---|---|",
    ]
    for label, _, _ in METRICS:
        base, model = summary["baseline"][label], summary["model"][label]
        ratio = model / base if base > 0 else float("nan")
        lines.append(f"| {label} | {base:.4f} | {model:.4f} | {ratio:.2f} |")
    lines += [
        "",
        "Per depth map (FOV in degrees; shift in normalised-depth units):",
        "",
        "| depth map | true FOV | start | recovered FOV | FOV error | start's FOV "
        "error | true shift | recovered shift | shift error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['true_fov']:.2f} | {start} | {row['fov']:.2f} | "
            f"{row['fov_error']:.2f} | {row['baseline_fov_error']:.2f} | "
            f"{row['true_shift']:+.4f} | {row['shift']:+.4f} | "
            f"{row['shift_error']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def error_cdf_png(rows: list[dict[str, Any]]) -> bytes:
    """PNG of the error CDFs (FOV, relative focal, shift) of the model and the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(10, 3))
    for axis, key, label in zip(
        axes,
        ("fov_error", "rel_focal_error", "shift_error"),
        ("FOV error (deg)", "relative focal error", "shift error"),
    ):
        for prefix, name in (("", "recovered"), ("baseline_", "60-degree baseline")):
            values = np.sort([r[f"{prefix}{key}"] for r in rows])
            axis.plot(values, np.arange(1, len(values) + 1) / len(values), label=name)
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("share of depth maps")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()
