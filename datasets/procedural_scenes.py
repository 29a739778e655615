"""Procedural indoor scenes rendered to metric depth with exact intrinsics (no download).

A scene (``datasets.scene_layout``) is an ordinary room, a long corridor or a hall with
pillars, with door openings (open door leaves, another room or corridor behind them),
closed doors, windows and clutter: cabinets, beds, sofas, tables on legs, round tables,
chairs, bookshelves holding books, bins, plants, lamps, cartons, screens, pictures,
leaning boards and people-sized figures. A camera held like a hand-held, robot or tripod
camera (:data:`CAMERA_PROFILES`: height, pitch and roll) looks into it with a vertical
field of view drawn from a prior (:data:`FOV_PRIORS`), and every pixel's exact z-depth
is the nearest hit of its ray (``datasets.scene_geometry``, all pixels at once in NumPy).
A depth sensor drawn per scene (``datasets.sensor_effects``: ideal, active or stereo)
then adds noise growing with distance and removes returns at edges, at grazing angles,
on dark, shiny and glass surfaces and beyond its range.

The ray of pixel ``(u, v)`` is ``((u - cx) / f, (v - cy) / f, 1)`` in the camera frame,
so its ray parameter *is* the z-depth (``geometry.camera`` states the conventions).

**FOV priors** (vertical field of view, the one this repository uses everywhere):

* ``real`` (default), a mixture matched to the cameras real depth and photos come from:
  45% uniform in 42-62 degrees, RGB-D sensors (Kinect v1 43 degrees by its 57 x 43
  specification; ScanNet's depth camera 45.1, fy 578.7 px at 480 rows; TUM RGB-D 49.1,
  fy 525; NYU Depth v2 49.5, fy 519.5; Intel RealSense D435 depth 58, 87 x 58 by its
  datasheet; Kinect v2 depth 60, 70.6 x 60); 30% uniform in 48-70 degrees, phone main
  cameras (26-28 mm full-frame equivalent: 50-53 degrees across the short side of a
  4:3 picture, 65-69 across the long side, held upright); 25% uniform in 24-42 degrees,
  photographs through 32-55 mm equivalent lenses (35 mm: 37.8 degrees, 50 mm: 27.0
  across the short side of the 24 x 36 mm frame), such as the Middlebury 2014 stereo
  rig (28.2 degrees for its Motorcycle scene);
* ``wide``: uniform in 40-100 degrees (:data:`FOV_RANGE_DEG`), wider than most real
  cameras.

A scene is a pure function of ``(seed, index)`` and its settings:
``render_procedural(index, seed, height, width, fov_prior, sensor)``; the layout and the
camera come from one random stream and the sensor from another, so ``sensor=False``
renders the same view without sensor effects.

    python -m datasets.procedural_scenes --show --out procedural.png
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datasets.scene_geometry import cast_rays
from datasets.scene_layout import random_layout
from datasets.sensor_effects import NO_EFFECTS, apply_sensor, random_sensor
from geometry.camera import fov_to_focal, intrinsics_matrix
from utils.arguments import ArgumentParser
from utils.errors import UserError, run_cli

FOV_RANGE_DEG = (40.0, 100.0)
# (weight, low, high) components of each prior, vertical degrees (module docstring).
FOV_PRIORS = {
    "real": ((0.45, 42.0, 62.0), (0.30, 48.0, 70.0), (0.25, 24.0, 42.0)),
    "wide": ((1.0, *FOV_RANGE_DEG),),
}
# weight, height range (m), pitch (mean, sd, low, high), roll (sd, limit), degrees.
CAMERA_PROFILES = {
    "handheld": (0.5, (1.1, 1.8), (-12.0, 12.0, -50.0, 25.0), (5.0, 20.0)),
    "robot": (0.25, (0.25, 1.2), (-5.0, 8.0, -30.0, 20.0), (1.5, 5.0)),
    "tripod": (0.25, (0.6, 1.7), (-8.0, 10.0, -40.0, 20.0), (2.0, 8.0)),
}
UP = np.array([0.0, 1.0, 0.0])


def _pick(rng: np.random.Generator, weights: list[float]) -> int:
    weights = np.asarray(weights, np.float64)
    return int(rng.choice(len(weights), p=weights / weights.sum()))


def draw_fov(rng: np.random.Generator, prior: str) -> float:
    """A vertical field of view (degrees) from ``FOV_PRIORS[prior]``."""
    if prior not in FOV_PRIORS:
        raise UserError(f"FOV prior '{prior}' is not one of {sorted(FOV_PRIORS)}")
    components = FOV_PRIORS[prior]
    _, low, high = components[_pick(rng, [c[0] for c in components])]
    return float(rng.uniform(low, high))


def _clipped_normal(rng, mean, sd, low, high) -> float:
    return float(np.clip(rng.normal(mean, sd), low, high))


def camera_frame(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``(3, 3)`` world-from-camera rotation (columns: camera x right, y down, z forward)
    of a camera turned by ``yaw`` about the vertical, tilted up by ``pitch`` and rolled
    by ``roll`` (radians)."""
    forward = np.array(
        [
            math.cos(pitch) * math.sin(yaw),
            math.sin(pitch),
            math.cos(pitch) * math.cos(yaw),
        ]
    )
    right = np.cross(forward, UP)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    right, down = (
        math.cos(roll) * right + math.sin(roll) * down,
        -math.sin(roll) * right + math.cos(roll) * down,
    )
    return np.stack([right, down, forward], axis=1)


def random_scene(rng: np.random.Generator, fov_prior: str = "real") -> dict[str, Any]:
    """A random interior and a camera inside it (world frame, metres, y up).

    Returns:
        ``scene`` (:class:`datasets.scene_geometry.Scene`), ``kind`` (room kind),
        ``camera`` (profile name), ``camera_position (3,)``, ``world_from_camera (3, 3)``
        and ``fov_deg`` (vertical).
    """
    layout = random_layout(rng)
    size, spot = layout["size"], layout["camera_xz"]
    names = list(CAMERA_PROFILES)
    profile = names[_pick(rng, [p[0] for p in CAMERA_PROFILES.values()])]
    _, heights, pitch_law, (roll_sd, roll_max) = CAMERA_PROFILES[profile]
    height = rng.uniform(heights[0], min(heights[1], size[1] - 0.3))
    position = np.array([spot[0], height, spot[1]])
    fov = draw_fov(rng, fov_prior)
    # Look towards a point of the room a few metres away (a corridor's far end), and
    # turn away from views that a near surface fills.
    probe = np.stack(
        np.meshgrid(np.linspace(-0.4, 0.4, 7), np.linspace(-0.3, 0.3, 5)), -1
    )
    probe = np.concatenate([probe.reshape(-1, 2), np.ones((35, 1))], 1)
    for attempt in range(6):
        target = layout["look_at"] if attempt == 0 else None
        if target is None:
            for _ in range(20):
                target = rng.uniform([0.0, 0.0, 0.0], size)
                if np.hypot(*(target - position)[[0, 2]]) > 1.5:
                    break
        yaw = math.atan2(target[0] - position[0], target[2] - position[2])
        yaw += rng.uniform(-0.3, 0.3)
        pitch = math.radians(_clipped_normal(rng, *pitch_law))
        roll = math.radians(_clipped_normal(rng, 0.0, roll_sd, -roll_max, roll_max))
        rotation = camera_frame(yaw, pitch, roll)
        t, _, _ = cast_rays(position, probe @ rotation.T, layout["scene"])
        if np.median(t) > 1.0:
            break
    return {
        "scene": layout["scene"],
        "kind": layout["kind"],
        "camera": profile,
        "camera_position": position,
        "world_from_camera": rotation,
        "fov_deg": fov,
    }


def camera_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H * W, 3)`` camera-frame rays ``((u - cx) / fx, (v - cy) / fy, 1)``, row-major."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack(
        [(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1
    )
    return rays.reshape(-1, 3)


def render(scene: dict[str, Any], height: int, width: int) -> dict[str, np.ndarray]:
    """Render exact metric depth, a shaded RGB image, the surface index and normal maps.

    Returns:
        ``depth (H, W)`` float32 z-depth in metres (0 where nothing is hit), ``K (3, 3)``
        float64, ``rgb (H, W, 3)`` uint8, ``surface (H, W)`` int32 surface index (-1:
        none), ``normal (H, W, 3)`` float32 world-frame unit normals facing the camera
        and ``incidence (H, W)`` float32 angle between ray and normal (radians).
    """
    focal = fov_to_focal(scene["fov_deg"], height)
    K = intrinsics_matrix(focal, focal, (width - 1) / 2.0, (height - 1) / 2.0)
    rays = camera_rays(K, height, width)
    world = rays @ scene["world_from_camera"].T
    t, index, normal = cast_rays(scene["camera_position"], world, scene["scene"])
    hit = index >= 0
    depth = np.where(hit, t, 0.0)
    unit = world / np.linalg.norm(world, axis=1, keepdims=True)
    facing = np.clip(-(unit * normal).sum(1), 0.0, 1.0)
    light = np.array([0.3, 0.8, 0.5]) / np.linalg.norm([0.3, 0.8, 0.5])
    shade = 0.35 + 0.4 * np.abs(normal @ light) + 0.25 * facing
    points = scene["camera_position"] + world * depth[:, None]
    checker = (np.floor(points[:, 0] * 2) + np.floor(points[:, 2] * 2)) % 2
    shade *= np.where(normal[:, 1] > 0.99, 0.85 + 0.15 * checker, 1.0)
    color = scene["scene"].color[np.maximum(index, 0)] * shade[:, None]
    rgb = np.where(hit[:, None], color, 0.0)
    shape = (height, width)
    return {
        "depth": depth.reshape(shape).astype(np.float32),
        "K": K,
        "rgb": (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8).reshape(*shape, 3),
        "surface": index.reshape(shape).astype(np.int32),
        "normal": normal.reshape(*shape, 3).astype(np.float32),
        "incidence": np.arccos(facing).reshape(shape).astype(np.float32),
    }


def render_procedural(
    index: int,
    seed: int,
    height: int = 192,
    width: int = 256,
    fov_prior: str = "real",
    sensor: bool = True,
) -> dict[str, Any]:
    """Scene ``index`` of stream ``seed`` seen by its sensor.

    Returns:
        :func:`render`'s maps with ``depth`` the sensor's (0: no return) and
        ``exact_depth`` the rendered one, plus ``scene`` (:func:`random_scene`) and
        ``sensor`` (its settings; ``sensor=False`` gives the ideal one).
    """
    if height < 8 or width < 8:
        raise UserError(f"procedural image size {height}x{width} is below 8x8")
    scene = random_scene(np.random.default_rng([seed, index]), fov_prior)
    out = render(scene, height, width)
    rng = np.random.default_rng([seed, index, 1])
    settings = random_sensor(rng) if sensor else dict(NO_EFFECTS)
    material = scene["scene"].material[np.maximum(out["surface"], 0)]
    measured = apply_sensor(out["depth"], out["incidence"], material, settings, rng)
    # A sensor that misses nearly everything (a view into a window) teaches nothing:
    # keep its noise, drop its holes.
    if (measured > 0).mean() < 0.3:
        measured = np.where(out["depth"] > 0, out["depth"], 0).astype(np.float32)
    return {
        **out,
        "exact_depth": out["depth"],
        "depth": measured,
        "scene": scene,
        "sensor": settings,
    }


def _depth_colors(depth: np.ndarray, top: float) -> np.ndarray:
    """BGR colour map of ``depth`` over [0, ``top``]; missing returns black."""
    scaled = np.clip(depth / max(top, 1e-6) * 255, 0, 255).astype(np.uint8)
    image = cv2.applyColorMap(scaled, cv2.COLORMAP_MAGMA)
    image[depth <= 0] = 0
    return image


def show_grid(
    count: int,
    seed: int,
    height: int,
    width: int,
    fov_prior: str = "real",
    per_row: int = 6,
) -> np.ndarray:
    """BGR grid of scenes, ``per_row`` to a row: each tile is the RGB image above the
    exact depth and the sensor's depth (missing returns black, same colour scale),
    labelled with the room kind, camera profile, sensor and vertical FOV."""
    tiles = []
    for index in range(count):
        sample = render_procedural(index, seed, height, width, fov_prior)
        top = float(sample["exact_depth"].max())
        tile = np.concatenate(
            [
                cv2.cvtColor(sample["rgb"], cv2.COLOR_RGB2BGR),
                _depth_colors(sample["exact_depth"], top),
                _depth_colors(sample["depth"], top),
            ],
            axis=0,
        )
        scene = sample["scene"]
        lines = (
            f"{scene['kind']} {scene['camera']}",
            f"{sample['sensor']['kind']} fov {scene['fov_deg']:.0f}",
        )
        for row, text in enumerate(lines):
            cv2.putText(
                tile,
                text,
                (3, 12 + 12 * row),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.35,
                (255, 255, 255),
            )
        tiles.append(np.pad(tile, ((2, 2), (2, 2), (0, 0))))
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (-len(tiles) % per_row)
    rows = [
        np.concatenate(tiles[i : i + per_row], axis=1)
        for i in range(0, len(tiles), per_row)
    ]
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> int:
    """``python -m datasets.procedural_scenes --show``: write a PNG of rendered scenes."""
    parser = ArgumentParser(
        prog="python -m datasets.procedural_scenes",
        description="Render procedural scenes into one PNG: per scene the RGB image, "
        "the exact depth and the sensor's depth (missing returns black).",
    )
    parser.add_argument("--show", action="store_true", help="write the sample grid")
    parser.add_argument("--count", type=int, default=12, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0, help="scene stream")
    parser.add_argument("--size", default="96,128", help="image size H,W")
    parser.add_argument(
        "--fov-prior",
        default="real",
        choices=sorted(FOV_PRIORS),
        help="vertical field-of-view prior (real: cameras of real data; wide: 40-100)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("procedural.png"), help="PNG to write"
    )
    args = parser.parse_args(argv)

    def run() -> int:
        if not args.show:
            parser.print_help()
            return 0
        from utils.io import atomic_write_image

        if args.count < 1:
            raise UserError(f"--count must be >= 1, got {args.count}")
        height, width = parse_size(args.size, "--size")
        grid = show_grid(args.count, args.seed, height, width, args.fov_prior)
        atomic_write_image(args.out, grid)
        print(f"wrote {args.out}")
        return 0

    return run_cli(run, "python -m datasets.procedural_scenes")


def parse_size(text: str, option: str) -> tuple[int, int]:
    """``"H,W"`` to ``(H, W)``, both >= 8."""
    try:
        height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{option} '{text}' is not H,W (two integers)") from None
    if height < 8 or width < 8:
        raise UserError(f"{option} '{text}': both sides must be >= 8")
    return height, width


if __name__ == "__main__":
    sys.exit(main())
