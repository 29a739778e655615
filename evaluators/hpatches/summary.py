"""HPatches summaries: per-pair records reduced to the overall, illumination and viewpoint figures
of a preset.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evaluators.hpatches.metrics import (
    error_auc,
)
from evaluators.hpatches.presets import Preset


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def summarize(preset: Preset, records: list[dict], n_features: dict) -> dict:
    """Overall metrics for all pairs and for the i and v splits.

    Args:
        preset: the protocol.
        records: per-pair dicts (with ``kind``).
        n_features: ``{"all"|"i"|"v": [keypoints per image]}`` (D2-Net's #features).
    """
    out = {}
    for split in ("all", "i", "v"):
        recs = [r for r in records if split == "all" or r["kind"] == split]
        if not recs:
            continue
        s: dict[str, Any] = {"num_pairs": len(recs)}
        if preset.protocol == "superpoint":
            s["repeatability"] = _nanmean([r["repeatability"] for r in recs])
            # Pairs without a repeated point have no MLE (pytorch-superpoint skips them).
            s["mle"] = _nanmean([r["mle"] for r in recs])
            for eps in preset.homography_eps:
                key = f"homography@{eps:g}px"
                s[key] = _nanmean([r[key] for r in recs])
            s["nn_map"] = _nanmean([r["nn_map"] for r in recs])
            s["matching_score"] = _nanmean([r["matching_score"] for r in recs])
            s["num_keypoints"] = _nanmean(
                [
                    (r.get("num_keypoints0", 0) + r.get("num_keypoints1", 0)) / 2
                    for r in recs
                ]
            )
            s["num_matches"] = _nanmean([r["num_matches"] for r in recs])
        elif preset.protocol == "d2net":
            for t in preset.mma_thresholds:
                # A failed pair counts 0, so this is D2-Net's sum / (number of pairs).
                s[f"mma@{t:g}"] = float(np.mean([r[f"mma@{t:g}"] for r in recs]))
            feats = n_features.get(split, [])
            s["num_features"] = float(np.mean(feats)) if feats else float("nan")
            s["num_matches"] = float(np.mean([r["num_matches"] for r in recs]))
        else:
            for key in ("H_error_dlt", "H_error_ransac"):
                aucs = error_auc([r[key] for r in recs], list(preset.auc_thresholds))
                name = key.replace("H_error_", "")
                for t, auc in zip(preset.auc_thresholds, aucs):
                    s[f"auc_{name}@{t:g}px"] = auc
                s[f"maa_{name}"] = float(np.mean(aucs))
            for key in ("prec@1px", "prec@3px", "num_matches", "num_keypoints"):
                values = [r[key] for r in recs if key in r]
                # glue-factory summarises per-pair numbers by their median.
                s[f"median_{key}"] = (
                    float(np.median(values)) if values else float("nan")
                )
                s[f"mean_{key}"] = float(np.mean(values)) if values else float("nan")
        out[split] = s
    return out
