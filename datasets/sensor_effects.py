"""What a depth sensor makes of an exact depth map: noise, missing returns, range limits.

Each procedural scene draws a sensor (:func:`random_sensor`); :func:`apply_sensor` turns
its exact z-depth into what that sensor would return:

* ``ideal`` (a rendered mesh, as 3D Ken Burns, Taskonomy or Replica give): exact depth;
* ``active`` (structured light or time of flight: Kinect v1/v2, PrimeSense/Structure as
  in ScanNet, RealSense): axial noise growing with distance and incidence angle, the
  Kinect model of Nguyen, Izadi and Lovell (3DIMPVT 2012),
  ``sigma(z, theta) = 0.0012 + 0.0019 (z - 0.4)^2 + 0.0001 / sqrt(z) * theta^2 /
  (pi/2 - theta)^2`` metres, scaled per scene by ``noise_scale``; no return beyond a
  maximum range (3.5-8 m) or below 0.4 m, on the far side of depth edges (the
  projector's shadow), at grazing angles, on dark, shiny and glass surfaces (in blobs),
  and in scattered pixels;
* ``stereo`` (passive or active stereo): noise of a constant disparity error,
  ``sigma = noise_scale * z^2`` (``noise_scale`` in 1/m), missing returns in wider bands
  along the left side of occluding edges (occlusions), on shiny and glass surfaces,
  and a longer range.

Missing returns are 0. The effects are a pure function of the scene's random stream.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from datasets.scene_geometry import MATERIALS

SENSORS = {"ideal": 0.3, "active": 0.5, "stereo": 0.2}
NO_EFFECTS = {
    "kind": "ideal",
    "noise_scale": 0.0,
    "min_range": 0.0,
    "max_range": math.inf,
    "edge_drop": 0.0,
    "edge_width": 0,
    "grazing_drop": 0.0,
    "dark_drop": 0.0,
    "shiny_drop": 0.0,
    "glass_drop": 0.0,
    "speckle": 0.0,
}


# Per-scene settings of the noisy sensor kinds, drawn in this order: a ``(low, high)`` pair
# is a uniform float, a ``range`` a uniform integer, anything else a constant.
SENSOR_SETTINGS: dict[str, dict[str, Any]] = {
    "active": {
        "noise_scale": (0.5, 2.0),
        "min_range": 0.4,
        "max_range": (3.5, 8.0),
        "edge_drop": (0.3, 0.9),
        "edge_width": range(1, 3),
        "grazing_drop": (0.2, 0.8),
        "dark_drop": (0.3, 0.9),
        "shiny_drop": (0.3, 0.9),
        "glass_drop": (0.85, 1.0),
        "speckle": (0.0, 0.01),
    },
    "stereo": {
        "noise_scale": (0.002, 0.01),
        "min_range": 0.3,
        "max_range": (8.0, 20.0),
        "edge_drop": (0.5, 1.0),
        "edge_width": range(1, 5),
        "grazing_drop": (0.0, 0.3),
        "dark_drop": (0.0, 0.5),
        "shiny_drop": (0.3, 0.8),
        "glass_drop": (0.7, 1.0),
        "speckle": (0.0, 0.01),
    },
}


def random_sensor(rng: np.random.Generator) -> dict[str, Any]:
    """A sensor drawn from :data:`SENSORS` with its per-scene settings
    (:data:`SENSOR_SETTINGS`)."""
    kinds = list(SENSORS)
    kind = kinds[int(rng.choice(len(kinds), p=list(SENSORS.values())))]
    if kind == "ideal":
        return dict(NO_EFFECTS)
    sensor: dict[str, Any] = {"kind": kind}
    for key, spec in SENSOR_SETTINGS[kind].items():
        if isinstance(spec, range):
            sensor[key] = int(rng.integers(spec.start, spec.stop))
        elif isinstance(spec, tuple):
            sensor[key] = float(rng.uniform(*spec))
        else:
            sensor[key] = spec
    return sensor


def axial_sigma(depth: np.ndarray, incidence: np.ndarray, sensor: dict) -> np.ndarray:
    """Standard deviation (metres) of the depth noise at ``depth`` (m), ``incidence``
    (radians between the ray and the surface normal), for ``sensor``."""
    if sensor["kind"] == "stereo":
        return sensor["noise_scale"] * depth**2
    theta = np.minimum(incidence, math.radians(80.0))
    base = 0.0012 + 0.0019 * (depth - 0.4) ** 2
    slant = (
        0.0001 / np.sqrt(np.maximum(depth, 1e-6)) * theta**2 / (np.pi / 2 - theta) ** 2
    )
    return sensor["noise_scale"] * (base + slant)


def _blobs(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """``(H, W)`` noise varying smoothly over ``cell`` pixels, uniform in [0, 1) pixel by
    pixel (ranks of a smooth field), so ``blobs < p`` drops a share ``p`` in blobs."""
    coarse = rng.uniform(size=(height // cell + 2, width // cell + 2)).astype(
        np.float32
    )
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    ranks = np.empty(smooth.size)
    ranks[np.argsort(smooth, axis=None, kind="stable")] = np.arange(smooth.size)
    return (ranks / smooth.size).reshape(height, width)


def far_side_of_edges(depth: np.ndarray, width: int, left_only: bool) -> np.ndarray:
    """``(H, W)`` bool: pixels on the far side of a depth edge, widened by ``width``.

    An edge is a jump between 4-neighbours larger than ``0.05 + 0.03 z``; with
    ``left_only`` only the band to the left of an occluding edge is marked (a stereo
    rig's occlusions, left camera as reference).
    """
    marks = np.zeros(depth.shape, bool)
    for axis in (1,) if left_only else (0, 1):
        a = depth if axis == 1 else depth.T
        m = marks if axis == 1 else marks.T  # a view: marks are written through it
        left, right = a[:, :-1], a[:, 1:]
        jump = np.abs(right - left) > 0.05 + 0.03 * np.minimum(left, right)
        m[:, :-1] |= jump & (left > right)
        if not left_only:
            m[:, 1:] |= jump & (right > left)
    if width > 1:
        kernel = np.ones((1, width), np.uint8)
        if left_only:  # grow the band leftwards only
            kernel = np.zeros((1, 2 * width - 1), np.uint8)
            kernel[0, width - 1 :] = 1
        marks = cv2.dilate(marks.astype(np.uint8), kernel).astype(bool)
    return marks


def apply_sensor(
    depth: np.ndarray,
    incidence: np.ndarray,
    material: np.ndarray,
    sensor: dict[str, Any],
    rng: np.random.Generator,
) -> np.ndarray:
    """The depth ``sensor`` returns for an exact ``depth``.

    Args:
        depth: ``(H, W)`` exact z-depth (m), 0 where nothing was hit.
        incidence: ``(H, W)`` angle (radians) between each pixel's ray and the surface.
        material: ``(H, W)`` int material of the surface hit (:data:`MATERIALS`).
        sensor: settings from :func:`random_sensor`.
        rng: the scene's sensor stream.

    Returns:
        ``(H, W)`` float32 measured depth, 0 where the sensor has no return.
    """
    height, width = depth.shape
    hit = depth > 0
    sigma = axial_sigma(depth, incidence, sensor)
    measured = depth + sigma * rng.standard_normal(depth.shape)
    drop = np.zeros(depth.shape, np.float64)
    blobs = _blobs(rng, height, width, max(2, height // 16))
    fine = rng.uniform(size=depth.shape)
    if sensor["edge_drop"] > 0:
        edges = far_side_of_edges(
            depth, sensor["edge_width"], left_only=sensor["kind"] == "stereo"
        )
        drop = np.where(edges, sensor["edge_drop"], drop)
    grazing = incidence > math.radians(75.0)
    drop = np.maximum(drop, np.where(grazing, sensor["grazing_drop"], 0.0))
    # Dark surfaces return less light the farther they are.
    far = np.clip((depth - 1.0) / 3.0, 0.3, 1.0)
    surface_drop = np.select(
        [
            material == MATERIALS["dark"],
            material == MATERIALS["shiny"],
            material == MATERIALS["glass"],
        ],
        [sensor["dark_drop"] * far, sensor["shiny_drop"], sensor["glass_drop"]],
        0.0,
    )
    missing = (fine < drop) | (blobs < surface_drop) | (fine < sensor["speckle"])
    missing |= (depth > sensor["max_range"]) | (depth < sensor["min_range"]) | ~hit
    missing |= measured <= 0
    return np.where(missing, 0.0, measured).astype(np.float32)
