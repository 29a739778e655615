"""HPatches presets: every published protocol as a named, frozen set of choices (sequences,
image preprocessing, keypoint budget, metrics), and ``key=value`` overrides of their fields
(``top_k=500``, ``extractor_conf.nms_radius=8``) that rename the preset so that a number
always names its protocol.
"""

from __future__ import annotations

import dataclasses
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
        """One line of the settings, made from the fields so overrides show in it:
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


# Fields that name a preset rather than set it.
FIXED_FIELDS = ("name", "protocol", "reference")


def apply_overrides(preset: Preset, items: list[str]) -> Preset:
    """Change preset fields from ``key=value`` overrides (the grammar of the
    ``train_*.py`` scripts, ``utils.config.parse_overrides``); the name records the change.

    ``extractor_conf`` is a mapping handed to the model: ``extractor_conf.nms_radius=8``
    or ``extractor_conf={nms_radius: 8}`` add to the preset's (the model checks the keys).

    Raises:
        UserError: unknown field (naming the closest), a fixed field, or a value of the
            wrong type.
    """
    if not items:
        return preset
    from utils.config import deep_update, merge_config, parse_overrides

    tree = parse_overrides(items)
    fixed = sorted(set(tree) & set(FIXED_FIELDS))
    if fixed:
        raise UserError(f"preset field '{fixed[0]}' cannot be overridden")
    current = dataclasses.asdict(preset)
    # An open mapping: its keys are the model's options, checked when it is built.
    defaults = {**current, "extractor_conf": {}}
    changes = merge_config(defaults, tree)
    changes["extractor_conf"] = deep_update(
        preset.extractor_conf, changes["extractor_conf"]
    )
    for key, value in changes.items():
        if isinstance(current[key], tuple):
            if not all(_is_number(v) for v in value):
                raise UserError(f"config key '{key}' expects numbers, got {value!r}")
            changes[key] = tuple(float(v) for v in value)
    if not (changes["top_k"] is None or _is_int(changes["top_k"])):
        raise UserError(
            f"config key 'top_k' expects int or null, got {changes['top_k']!r}"
        )
    raw = [item.strip() for item in items]
    changes["name"] = f"{preset.name}[{','.join(raw)}]"
    new = dataclasses.replace(preset, **changes)
    _validate_preset(new)
    return new


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
