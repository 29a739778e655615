"""HPatches presets: every published protocol as a named, frozen set of choices (sequences,
image preprocessing, keypoint budget, metrics), and ``--set key=value`` overrides that rename the
preset so that a number always names its protocol.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from datasets.hpatches import (
    parse_resize,
)
from utils.errors import UserError


@dataclass(frozen=True)
class Preset:
    """One evaluation protocol (see the module docstring for the published ones)."""

    name: str
    protocol: str  # which metrics: superpoint | d2net | gluefactory
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

    @property
    def description(self) -> str:
        """One line of the settings, made from the fields so ``--set`` shows in it:
        ``all sequences, gray 240x320, top 1000, conf 0.015, NMS 4``."""
        resize = parse_resize(self.resize)
        image = {
            "none": "full resolution",
            "crop_resize": str(resize),
            "short_side": f"short side {resize.size}",
            "max_size": f"long side <= {resize.size}",
        }[resize.mode]
        parts = [
            "108 sequences" if self.exclude else "all sequences",
            f"gray {image}" if self.gray else image,
            f"top {self.top_k}" if self.top_k else "method's own keypoints",
        ]
        conf = self.extractor_conf
        if "detection_threshold" in conf:
            parts.append(f"conf {conf['detection_threshold']:g}")
        if "nms_radius" in conf:
            parts.append(f"NMS {conf['nms_radius']}")
        if self.protocol != "superpoint":
            parts.append("mutual NN")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        """Every field and the description, for the JSON outputs."""
        return {**dataclasses.asdict(self), "description": self.description}


PRESETS: dict[str, Preset] = {
    "superpoint": Preset(
        name="superpoint",
        protocol="superpoint",
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
        reference="mihaidusmanu/d2-net HPatches-Sequences-Matching-Benchmark (R2D2)",
        exclude=True,
        resize="none",
        gray=False,
        top_k=None,
    ),
    "gluefactory": Preset(
        name="gluefactory",
        protocol="gluefactory",
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
