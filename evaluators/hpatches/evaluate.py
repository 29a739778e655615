"""HPatches evaluation: every published protocol as a named preset, from cached features.

``evaluation.py hpatches --data DIR --preset NAME --features TAG`` scores features already
written next to the images (``<seq>/<k>.ppm.<TAG>``, see ``extract.py``); with
``--model sift|orb|CKPT`` the features are first extracted with the preset's image
preprocessing into ``<TAG> = <model>-<preset>`` files (finished ones are skipped), so
re-scoring never re-extracts. Presets (see :data:`PRESETS`; ``--list-presets``):

- ``superpoint``: the SuperPoint paper / pytorch-superpoint protocol. All sequences,
  gray images cropped to the 3:4 aspect ratio (top-left) and resized to 240x320,
  top 1000 keypoints; repeatability@3px and MLE, homography accuracy at 1/3/5 px
  (cross-check matching, OpenCV RANSAC, mean error of the 4 warped corners), NN mAP
  (two-way NN, descriptor distance < 1.2), matching score.
- ``superpoint480``: the same at 480x640 with NMS 8.
- ``d2net``: D2-Net/R2D2. 108 sequences (8 high-resolution ones dropped), full
  resolution, the method's own keypoints; MMA at 1..10 px of mutual-NN matches overall,
  on i and on v; mean #features and #matches.
- ``gluefactory``: glue-factory. 108 sequences, short side 480, 1024 keypoints, mutual
  NN; homography AUC at 1/3/5 px (weighted DLT and robust estimation) and precision at
  1/3 px.

Choices made where the references are ambiguous or need a library we do not use are
recorded in each preset (``labels``, ``ransac_*``) and in the output JSON; ``--set
key=value`` changes a field and renames the preset (``superpoint[labels=ransac]``), so
a number always names its protocol. Outputs (``--out``): ``pairs.json`` (every metric of
every pair), ``summary.json`` (overall, i and v, with the full preset), ``results.md``
(markdown table), PNG plots, and for ``d2net`` a D2-Net-format ``<tag>.npy`` cache;
``--compare NAME=FILE.npy`` adds published D2-Net caches to the MMA plot and table.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from datasets.hpatches import (
    NUM_SEQUENCES_RELEASE,
    adapt_homography,
    find_image,
    image_size,
    list_sequences,
    parse_resize,
    preprocess_image,
    read_homography,
    read_image,
    resize_plan,
    resolve_root,
)
from evaluators.hpatches.metrics import (
    average_precision,
    corner_points,
    error_auc,
    estimate_homography,
    homography_corner_error,
    mma_curve,
    repeatability,
    reprojection_errors,
    shared_view_mask,
    symmetric_reprojection_errors,
    weighted_dlt,
)
from geometry.keypoints import top_k_indices
from geometry.matching import match_similarity, normalize_descriptors, similarity
from utils.errors import UserError, run_cli

# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """One evaluation protocol (see the module docstring for the published ones)."""

    name: str
    protocol: str  # which metrics: superpoint | d2net | gluefactory
    description: str
    reference: str
    exclude: bool  # drop the 8 high-resolution sequences (D2-Net list)
    resize: str  # datasets.hpatches.parse_resize string
    gray: bool
    top_k: int | None  # keypoints kept per image, by score (None: all)
    extractor_conf: dict = field(default_factory=dict)  # passed to the model
    correct_px: float = 3.0  # repeatability / correct-match distance
    homography_eps: tuple[float, ...] = (1.0, 3.0, 5.0)
    ransac_method: str = "ransac"  # evaluators.hpatches.metrics.estimate_homography
    ransac_threshold: float = 3.0
    ransac_confidence: float = 0.995
    ransac_max_iters: int = 2000
    nn_threshold: float = 1.2  # two-way NN distance for NN mAP
    labels: str = "gt"  # correct matches for NN mAP / M. score: gt | ransac
    mma_thresholds: tuple[float, ...] = tuple(float(t) for t in range(1, 16))
    auc_thresholds: tuple[float, ...] = (1.0, 3.0, 5.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, Preset] = {
    "superpoint": Preset(
        name="superpoint",
        protocol="superpoint",
        description="all sequences, gray 240x320, top 1000, conf 0.015, NMS 4",
        reference="SuperPoint (DeTone et al. 2018) / eric-yyjau/pytorch-superpoint",
        exclude=False,
        resize="240x320",
        gray=True,
        top_k=1000,
        extractor_conf={"detection_threshold": 0.015, "nms_radius": 4, "top_k": 1000},
    ),
    "superpoint480": Preset(
        name="superpoint480",
        protocol="superpoint",
        description="all sequences, gray 480x640, top 1000, conf 0.015, NMS 8",
        reference="SuperPoint (DeTone et al. 2018), 480x640 setting",
        exclude=False,
        resize="480x640",
        gray=True,
        top_k=1000,
        extractor_conf={"detection_threshold": 0.015, "nms_radius": 8, "top_k": 1000},
    ),
    "d2net": Preset(
        name="d2net",
        protocol="d2net",
        description="108 sequences, full resolution, method's own keypoints, mutual NN",
        reference="mihaidusmanu/d2-net HPatches-Sequences-Matching-Benchmark (R2D2)",
        exclude=True,
        resize="none",
        gray=False,
        top_k=None,
    ),
    "gluefactory": Preset(
        name="gluefactory",
        protocol="gluefactory",
        description="108 sequences, short side 480, top 1024, mutual NN",
        reference="cvg/glue-factory gluefactory/eval/hpatches.py",
        exclude=True,
        resize="short480",
        gray=False,
        top_k=1024,
        extractor_conf={"top_k": 1024},
        # glue-factory uses PoseLib's LO-RANSAC at 1 px; OpenCV's USAC is the closest
        # estimator available here.
        ransac_method="usac",
        ransac_threshold=1.0,
        ransac_confidence=0.99999,
        ransac_max_iters=10000,
    ),
}

PLOT_MMA_MAX = 10  # MMA curves and tables go to 10 px, the D2-Net plots' range


def apply_overrides(preset: Preset, items: list[str]) -> Preset:
    """Change preset fields from ``key=value`` strings; the name records the change.

    Raises:
        UserError: unknown field (naming the closest) or a value of the wrong type.
    """
    if not items:
        return preset
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    changes: dict[str, Any] = {}
    raw: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise UserError(f"invalid --set {item!r}: expected key=value")
        if key in ("name", "protocol") or key not in fields:
            import difflib

            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"unknown preset field {key!r}{hint}")
        current = getattr(preset, key)
        raw.append(f"{key}={value.strip()}")
        try:
            changes[key] = _parse_like(value, current)
        except (ValueError, json.JSONDecodeError) as err:
            raise UserError(f"invalid --set {key}={value!r}: {err}") from None
    changes["name"] = f"{preset.name}[{','.join(raw)}]"
    new = dataclasses.replace(preset, **changes)
    _validate_preset(new)
    return new


def _parse_like(value: str, current: Any) -> Any:
    text = value.strip()
    if text.lower() in ("none", "null"):
        return None
    if isinstance(current, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError("expected true or false")
        return text.lower() == "true"
    if isinstance(current, int) and not isinstance(current, bool):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, tuple):
        return tuple(float(v) for v in text.strip("()[]").split(",") if v.strip())
    if isinstance(current, dict):
        parsed = json.loads(text)
        if not isinstance(parsed, dict):
            raise ValueError("expected a JSON object")
        return parsed
    if current is None:
        return int(text)
    return text


def _validate_preset(preset: Preset) -> None:
    parse_resize(preset.resize)
    if preset.labels not in ("gt", "ransac"):
        raise UserError(
            f"invalid preset labels {preset.labels!r}: expected gt or ransac"
        )
    if preset.ransac_method not in ("ransac", "usac", "magsac", "lmeds"):
        raise UserError(
            f"invalid preset ransac_method {preset.ransac_method!r}: "
            "expected ransac, usac, magsac or lmeds"
        )


# --------------------------------------------------------------------------- features


@dataclass
class Features:
    """Keypoints (N, 2) float64, scores (N,), unit descriptors (N, D) or None."""

    keypoints: np.ndarray
    scores: np.ndarray | None
    descriptors: torch.Tensor | None


def features_path(image: Path, tag: str, root: Path, features_dir: Path | None) -> Path:
    """``<image>.<tag>`` next to the image, or under ``features_dir`` (same sub-path)."""
    if features_dir is None:
        return image.with_name(f"{image.name}.{tag}")
    return features_dir / image.relative_to(root).parent / f"{image.name}.{tag}"


def load_features(
    path: Path,
    expected_hw: tuple[int, int],
    original_hw: tuple[int, int],
    preset: Preset,
    need_descriptors: bool,
) -> Features:
    """Read and check one feature file for a preset.

    Keypoints must be in the frame the preset evaluates in (``imsize`` equal to
    ``expected_hw``). At full resolution (``resize: none``) features extracted on a
    downscaled image are mapped back to the original frame, since D2-Net lets each
    method pick its own resolution.

    Raises:
        UserError: missing/corrupt file, no ``keypoints``, no ``descriptors`` when the
            preset needs them, inconsistent shapes, or the wrong image size.
    """
    if not path.is_file():
        raise UserError(
            f"{path}: features file is missing (run extract.py or pass --model)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as err:
        raise UserError(
            f"{path}: cannot read features (expected an npz archive; {err})"
        ) from None
    if "keypoints" not in arrays:
        raise UserError(f"{path}: features file has no 'keypoints'")
    kp = np.asarray(arrays["keypoints"], dtype=np.float64)
    if kp.ndim != 2 or kp.shape[1] < 2:
        raise UserError(f"{path}: 'keypoints' must be (N, 2) or (N, 3), got {kp.shape}")
    kp = kp[:, :2]
    n = len(kp)
    scores = arrays.get("scores")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != n:
            raise UserError(f"{path}: {len(scores)} scores for {n} keypoints")
    desc = arrays.get("descriptors")
    if need_descriptors and desc is None:
        raise UserError(f"{path}: features file has no 'descriptors'")
    if desc is not None and (desc.ndim != 2 or len(desc) != n):
        raise UserError(
            f"{path}: 'descriptors' must be (N, D) with N = {n}, got {desc.shape}"
        )
    if "imsize" in arrays:
        w, h = (int(v) for v in np.asarray(arrays["imsize"]).reshape(-1)[:2])
        if (h, w) != tuple(expected_hw):
            if str(parse_resize(preset.resize)) == "none":
                # x_orig = (x + 0.5) * W / w - 0.5 (pixel-centre convention).
                scale = np.array([original_hw[1] / w, original_hw[0] / h])
                kp = (kp + 0.5) * scale - 0.5
            else:
                eh, ew = expected_hw
                raise UserError(
                    f"{path}: features were extracted at {w}x{h} but preset "
                    f"{preset.name} evaluates at {ew}x{eh} (resize {preset.resize}); "
                    f"re-extract with --model and --preset {preset.name}"
                )
    keep = top_k_indices(scores, n, preset.top_k)
    kp = kp[keep]
    scores = scores[keep] if scores is not None else None
    descriptors = normalize_descriptors(desc[keep]) if desc is not None else None
    return Features(kp, scores, descriptors)


# --------------------------------------------------------------------------- scoring


def score_pair(
    preset: Preset,
    f0: Features,
    f1: Features,
    H: np.ndarray,
    shape0: tuple[int, int],
    shape1: tuple[int, int],
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of one pair for the preset's protocol (a flat dict of numbers)."""
    if preset.protocol == "superpoint":
        return _score_superpoint(preset, f0, f1, H, shape0, shape1, seed)
    if preset.protocol == "d2net":
        return _score_d2net(preset, f0, f1, H)
    if preset.protocol == "gluefactory":
        return _score_gluefactory(preset, f0, f1, H, shape0, seed)
    raise ValueError(f"unknown protocol {preset.protocol!r}")


def _mutual_matches(f0: Features, f1: Features) -> tuple[np.ndarray, np.ndarray]:
    sim = similarity(f0.descriptors, f1.descriptors)
    return match_similarity(sim, mutual=True)


def _score_superpoint(preset, f0, f1, H, shape0, shape1, seed) -> dict[str, Any]:
    rep = repeatability(
        f0.keypoints,
        f1.keypoints,
        H,
        shape0,
        shape1,
        preset.correct_px,
        f0.scores,
        f1.scores,
        preset.top_k,
    )
    out: dict[str, Any] = {
        "repeatability": rep["repeatability"],
        "mle": rep["mle"],
        "num_keypoints0": len(f0.keypoints),
        "num_keypoints1": len(f1.keypoints),
    }
    if f0.descriptors is None or f1.descriptors is None:
        nan = float("nan")
        out.update({f"homography@{e:g}px": nan for e in preset.homography_eps})
        out.update(homography_error=nan, nn_map=nan, matching_score=nan, num_matches=0)
        return out
    matches, dist = _mutual_matches(f0, f1)
    pts0, pts1 = f0.keypoints[matches[:, 0]], f1.keypoints[matches[:, 1]]
    ransac = dict(
        method=preset.ransac_method,
        threshold=preset.ransac_threshold,
        confidence=preset.ransac_confidence,
        max_iters=preset.ransac_max_iters,
        seed=seed,
    )
    H_est, inliers = estimate_homography(pts0, pts1, **ransac)
    err = homography_corner_error(H_est, H, corner_points(shape0, "superpoint"))
    out["homography_error"] = err
    for eps in preset.homography_eps:
        out[f"homography@{eps:g}px"] = float(err <= eps)
    reproj = reprojection_errors(pts0, pts1, H)
    n0 = int(shared_view_mask(f0.keypoints, H, shape1).sum())
    n1 = int(shared_view_mask(f1.keypoints, np.linalg.inv(H), shape0).sum())
    if preset.labels == "gt":
        correct = int((reproj <= preset.correct_px).sum())
        denominator = n0 + n1
    else:
        # pytorch-superpoint: RANSAC inliers over all keypoints of image 0 plus those
        # of image 1 that fall inside image 0.
        correct = int(inliers.sum())
        denominator = len(f0.keypoints) + n1
    out["matching_score"] = 2.0 * correct / denominator if denominator else 0.0
    nn = dist < preset.nn_threshold
    if preset.labels == "gt":
        labels = reproj[nn] <= preset.correct_px
    else:
        _, labels = estimate_homography(pts0[nn], pts1[nn], **ransac)
    out["nn_map"] = average_precision(labels, -dist[nn])
    out["num_matches"] = len(matches)
    out["num_nn_matches"] = int(nn.sum())
    return out


def _score_d2net(preset, f0, f1, H) -> dict[str, Any]:
    out: dict[str, Any] = {
        "num_keypoints0": len(f0.keypoints),
        "num_keypoints1": len(f1.keypoints),
    }
    matches, _ = _mutual_matches(f0, f1)
    err = reprojection_errors(
        f0.keypoints[matches[:, 0]], f1.keypoints[matches[:, 1]], H
    )
    for t, value in zip(preset.mma_thresholds, mma_curve(err, preset.mma_thresholds)):
        out[f"mma@{t:g}"] = float(value)
    out["num_matches"] = len(matches)
    return out


def _score_gluefactory(preset, f0, f1, H, shape0, seed) -> dict[str, Any]:
    matches, dist = _mutual_matches(f0, f1)
    pts0, pts1 = f0.keypoints[matches[:, 0]], f1.keypoints[matches[:, 1]]
    corners = corner_points(shape0, "gluefactory")
    # glue-factory weights the DLT by the matcher's scores: here the cosine similarity.
    weights = np.clip(1.0 - dist.astype(np.float64) ** 2 / 2.0, 0.0, None)
    H_dlt = weighted_dlt(pts0, pts1, weights)
    H_rob, inliers = estimate_homography(
        pts0,
        pts1,
        preset.ransac_method,
        preset.ransac_threshold,
        preset.ransac_confidence,
        preset.ransac_max_iters,
        seed,
    )
    sym = symmetric_reprojection_errors(pts0, pts1, H)
    return {
        "H_error_dlt": homography_corner_error(H_dlt, H, corners),
        "H_error_ransac": homography_corner_error(H_rob, H, corners),
        "ransac_inliers": int(inliers.sum()),
        "prec@1px": float((sym < 1).mean()) if len(sym) else 0.0,
        "prec@3px": float((sym < 3).mean()) if len(sym) else 0.0,
        "num_matches": len(matches),
        "num_keypoints": (len(f0.keypoints) + len(f1.keypoints)) / 2.0,
    }


def failed_pair(preset: Preset) -> dict[str, Any]:
    """Metrics of a pair that could not be scored: the worst value of each metric."""
    if preset.protocol == "superpoint":
        out = {"repeatability": 0.0, "mle": float("nan"), "homography_error": math.inf}
        out.update({f"homography@{e:g}px": 0.0 for e in preset.homography_eps})
        out.update(nn_map=0.0, matching_score=0.0, num_matches=0)
        return out
    if preset.protocol == "d2net":
        out = {f"mma@{t:g}": 0.0 for t in preset.mma_thresholds}
        out["num_matches"] = 0
        return out
    return {
        "H_error_dlt": math.inf,
        "H_error_ransac": math.inf,
        "prec@1px": 0.0,
        "prec@3px": 0.0,
        "num_matches": 0,
    }


# --------------------------------------------------------------------------- summary


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


# --------------------------------------------------------------------------- D2-Net caches


class _CacheUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays/scalars and plain containers.

    D2-Net caches are pickled object arrays; a plain ``np.load(allow_pickle=True)`` would
    run whatever a crafted file asks for, so only the classes such a cache needs resolve.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden object {module}.{name}")
        if module.startswith("numpy") and name in ("_reconstruct", "scalar"):
            from numpy._core import multiarray

            return getattr(multiarray, name)
        if module == "numpy":
            return getattr(np, name)
        if module == "collections":
            import collections

            return collections.OrderedDict
        return getattr(__import__("builtins"), name)


def read_d2net_cache(path: str | Path, name: str | None = None) -> dict:
    """Read a D2-Net-format cache: ``(i_err, v_err, [seq_type, n_feats, n_matches])``.

    ``i_err[t]`` sums the per-pair MMA@t over illumination pairs (``v_err`` likewise), so
    MMA@t = (i_err[t] + v_err[t]) / #pairs; the pair counts come from ``seq_type`` (one
    entry per pair), or the D2-Net protocol's 52 i and 56 v sequences when absent.

    Returns:
        ``name``, ``thresholds`` (T,), ``mma`` / ``mma_i`` / ``mma_v`` (T,),
        ``num_features``, ``num_matches``, ``num_pairs_i``, ``num_pairs_v``.

    Raises:
        UserError: unreadable file or not of that structure.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                _, _, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype.hasobject:
                obj = _CacheUnpickler(io.BytesIO(f.read())).load()
            else:
                raise ValueError("holds a plain array, not (i_err, v_err, stats)")
        i_err, v_err, stats = obj[0], obj[1], obj[2]
        thresholds = sorted(float(t) for t in i_err)
        mma_i_sum = np.array([float(i_err[_key(i_err, t)]) for t in thresholds])
        mma_v_sum = np.array([float(v_err[_key(v_err, t)]) for t in thresholds])
        seq_type, n_feats, n_matches = (np.asarray(s) for s in stats)
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError) as err:
        raise UserError(f"{path}: not a D2-Net cache ({err})") from None
    except pickle.UnpicklingError as err:
        raise UserError(f"{path}: not a D2-Net cache ({err})") from None
    if len(seq_type) == len(n_matches) and len(seq_type):
        n_i, n_v = int((seq_type == "i").sum()), int((seq_type == "v").sum())
    else:
        n_i, n_v = 52 * 5, 56 * 5
    n_all = n_i + n_v
    return {
        "name": name or path.stem,
        "thresholds": np.array(thresholds),
        "mma": (mma_i_sum + mma_v_sum) / n_all,
        "mma_i": mma_i_sum / n_i if n_i else np.full(len(thresholds), np.nan),
        "mma_v": mma_v_sum / n_v if n_v else np.full(len(thresholds), np.nan),
        "num_features": float(np.mean(n_feats)) if n_feats.size else float("nan"),
        "num_matches": float(np.sum(n_matches) / n_all) if n_all else float("nan"),
        "num_pairs_i": n_i,
        "num_pairs_v": n_v,
    }


def _key(d: dict, t: float) -> Any:
    for k in d:
        if float(k) == t:
            return k
    raise KeyError(t)


def write_d2net_cache(
    path: Path, records: list[dict], n_feats: list[int], thresholds: tuple[float, ...]
) -> None:
    """Write this run's D2-Net-format cache (readable by the D2-Net notebook)."""
    i_err = {int(t): 0.0 for t in thresholds if float(t).is_integer()}
    v_err = dict(i_err)
    for r in records:
        target = i_err if r["kind"] == "i" else v_err
        for t in target:
            target[t] += r[f"mma@{t:g}"]
    stats = [
        np.array([r["kind"] for r in records]),
        np.array(n_feats, dtype=np.int64),
        np.array([r["num_matches"] for r in records], dtype=np.int64),
    ]
    cache = np.empty(3, dtype=object)
    cache[0], cache[1], cache[2] = i_err, v_err, stats
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, cache, allow_pickle=True)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- outputs


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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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


# --------------------------------------------------------------------------- driver


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
) -> str:
    """Extract features for a preset (skipping finished files); returns the tag."""
    from models.extractor import build_extractor, extractor_options
    from pipelines.extraction import extract_to_files

    # The presets' detection threshold and NMS radius are SuperPoint-family settings; a
    # model that has its own (R2D2) or none (SIFT, ORB) gets only what it understands,
    # and the keypoint budget (top_k) is applied to every model after extraction.
    understood = set(extractor_options(model))
    conf = {k: v for k, v in preset.extractor_conf.items() if k in understood}
    dropped = sorted(set(preset.extractor_conf) - understood)
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
    extract_to_files(
        extractor,
        jobs,
        resize=preset.resize,
        top_k=preset.top_k,
        skip_bad=skip_bad,
        progress=progress,
    )
    return tag


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
        tqdm(names, desc=f"score {preset.name}", disable=not progress)
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
    summary = {
        "preset": preset.to_dict(),
        "preset_name": preset.name,
        "features": tag,
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
    parser = argparse.ArgumentParser(
        prog="evaluation.py hpatches",
        description="Evaluate local features on HPatches with a named protocol preset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data",
        default="data/hpatches_demo",
        help="hpatches-sequences-release folder (or its parent), or a demo set",
    )
    parser.add_argument("--preset", default="superpoint", choices=sorted(PRESETS))
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--features", default=None, help="tag of cached feature files")
    source.add_argument(
        "--model",
        default=None,
        help="sift, orb or a checkpoint: extract (skipping finished files), then score",
    )
    parser.add_argument(
        "--tag", default=None, help="with --model: feature tag (default MODEL-PRESET)"
    )
    parser.add_argument(
        "--features-dir",
        default=None,
        help="feature files live here (<seq>/<image>.<tag>) instead of next to images",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default outputs/hpatches/<tag>-<preset>)",
    )
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="[NAME=]FILE.npy",
        help="D2-Net-format caches to add to the MMA plot and table (--preset d2net)",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="change preset fields (the preset name records it)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="warn and count pairs with bad input as failed",
    )
    parser.add_argument(
        "--num-match-plots", type=int, default=4, help="example match images to draw"
    )
    parser.add_argument("--seed", type=int, default=0, help="RANSAC seed")
    parser.add_argument("--device", default="auto", help="with --model: auto|cpu|cuda")
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
        preset = apply_overrides(PRESETS[args.preset], args.overrides)
        compare = []
        for item in args.compare:
            name, sep, path = item.partition("=")
            compare.append((name, Path(path)) if sep else (Path(item).stem, Path(item)))
        root = resolve_root(args.data)
        tag = args.features
        if args.model:
            tag = export_features(
                args.model,
                root,
                list_sequences(root, exclude=preset.exclude),
                preset,
                args.tag,
                Path(args.features_dir) if args.features_dir else None,
                args.device,
                args.skip_bad,
            )
        out = (
            Path(args.out)
            if args.out
            else Path("outputs/hpatches") / f"{tag}-{preset.name}"
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
