"""Procedural indoor scenes rendered to metric depth with exact intrinsics (no download).

A scene is a room (floor, ceiling, four walls) holding boxes standing on the floor (tables,
cabinets, beds), boxes on the walls (shelves, frames) and free slanted panels. Every
surface is a rectangle; a camera with a random position, heading, pitch, roll and a
vertical field of view drawn in [40, 100] degrees looks at it, and the depth of each pixel
is the nearest ray-rectangle intersection, computed for all pixels and rectangles at once
in NumPy. The ray of pixel ``(u, v)`` is ``((u - cx) / f, (v - cy) / f, 1)`` in the camera
frame, so its ray parameter *is* the z-depth (see ``geometry.camera`` for conventions).

A scene is a pure function of ``(seed, index)``: ``render_procedural(index, seed, ...)``.

    python -m datasets.procedural_scenes --show --out procedural.png
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from geometry.camera import fov_to_focal, intrinsics_matrix
from utils.arguments import ArgumentParser
from utils.errors import UserError, run_cli

FOV_RANGE_DEG = (40.0, 100.0)
UP = np.array([0.0, 1.0, 0.0])


@dataclass
class Rectangles:
    """Planar rectangles in world coordinates (y up), ``R`` of them.

    Attributes:
        center: ``(R, 3)`` centres.
        axes: ``(R, 2, 3)`` unit in-plane axes.
        half: ``(R, 2)`` half extents along ``axes``.
        normal: ``(R, 3)`` unit normals (``axes[:, 0] x axes[:, 1]``).
        color: ``(R, 3)`` RGB in [0, 1].
    """

    center: np.ndarray
    axes: np.ndarray
    half: np.ndarray
    normal: np.ndarray
    color: np.ndarray

    def __len__(self) -> int:
        return len(self.center)


def _box_faces(
    center: np.ndarray, half: np.ndarray, yaw: float, color: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The six faces ``(centre, axes (2, 3), half (2,), colour)`` of a box turned by ``yaw``."""
    c, s = math.cos(yaw), math.sin(yaw)
    frame = np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])  # rows: box x, y, z
    faces = []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        for sign in (-1.0, 1.0):
            faces.append(
                (
                    center + sign * half[axis] * frame[axis],
                    frame[others],
                    half[others],
                    color,
                )
            )
    return faces


def _rectangles(faces: list) -> Rectangles:
    center = np.array([f[0] for f in faces], np.float64)
    axes = np.array([f[1] for f in faces], np.float64)
    half = np.array([f[2] for f in faces], np.float64)
    normal = np.cross(axes[:, 0], axes[:, 1])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    color = np.array([f[3] for f in faces], np.float64)
    return Rectangles(center, axes, half, normal, color)


def random_scene(rng: np.random.Generator) -> dict[str, Any]:
    """A random room with furniture and a camera inside it (world frame, metres, y up).

    Returns:
        ``rectangles`` (:class:`Rectangles`), ``camera_position (3,)``,
        ``world_from_camera (3, 3)`` (columns: camera x right, y down, z forward) and
        ``fov_deg`` (vertical).
    """
    size = np.array(
        [rng.uniform(3.0, 8.0), rng.uniform(2.4, 3.5), rng.uniform(3.0, 8.0)]
    )
    wall_colors = rng.uniform(0.35, 0.95, (6, 3))
    faces = _box_faces(size / 2, size / 2, 0.0, np.zeros(3))
    faces = [(c, a, h, wall_colors[i]) for i, (c, a, h, _) in enumerate(faces)]

    position = np.array(
        [
            rng.uniform(0.5, size[0] - 0.5),
            rng.uniform(0.8, min(2.0, size[1] - 0.3)),
            rng.uniform(0.5, size[2] - 0.5),
        ]
    )
    obstacles: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(rng.integers(3, 13)):
        kind = rng.uniform()
        if kind < 0.6:  # furniture standing on the floor
            half = np.array(
                [rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.1), rng.uniform(0.2, 1.0)]
            )
            center = np.array(
                [rng.uniform(0, size[0]), half[1], rng.uniform(0, size[2])]
            )
            yaw = rng.uniform(0, math.pi)
        else:  # shelf or frame against a wall
            half = np.array(
                [rng.uniform(0.2, 1.2), rng.uniform(0.05, 0.6), rng.uniform(0.02, 0.25)]
            )
            wall = rng.integers(4)
            along = rng.uniform(0.5, (size[0] if wall < 2 else size[2]) - 0.5)
            height = rng.uniform(0.8, size[1] - 0.3)
            if wall == 0:
                center, yaw = np.array([along, height, half[2]]), 0.0
            elif wall == 1:
                center, yaw = np.array([along, height, size[2] - half[2]]), 0.0
            elif wall == 2:
                center, yaw = np.array([half[2], height, along]), math.pi / 2
            else:
                center, yaw = np.array([size[0] - half[2], height, along]), math.pi / 2
        # Keep the camera out of (and not touching) every box: reject boxes around it.
        c, s = math.cos(yaw), math.sin(yaw)
        frame = np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
        local = frame @ (position - center)
        if np.all(np.abs(local) < half + 0.35):
            continue
        obstacles.append((center, half, yaw))
        faces += _box_faces(center, half, yaw, rng.uniform(0.15, 0.95, 3))

    for _ in range(rng.integers(0, 3)):  # free slanted panels
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        first = np.cross(normal, rng.normal(size=3))
        first /= np.linalg.norm(first)
        axes = np.stack([first, np.cross(normal, first)])
        center = rng.uniform([0.3, 0.2, 0.3], size - [0.3, 0.2, 0.3])
        if abs(normal @ (position - center)) < 0.4:
            continue
        faces.append(
            (center, axes, rng.uniform(0.2, 0.8, 2), rng.uniform(0.15, 0.95, 3))
        )

    # Look towards a random point of the room a few metres away, so views hold corners,
    # floor and furniture rather than a wall filling the frame.
    for _ in range(20):
        target = rng.uniform([0.0, 0.0, 0.0], size)
        if np.hypot(*(target - position)[[0, 2]]) > 1.5:
            break
    yaw = math.atan2(target[0] - position[0], target[2] - position[2])
    yaw += rng.uniform(-0.3, 0.3)
    pitch = math.radians(rng.uniform(-30.0, 20.0))
    roll = math.radians(rng.uniform(-10.0, 10.0))
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
    return {
        "rectangles": _rectangles(faces),
        "camera_position": position,
        "world_from_camera": np.stack([right, down, forward], axis=1),
        "fov_deg": float(rng.uniform(*FOV_RANGE_DEG)),
    }


def camera_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H * W, 3)`` camera-frame rays ``((u - cx) / fx, (v - cy) / fy, 1)``, row-major."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack(
        [(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1
    )
    return rays.reshape(-1, 3)


def intersect(
    origin: np.ndarray, directions: np.ndarray, rect: Rectangles
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest ray-rectangle hits of rays from one origin.

    Args:
        origin: ``(3,)`` ray origin.
        directions: ``(P, 3)`` ray directions (not necessarily unit).
        rect: ``R`` rectangles.

    Returns:
        ``t (P,)`` ray parameter of the nearest hit (``inf`` when none) and
        ``index (P,)`` the rectangle hit (-1 when none).
    """
    denom = directions @ rect.normal.T  # (P, R)
    reach = ((rect.center - origin) * rect.normal).sum(-1)  # (R,)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = reach[None] / denom
    t = np.where(np.isfinite(t) & (t > 1e-9), t, np.inf)
    # In-plane coordinates of each hit point, relative to the rectangle centre.
    rel0 = origin - rect.center  # (R, 3)
    for k in range(2):
        axis = rect.axes[:, k]  # (R, 3)
        coord = (rel0 * axis).sum(-1)[None] + t * (directions @ axis.T)
        with np.errstate(invalid="ignore"):
            t = np.where(np.abs(coord) <= rect.half[None, :, k], t, np.inf)
    index = np.argmin(t, axis=1)
    nearest = t[np.arange(len(t)), index]
    return nearest, np.where(np.isfinite(nearest), index, -1)


def render(scene: dict[str, Any], height: int, width: int) -> dict[str, np.ndarray]:
    """Render metric depth, a shaded RGB image and the surface index map.

    Returns:
        ``depth (H, W)`` float32 z-depth in metres (0 where nothing is hit), ``K (3, 3)``
        float64, ``rgb (H, W, 3)`` uint8, ``surface (H, W)`` int32 rectangle index (-1: none).
    """
    focal = fov_to_focal(scene["fov_deg"], height)
    K = intrinsics_matrix(focal, focal, (width - 1) / 2.0, (height - 1) / 2.0)
    rays = camera_rays(K, height, width)
    world = rays @ scene["world_from_camera"].T
    t, index = intersect(scene["camera_position"], world, scene["rectangles"])
    hit = index >= 0
    depth = np.where(hit, t, 0.0)

    rect = scene["rectangles"]
    normal = rect.normal[np.maximum(index, 0)]
    unit = world / np.linalg.norm(world, axis=1, keepdims=True)
    light = np.array([0.3, 0.8, 0.5]) / np.linalg.norm([0.3, 0.8, 0.5])
    shade = 0.35 + 0.4 * np.abs(normal @ light) + 0.25 * np.abs((unit * normal).sum(1))
    points = scene["camera_position"] + world * depth[:, None]
    checker = (np.floor(points[:, 0] * 2) + np.floor(points[:, 2] * 2)) % 2
    shade *= np.where(np.abs(normal[:, 1]) > 0.99, 0.85 + 0.15 * checker, 1.0)
    color = rect.color[np.maximum(index, 0)] * shade[:, None]
    rgb = np.where(hit[:, None], color, 0.0)
    return {
        "depth": depth.reshape(height, width).astype(np.float32),
        "K": K,
        "rgb": (np.clip(rgb, 0, 1) * 255)
        .round()
        .astype(np.uint8)
        .reshape(height, width, 3),
        "surface": index.reshape(height, width).astype(np.int32),
    }


def render_procedural(
    index: int, seed: int, height: int = 192, width: int = 256
) -> dict[str, Any]:
    """Scene ``index`` of stream ``seed``: :func:`render` of :func:`random_scene` plus the scene."""
    if height < 8 or width < 8:
        raise UserError(f"procedural image size {height}x{width} is below 8x8")
    rng = np.random.default_rng([seed, index])
    scene = random_scene(rng)
    return {**render(scene, height, width), "scene": scene}


def show_grid(count: int, seed: int, height: int, width: int) -> np.ndarray:
    """BGR grid: each scene's RGB above its colour-mapped depth, with its FOV."""
    tiles = []
    for index in range(count):
        sample = render_procedural(index, seed, height, width)
        depth = sample["depth"]
        scaled = np.clip(depth / max(float(depth.max()), 1e-6) * 255, 0, 255)
        depth_bgr = cv2.applyColorMap(scaled.astype(np.uint8), cv2.COLORMAP_MAGMA)
        tile = np.concatenate(
            [cv2.cvtColor(sample["rgb"], cv2.COLOR_RGB2BGR), depth_bgr], axis=0
        )
        label = f"fov {sample['scene']['fov_deg']:.0f}"
        cv2.putText(
            tile, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255)
        )
        tiles.append(tile)
    return np.concatenate(tiles, axis=1)


def main(argv: list[str] | None = None) -> int:
    """``python -m datasets.procedural_scenes --show``: write a PNG of rendered scenes."""
    parser = ArgumentParser(
        prog="python -m datasets.procedural_scenes",
        description="Render procedural scenes (RGB above depth) into one PNG.",
    )
    parser.add_argument("--show", action="store_true", help="write the sample grid")
    parser.add_argument("--count", type=int, default=6, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0, help="scene stream")
    parser.add_argument("--size", default="96,128", help="image size H,W")
    parser.add_argument(
        "--out", type=Path, default=Path("procedural.png"), help="PNG to write"
    )
    args = parser.parse_args(argv)

    def run() -> int:
        if not args.show:
            parser.print_help()
            return 0
        from utils.io import atomic_write_image

        height, width = parse_size(args.size, "--size")
        atomic_write_image(args.out, show_grid(args.count, args.seed, height, width))
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
