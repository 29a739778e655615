"""HPatches outputs: the markdown table, JSON helpers and PNG plots (MMA curves, repeatability per
sequence, homography accuracy curves, example matches).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.hpatches.features import Features
from evaluators.hpatches.metrics import (
    reprojection_errors,
)
from evaluators.hpatches.presets import PLOT_MMA_MAX, Preset
from evaluators.hpatches.scoring import _mutual_matches
from evaluators.hpatches.summary import _nanmean
from utils.io import atomic_write_text


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    preset: Preset, rows: list[tuple[str, dict]], header_note: str = ""
) -> str:
    """Markdown table of overall results (``rows`` = (method, summary['all'] or cache))."""
    lines = [
        f"HPatches, preset `{preset.name}` ({preset.description}){header_note}",
        "",
    ]
    if preset.protocol == "superpoint":
        eps = [f"{e:g}" for e in preset.homography_eps]
        lines.append(
            "| method | rep. | MLE | "
            + " | ".join(f"H acc. {e}px" for e in eps)
            + " | NN mAP | M. score | #kpts |"
        )
        lines.append("|---" * (6 + len(eps)) + "|")
        for name, s in rows:
            lines.append(
                f"| {name} | {_fmt(s['repeatability'])} | {_fmt(s['mle'], 2)} | "
                + " | ".join(_fmt(s[f"homography@{e}px"]) for e in eps)
                + f" | {_fmt(s['nn_map'])} | {_fmt(s['matching_score'])} | "
                f"{_fmt(s['num_keypoints'], 0)} |"
            )
    elif preset.protocol == "d2net":
        ts = [1, 3, 5, 10]
        lines.append(
            "| method | "
            + " | ".join(f"MMA@{t}" for t in ts)
            + " | MMA@3 i | MMA@3 v | #features | #matches |"
        )
        lines.append("|---" * (5 + len(ts)) + "|")
        for name, s in rows:
            lines.append(
                f"| {name} | "
                + " | ".join(_fmt(s.get(f"mma@{t}")) for t in ts)
                + f" | {_fmt(s.get('mma_i@3'))} | {_fmt(s.get('mma_v@3'))} | "
                f"{_fmt(s.get('num_features'), 0)} | {_fmt(s.get('num_matches'), 0)} |"
            )
    else:
        ts = [f"{t:g}" for t in preset.auc_thresholds]
        lines.append(
            "| method | "
            + " | ".join(f"AUC DLT@{t}px" for t in ts)
            + " | "
            + " | ".join(f"AUC RANSAC@{t}px" for t in ts)
            + " | prec@1px | prec@3px | #matches | #kpts |"
        )
        lines.append("|---" * (5 + 2 * len(ts)) + "|")
        for name, s in rows:
            lines.append(
                f"| {name} | "
                + " | ".join(_fmt(s[f"auc_dlt@{t}px"]) for t in ts)
                + " | "
                + " | ".join(_fmt(s[f"auc_ransac@{t}px"]) for t in ts)
                + f" | {_fmt(s['median_prec@1px'])} | {_fmt(s['median_prec@3px'])} | "
                f"{_fmt(s['median_num_matches'], 0)} | "
                f"{_fmt(s['median_num_keypoints'], 0)} |"
            )
        lines += [
            "",
            "prec@t, #matches and #kpts are medians over pairs (glue-factory).",
        ]
    return "\n".join(lines) + "\n"


def _d2net_row(summary: dict) -> dict:
    row = dict(summary["all"])
    for split in ("i", "v"):
        if split in summary:
            row[f"mma_{split}@3"] = summary[split].get("mma@3")
    return row


def _cache_row(cache: dict) -> dict:
    row = {"num_features": cache["num_features"], "num_matches": cache["num_matches"]}
    for t, a, i, v in zip(
        cache["thresholds"], cache["mma"], cache["mma_i"], cache["mma_v"]
    ):
        row[f"mma@{t:g}"] = float(a)
        if t == 3:
            row["mma_i@3"], row["mma_v@3"] = float(i), float(v)
    return row


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_mma(path: Path, tag: str, summary: dict, preset: Preset, caches: list[dict]):
    """MMA curves (overall, illumination, viewpoint) of this run and D2-Net caches."""
    plt = _plt()
    ts = [t for t in preset.mma_thresholds if t <= PLOT_MMA_MAX]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    titles = {"all": "Overall", "i": "Illumination", "v": "Viewpoint"}
    for ax, split in zip(axes, ("all", "i", "v")):
        if split in summary:
            ax.plot(ts, [summary[split][f"mma@{t:g}"] for t in ts], lw=2, label=tag)
        for cache in caches:
            key = {"all": "mma", "i": "mma_i", "v": "mma_v"}[split]
            sel = cache["thresholds"] <= PLOT_MMA_MAX
            ax.plot(
                cache["thresholds"][sel],
                cache[key][sel],
                lw=1.5,
                ls="--",
                label=cache["name"],
            )
        ax.set_title(titles[split])
        ax.set_xlabel("threshold [px]")
        ax.set_xlim(1, PLOT_MMA_MAX)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MMA")
    axes[-1].legend(loc="lower right")
    fig.suptitle(f"HPatches MMA, preset {preset.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_repeatability(path: Path, records: list[dict], preset: Preset) -> None:
    """Mean repeatability of each sequence (bars coloured by i/v)."""
    plt = _plt()
    scenes = sorted({r["scene"] for r in records})
    values = [
        _nanmean([r["repeatability"] for r in records if r["scene"] == s])
        for s in scenes
    ]
    colors = ["tab:orange" if s.startswith("i_") else "tab:blue" for s in scenes]
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(scenes) + 2), 4))
    ax.bar(range(len(scenes)), values, color=colors)
    ax.set_xticks(range(len(scenes)))
    ax.set_xticklabels(scenes, rotation=90, fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"repeatability@{preset.correct_px:g}px")
    ax.set_title(
        f"Repeatability per sequence (orange: i, blue: v), preset {preset.name}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_homography_curves(path: Path, records: list[dict], preset: Preset) -> None:
    """Cumulative homography corner error (DLT and robust) up to 10 px."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for key, label in (
        ("H_error_dlt", "DLT"),
        ("H_error_ransac", preset.ransac_method),
    ):
        errors = np.sort([r[key] for r in records])
        recall = (np.arange(len(errors)) + 1) / len(errors)
        ax.step(np.r_[0, errors], np.r_[0, recall], where="post", label=label)
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 1)
    ax.set_xlabel("corner error [px]")
    ax.set_ylabel("fraction of pairs")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Homography recall, preset {preset.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_matches(
    path: Path,
    image0: np.ndarray,
    image1: np.ndarray,
    f0: Features,
    f1: Features,
    H: np.ndarray,
    threshold: float,
    title: str,
) -> None:
    """Side-by-side pair with mutual-NN matches: green within ``threshold``, red not."""
    plt = _plt()
    h0, w0 = image0.shape[:2]
    h1, w1 = image1.shape[:2]
    canvas = np.zeros((max(h0, h1), w0 + w1, 3), np.uint8)
    rgb = [
        np.repeat(im[..., None], 3, 2) if im.ndim == 2 else im
        for im in (image0, image1)
    ]
    canvas[:h0, :w0], canvas[:h1, w0:] = rgb
    fig, ax = plt.subplots(figsize=(10, 10 * canvas.shape[0] / canvas.shape[1] + 0.5))
    ax.imshow(canvas)
    if f0.descriptors is not None and f1.descriptors is not None:
        matches, _ = _mutual_matches(f0, f1)
        p0, p1 = f0.keypoints[matches[:, 0]], f1.keypoints[matches[:, 1]]
        ok = reprojection_errors(p0, p1, H) <= threshold
        for good, color in ((False, "r"), (True, "lime")):
            sel = ok == good
            if sel.any():
                xs = np.stack([p0[sel, 0], p1[sel, 0] + w0])
                ys = np.stack([p0[sel, 1], p1[sel, 1]])
                ax.plot(xs, ys, color=color, lw=0.5, alpha=0.7)
        title += f": {int(ok.sum())}/{len(ok)} matches within {threshold:g}px"
    ax.scatter(f0.keypoints[:, 0], f0.keypoints[:, 1], s=1, c="yellow")
    ax.scatter(f1.keypoints[:, 0] + w0, f1.keypoints[:, 1], s=1, c="yellow")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if math.isnan(v) else ("inf" if math.isinf(v) else v)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    return value
