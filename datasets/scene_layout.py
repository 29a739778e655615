"""Random layouts of procedural interiors: rooms, corridors and halls with clutter.

:func:`random_layout` builds one :class:`datasets.scene_geometry.Scene` from a random
stream: a room kind (an ordinary room, a long corridor, a hall with pillars), door
openings with open door leaves and the space behind them (another room or a corridor),
closed doors, windows (glass) and clutter: cabinets, beds, sofas, tables with legs, round
tables, chairs, bookshelves with boards and books, bins and plant pots, lamps, cartons,
pictures and screens on the walls, leaning boards and people-sized figures. A camera spot
is drawn first and nothing is placed on it. Metres, ``y`` up, the room spans
``[0, W] x [0, H] x [0, D]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from datasets.scene_furniture import BUILDERS, ITEM_COUNTS, color_of, material_of, place
from datasets.scene_geometry import MATERIALS, Scene

ROOM_KINDS = {"room": 0.6, "corridor": 0.2, "hall": 0.2}
X, Y, Z = np.eye(3)


@dataclass
class Wall:
    """A wall of the room: ``origin + s * along + y * up`` for ``s`` in [0, length]."""

    origin: np.ndarray
    along: np.ndarray
    inward: np.ndarray
    length: float

    def point(self, s: float, y: float, depth: float = 0.0) -> np.ndarray:
        return self.origin + s * self.along + y * Y + depth * self.inward

    def yaw(self) -> float:
        """Yaw of a box whose local x axis runs along the wall (:func:`yaw_frame`)."""
        return math.atan2(-self.along[2], self.along[0])


def _wall_pieces(length: float, height: float, openings: list[tuple]) -> list[tuple]:
    """Rectangles ``(s0, s1, y0, y1)`` covering a wall minus its openings.

    Args:
        openings: ``(s0, s1, y0, y1)`` non-overlapping holes inside the wall.
    """
    pieces, start = [], 0.0
    for s0, s1, y0, y1 in sorted(openings):
        if s0 > start:
            pieces.append((start, s0, 0.0, height))
        if y0 > 0:
            pieces.append((s0, s1, 0.0, y0))
        if y1 < height:
            pieces.append((s0, s1, y1, height))
        start = s1
    if start < length:
        pieces.append((start, length, 0.0, height))
    return pieces


def _add_space(scene: Scene, rng, wall: Wall, s0: float, s1: float, height: float):
    """The room or corridor behind a door opening (its face on the wall left open)."""
    width = rng.uniform(s1 - s0 + 0.3, s1 - s0 + 4.0)
    depth = rng.uniform(1.2, 9.0)
    middle = (s0 + s1) / 2 + rng.uniform(-0.3, 0.3) * (width - (s1 - s0))
    out = -wall.inward
    centre = wall.point(middle, height / 2) + out * depth / 2
    color = color_of(rng, 0.3, 0.95)
    half_w, half_h, half_d = width / 2, height / 2, depth / 2
    faces = [
        (centre + out * half_d, [wall.along, Y], [half_w, half_h]),  # far wall
        (centre - wall.along * half_w, [out, Y], [half_d, half_h]),
        (centre + wall.along * half_w, [out, Y], [half_d, half_h]),
        (centre - Y * half_h, [wall.along, out], [half_w, half_d]),  # floor
        (centre + Y * half_h, [wall.along, out], [half_w, half_d]),
    ]
    for center, axes, half in faces:
        scene.add_rectangle(center, axes, half, color * rng.uniform(0.8, 1.0))


def _build_shell(scene: Scene, rng, size: np.ndarray, kind: str) -> list[Wall]:
    """Floor, ceiling and walls with door openings, door leaves, windows."""
    width, height, depth = size
    walls = [
        Wall(np.zeros(3), X, Z, width),
        Wall(np.array([0, 0, depth]), X, -Z, width),
        Wall(np.zeros(3), Z, X, depth),
        Wall(np.array([width, 0, 0]), Z, -X, depth),
    ]
    floor_color, ceiling_color = color_of(rng, 0.2, 0.8), color_of(rng, 0.6, 0.98)
    for y, color in ((0.0, floor_color), (height, ceiling_color)):
        scene.add_rectangle(
            [width / 2, y, depth / 2], [X, Z], [width / 2, depth / 2], color
        )
    wall_color = color_of(rng, 0.35, 0.95)
    doors = {"room": (0, 3), "corridor": (1, 5), "hall": (0, 3)}[kind]
    openings: list[list[tuple]] = [[] for _ in walls]
    for _ in range(rng.integers(*doors)):
        side = int(rng.integers(4)) if kind != "corridor" else int(rng.integers(2, 4))
        wall = walls[side]
        door_w = rng.uniform(0.8, 1.8 if kind == "hall" else 1.0)
        door_h = min(rng.uniform(2.0, 2.3), height - 0.1)
        s0 = rng.uniform(0.2, wall.length - door_w - 0.2)
        hole = (s0, s0 + door_w, 0.0, door_h)
        if any(s0 - 0.3 < b and a < s0 + door_w + 0.3 for a, b, _, _ in openings[side]):
            continue
        openings[side].append(hole)
        _add_space(scene, rng, wall, s0, s0 + door_w, min(height, door_h + 0.8))
        if rng.uniform() < 0.7:  # an open door leaf, hinged at one side
            angle = math.radians(rng.uniform(15, 120))
            hinge, sign = (s0, 1.0) if rng.uniform() < 0.5 else (s0 + door_w, -1.0)
            into = wall.inward if rng.uniform() < 0.7 else -wall.inward
            direction = sign * math.cos(angle) * wall.along + math.sin(angle) * into
            center = wall.point(hinge, door_h / 2) + direction * door_w / 2
            yaw = math.atan2(-direction[2], direction[0])
            color = color_of(rng, 0.2, 0.9)
            scene.add_box(
                center,
                [door_w / 2, door_h / 2, 0.02],
                yaw,
                color,
                material_of(rng, color),
            )
    for _ in range(rng.integers(0, 3)):  # windows: glass panes on the wall
        side = int(rng.integers(4))
        wall = walls[side]
        win_w = rng.uniform(0.6, min(2.5, wall.length - 0.6))
        s0 = rng.uniform(0.3, wall.length - win_w - 0.3)
        if any(s0 - 0.2 < b and a < s0 + win_w + 0.2 for a, b, _, _ in openings[side]):
            continue
        y0 = rng.uniform(0.7, 1.1)
        y1 = min(y0 + rng.uniform(0.8, 1.6), height - 0.2)
        center = wall.point(s0 + win_w / 2, (y0 + y1) / 2, 0.01)
        scene.add_rectangle(
            center,
            [wall.along, Y],
            [win_w / 2, (y1 - y0) / 2],
            rng.uniform(0.5, 0.8, 3),
            MATERIALS["glass"],
        )
    for wall, holes in zip(walls, openings):
        for s0, s1, y0, y1 in _wall_pieces(wall.length, height, holes):
            center = wall.point((s0 + s1) / 2, (y0 + y1) / 2)
            scene.add_rectangle(
                center, [wall.along, Y], [(s1 - s0) / 2, (y1 - y0) / 2], wall_color
            )
    return walls


def _wall_yaw(wall: Wall) -> float:
    """Yaw of an item whose local ``z`` points from ``wall`` into the room."""
    x_axis = np.cross(Y, wall.inward)
    return math.atan2(-x_axis[2], x_axis[0])


def _wall_things(scene: Scene, rng, walls: list[Wall], height: float, count: int):
    """Pictures, screens, closed doors and wall cupboards: thin boxes on the walls."""
    for _ in range(count):
        wall = walls[int(rng.integers(4))]
        kind = rng.uniform()
        if kind < 0.25:  # closed door
            w, h, thick, y0 = rng.uniform(0.8, 1.0), min(2.1, height - 0.1), 0.03, 0.0
        elif kind < 0.4:  # screen
            w, thick = rng.uniform(0.6, 1.6), 0.05
            h, y0 = w * 0.58, rng.uniform(0.9, 1.5)
        elif kind < 0.55:  # wall cupboard
            w, h, thick = (
                rng.uniform(0.6, 2.0),
                rng.uniform(0.4, 0.8),
                rng.uniform(0.25, 0.35),
            )
            y0 = rng.uniform(1.4, max(1.41, height - h - 0.1))
        else:  # picture or frame
            w, h, thick = (
                rng.uniform(0.2, 1.2),
                rng.uniform(0.2, 0.9),
                rng.uniform(0.01, 0.05),
            )
            y0 = rng.uniform(0.8, max(0.81, height - h - 0.2))
        if w + 0.2 > wall.length or y0 + h > height:
            continue
        s = rng.uniform(w / 2 + 0.1, wall.length - w / 2 - 0.1)
        color = np.full(3, 0.04) if 0.25 <= kind < 0.4 else color_of(rng, 0.05, 0.95)
        material = MATERIALS["shiny"] if 0.25 <= kind < 0.4 else material_of(rng, color)
        center = wall.point(s, y0 + h / 2, thick / 2)
        scene.add_box(
            center, [w / 2, h / 2, thick / 2], _wall_yaw(wall), color, material
        )


def random_layout(rng: np.random.Generator) -> dict:
    """A random interior with clutter and a free camera spot.

    Returns:
        ``scene`` (:class:`Scene`), ``kind`` (a :data:`ROOM_KINDS` key), ``size (3,)``
        (W, H, D), ``camera_xz (2,)`` a floor spot clear of every item by 0.35 m, and
        ``look_at (3,)`` a suggested point to look at (a corridor's far end) or None.
    """
    kinds = list(ROOM_KINDS)
    kind = kinds[int(rng.choice(len(kinds), p=list(ROOM_KINDS.values())))]
    if kind == "room":
        size = np.array(
            [rng.uniform(2.8, 8.0), rng.uniform(2.4, 3.2), rng.uniform(2.8, 8.0)]
        )
    elif kind == "corridor":
        size = np.array(
            [rng.uniform(1.3, 2.6), rng.uniform(2.4, 3.0), rng.uniform(6.0, 18.0)]
        )
    else:
        size = np.array(
            [rng.uniform(7.0, 16.0), rng.uniform(3.0, 5.0), rng.uniform(7.0, 16.0)]
        )
    width, height, depth = size
    scene = Scene()
    walls = _build_shell(scene, rng, size, kind)
    look_at = None
    if kind == "corridor":
        near_end = rng.uniform() < 0.5
        z = rng.uniform(0.5, 2.5)
        camera = np.array(
            [rng.uniform(0.45, width - 0.45), z if near_end else depth - z]
        )
        look_at = np.array([width / 2, 1.2, depth if near_end else 0.0])
    else:
        camera = rng.uniform([0.5, 0.5], [width - 0.5, depth - 0.5])
    taken = [(camera[0], camera[1], 0.35)]

    def free(x: float, z: float, radius: float) -> bool:
        return all(math.hypot(x - a, z - b) >= radius + r for a, b, r in taken)

    if kind == "hall" and rng.uniform() < 0.8:  # pillars on a grid
        step = rng.uniform(3.0, 5.0)
        radius = rng.uniform(0.15, 0.4)
        square = rng.uniform() < 0.4
        color = color_of(rng, 0.4, 0.95)
        for x in np.arange(step, width - 1.0, step):
            for z in np.arange(step, depth - 1.0, step):
                if not free(x, z, radius):
                    continue
                taken.append((x, z, radius))
                if square:
                    scene.add_box(
                        [x, height / 2, z], [radius, height / 2, radius], 0.0, color
                    )
                else:
                    scene.add_cylinder([x, 0, z], radius, height, color)
    names = BUILDERS[kind]
    weights = np.array([w for _, w in names], float)
    for _ in range(rng.integers(*ITEM_COUNTS[kind])):
        builder = names[int(rng.choice(len(names), p=weights / weights.sum()))][0]
        item = builder(rng)
        radius = math.hypot(item.half_x, item.half_z)
        for _ in range(8):
            if item.at_wall:
                wall = walls[int(rng.integers(4))]
                if wall.length < 2 * item.half_x + 0.2:
                    continue
                s = rng.uniform(item.half_x + 0.05, wall.length - item.half_x - 0.05)
                x, _, z = wall.point(s, 0.0, item.half_z + 0.01)
                yaw = _wall_yaw(wall)
            else:
                margin = radius + 0.05
                if min(width, depth) < 2 * margin:
                    break
                x, z = rng.uniform([margin, margin], [width - margin, depth - margin])
                turn = rng.uniform(-0.2, 0.2) + rng.integers(4) * math.pi / 2
                yaw = turn if rng.uniform() < 0.6 else rng.uniform(0, 2 * math.pi)
            # Circles overestimate boxes: let footprints overlap a little.
            if free(x, z, 0.8 * radius):
                taken.append((x, z, 0.8 * radius))
                place(scene, item, x, z, yaw)
                break
    _wall_things(scene, rng, walls, height, int(rng.integers(0, 6)))
    if kind == "room":
        for _ in range(rng.integers(0, 2)):  # a slanted board leaning somewhere
            normal = rng.normal(size=3)
            normal /= np.linalg.norm(normal)
            first = np.cross(normal, rng.normal(size=3))
            first /= np.linalg.norm(first)
            center = rng.uniform([0.3, 0.2, 0.3], size - [0.3, 0.2, 0.3])
            position = np.array([camera[0], 1.0, camera[1]])
            if abs(normal @ (position - center)) < 1.2:
                continue
            axes = [first, np.cross(normal, first)]
            scene.add_rectangle(center, axes, rng.uniform(0.2, 0.8, 2), color_of(rng))
    return {
        "scene": scene,
        "kind": kind,
        "size": size,
        "camera_xz": camera,
        "look_at": look_at,
    }
