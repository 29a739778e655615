"""Furniture and figures of procedural interiors, built in their own frame and placed.

Each builder draws one item from a random stream as an :class:`Item`: cabinets (a screen
on some low ones), beds with headboards, sofas, tables on four legs (some with glass
tops), round tables, chairs, bookshelves with boards holding books and boxes, bins, plants
in pots, floor lamps, stacked cartons and standing people-sized figures (legs, body, arms,
head); :func:`place` turns and moves it into a :class:`datasets.scene_geometry.Scene`.
Sizes are those of real furniture, in metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datasets.scene_geometry import MATERIALS, Scene, yaw_frame


def color_of(
    rng: np.random.Generator, low: float = 0.15, high: float = 0.95
) -> np.ndarray:
    return rng.uniform(low, high, 3)


def material_of(rng: np.random.Generator, color: np.ndarray, shiny: float = 0.0) -> int:
    """Dark surfaces (low albedo) and a share of shiny ones: what sensors miss."""
    if color.mean() < 0.2:
        return MATERIALS["dark"]
    return MATERIALS["shiny"] if rng.uniform() < shiny else MATERIALS["matte"]


@dataclass
class Item:
    """Furniture in its own frame: origin on the floor at the footprint's centre, local
    ``x`` along its width, ``z`` out of its back (towards the room when at a wall).

    ``parts``: ``("box", centre, half, yaw)``, ``("cyl", base, radius, height)`` or
    ``("sph", centre, radius)``, each followed by ``colour, material``.
    """

    half_x: float
    half_z: float
    parts: list
    at_wall: bool = False


def _box(center, half, color, material=0, yaw=0.0) -> tuple:
    return (
        "box",
        np.asarray(center, float),
        np.asarray(half, float),
        yaw,
        color,
        material,
    )


def _cabinet(rng) -> Item:
    w, d, h = rng.uniform(0.4, 1.4), rng.uniform(0.35, 0.7), rng.uniform(0.5, 2.1)
    color = color_of(rng, 0.1, 0.95)
    parts = [_box([0, h / 2, 0], [w / 2, h / 2, d / 2], color, material_of(rng, color))]
    if h < 1.1 and rng.uniform() < 0.35:  # a screen on a low cabinet
        sw = rng.uniform(0.5, min(1.4, w + 0.3))
        sh = sw * rng.uniform(0.5, 0.65)
        parts.append(
            _box([0, h + 0.05 + sh / 2, 0], [sw / 2, sh / 2, 0.03], np.full(3, 0.05), 1)
        )
    return Item(w / 2, d / 2, parts, at_wall=rng.uniform() < 0.8)


def _bed(rng) -> Item:
    w, d, h = rng.uniform(0.9, 1.9), rng.uniform(1.9, 2.2), rng.uniform(0.35, 0.6)
    color, frame = color_of(rng, 0.3, 0.98), color_of(rng, 0.1, 0.7)
    parts = [
        _box([0, h / 2, 0], [w / 2, h / 2, d / 2], color),
        _box(
            [0, (h + 0.5) / 2, -d / 2 - 0.03],
            [w / 2 + 0.03, (h + 0.5) / 2, 0.03],
            frame,
        ),
    ]
    return Item(w / 2 + 0.03, d / 2 + 0.06, parts, at_wall=True)


def _sofa(rng) -> Item:
    w, d = rng.uniform(1.2, 2.4), rng.uniform(0.8, 1.0)
    seat, back, arm = rng.uniform(0.38, 0.48), rng.uniform(0.75, 0.95), 0.15
    color = color_of(rng, 0.08, 0.8)
    m = material_of(rng, color)
    parts = [
        _box([0, seat / 2, 0.05], [w / 2 - arm, seat / 2, d / 2 - 0.05], color, m),
        _box([0, back / 2, -d / 2 + 0.1], [w / 2, back / 2, 0.1], color, m),
    ]
    for side in (-1, 1):
        parts.append(
            _box([side * (w / 2 - arm / 2), 0.3, 0], [arm / 2, 0.3, d / 2], color, m)
        )
    return Item(w / 2, d / 2, parts, at_wall=rng.uniform() < 0.7)


def _table(rng) -> Item:
    w, d = rng.uniform(0.7, 2.2), rng.uniform(0.5, 1.1)
    h, top, leg = (
        rng.uniform(0.42, 0.78),
        rng.uniform(0.025, 0.06),
        rng.uniform(0.03, 0.07),
    )
    color, legs = color_of(rng, 0.1, 0.95), color_of(rng, 0.05, 0.9)
    material = (
        MATERIALS["glass"] if rng.uniform() < 0.08 else material_of(rng, color, 0.2)
    )
    parts = [_box([0, h - top / 2, 0], [w / 2, top / 2, d / 2], color, material)]
    for sx in (-1, 1):
        for sz in (-1, 1):
            center = [sx * (w / 2 - leg), (h - top) / 2, sz * (d / 2 - leg)]
            parts.append(_box(center, [leg / 2, (h - top) / 2, leg / 2], legs))
    return Item(w / 2, d / 2, parts, at_wall=rng.uniform() < 0.3)


def _round_table(rng) -> Item:
    radius, h = rng.uniform(0.3, 0.75), rng.uniform(0.45, 0.76)
    color = color_of(rng, 0.1, 0.95)
    parts = [
        (
            "cyl",
            np.array([0, h - 0.04, 0]),
            radius,
            0.04,
            color,
            material_of(rng, color, 0.2),
        ),
        ("cyl", np.array([0, 0.0, 0]), 0.05, h - 0.04, color, 0),
        ("cyl", np.array([0, 0.0, 0]), radius * 0.5, 0.03, color, 0),
    ]
    return Item(radius, radius, parts)


def _chair(rng) -> Item:
    w, seat, back = (
        rng.uniform(0.4, 0.55),
        rng.uniform(0.42, 0.5),
        rng.uniform(0.35, 0.5),
    )
    color = color_of(rng, 0.05, 0.9)
    m = material_of(rng, color, 0.15)
    parts = [
        _box([0, seat - 0.02, 0], [w / 2, 0.025, w / 2], color, m),
        _box([0, seat + back / 2, -w / 2 + 0.02], [w / 2, back / 2, 0.02], color, m),
    ]
    for sx in (-1, 1):
        for sz in (-1, 1):
            center = [sx * (w / 2 - 0.03), (seat - 0.04) / 2, sz * (w / 2 - 0.03)]
            parts.append(_box(center, [0.018, (seat - 0.04) / 2, 0.018], color, m))
    return Item(w / 2, w / 2, parts)


def _shelf(rng) -> Item:
    w, d, h = rng.uniform(0.6, 1.8), rng.uniform(0.25, 0.45), rng.uniform(0.9, 2.2)
    board = 0.02
    color = color_of(rng, 0.1, 0.95)
    m = material_of(rng, color)
    parts = [_box([0, h / 2, -d / 2 + 0.005], [w / 2, h / 2, 0.005], color, m)]
    for side in (-1, 1):
        parts.append(
            _box(
                [side * (w / 2 - board / 2), h / 2, 0],
                [board / 2, h / 2, d / 2],
                color,
                m,
            )
        )
    levels = np.linspace(0.05, h - board / 2, rng.integers(3, 7))
    for y in levels:
        parts.append(_box([0, y, 0], [w / 2 - board, board / 2, d / 2], color, m))
    for y0, y1 in zip(levels[:-1], levels[1:]):  # books and boxes on the boards
        s = -w / 2 + board
        while s < w / 2 - board - 0.05 and rng.uniform() < 0.85:
            bw = rng.uniform(0.03, 0.3)
            bh = rng.uniform(0.3, 0.95) * (y1 - y0 - board)
            if s + bw > w / 2 - board:
                break
            book = color_of(rng, 0.05, 0.95)
            center = [s + bw / 2, y0 + board / 2 + bh / 2, rng.uniform(-0.05, 0.02)]
            parts.append(
                _box(
                    center, [bw / 2, bh / 2, d / 2 - 0.04], book, material_of(rng, book)
                )
            )
            s += bw + rng.uniform(0.0, 0.15)
    return Item(w / 2, d / 2, parts, at_wall=rng.uniform() < 0.9)


def _round_thing(rng) -> Item:
    """A bin, a plant in its pot, or a floor lamp."""
    kind = rng.uniform()
    color = color_of(rng, 0.05, 0.95)
    if kind < 0.4:
        radius, h = rng.uniform(0.12, 0.3), rng.uniform(0.3, 0.8)
        parts = [("cyl", np.zeros(3), radius, h, color, material_of(rng, color, 0.3))]
    elif kind < 0.75:
        radius, h = rng.uniform(0.12, 0.3), rng.uniform(0.2, 0.5)
        leaves = rng.uniform(0.2, 0.5)
        parts = [
            ("cyl", np.zeros(3), radius, h, color, material_of(rng, color)),
            (
                "sph",
                np.array([0, h + leaves * 0.8, 0]),
                leaves,
                rng.uniform(0.05, 0.4, 3) * [0.5, 1, 0.5],
                0,
            ),
        ]
        radius = max(radius, leaves)
    else:
        pole, shade = rng.uniform(1.3, 1.8), rng.uniform(0.15, 0.25)
        parts = [
            ("cyl", np.zeros(3), 0.15, 0.03, color, 0),
            ("cyl", np.zeros(3), 0.015, pole, color, MATERIALS["shiny"]),
            ("cyl", np.array([0, pole, 0]), shade, 0.25, color_of(rng, 0.6, 1.0), 0),
        ]
        radius = shade
    return Item(radius, radius, parts)


def _cartons(rng) -> Item:
    w, d = rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.6)
    parts, y = [], 0.0
    for _ in range(rng.integers(1, 4)):
        h = rng.uniform(0.15, 0.5)
        shrink = rng.uniform(0.7, 1.0)
        yaw = rng.uniform(-0.3, 0.3)
        parts.append(
            _box(
                [0, y + h / 2, 0],
                [w / 2 * shrink, h / 2, d / 2 * shrink],
                color_of(rng, 0.3, 0.8),
                0,
                yaw,
            )
        )
        y += h
    return Item(max(w, d) / 2 * 1.3, max(w, d) / 2 * 1.3, parts)


def _person(rng) -> Item:
    """A standing figure 1.5-1.95 m tall: legs, body, arms and head."""
    tall = rng.uniform(1.5, 1.95)
    legs, body = 0.47 * tall, 0.33 * tall
    head = rng.uniform(0.09, 0.12)
    width = rng.uniform(0.15, 0.22)
    trousers, shirt = color_of(rng, 0.03, 0.6), color_of(rng, 0.03, 0.95)
    skin = rng.uniform(0.25, 0.9) * np.array([1.0, 0.8, 0.65])
    parts = [
        (
            "cyl",
            np.array([-0.09, 0, 0]),
            0.075,
            legs,
            trousers,
            material_of(rng, trousers),
        ),
        (
            "cyl",
            np.array([0.09, 0, 0]),
            0.075,
            legs,
            trousers,
            material_of(rng, trousers),
        ),
        ("cyl", np.array([0, legs, 0]), width, body, shirt, material_of(rng, shirt)),
        ("sph", np.array([0, legs + body + head + 0.03, 0]), head, skin, 0),
    ]
    for side in (-1, 1):
        arm = np.array([side * (width + 0.05), legs + body * 0.15, 0])
        parts.append(("cyl", arm, 0.04, body * 0.85, shirt, material_of(rng, shirt)))
    return Item(width + 0.1, width + 0.1, parts)


BUILDERS = {
    "room": (
        (_cabinet, 3),
        (_bed, 1),
        (_sofa, 1),
        (_table, 2),
        (_round_table, 1),
        (_chair, 2),
        (_shelf, 2),
        (_round_thing, 2),
        (_cartons, 1),
        (_person, 1),
    ),
    "corridor": (
        (_cabinet, 2),
        (_round_thing, 3),
        (_cartons, 1),
        (_person, 3),
        (_chair, 1),
        (_shelf, 1),
    ),
    "hall": (
        (_table, 2),
        (_round_table, 2),
        (_chair, 3),
        (_person, 4),
        (_round_thing, 2),
        (_cabinet, 1),
        (_shelf, 1),
        (_sofa, 1),
        (_cartons, 1),
    ),
}
ITEM_COUNTS = {"room": (3, 14), "corridor": (1, 7), "hall": (4, 20)}


def place(scene: Scene, item: Item, x: float, z: float, yaw: float) -> None:
    """Add ``item`` turned by ``yaw`` with its footprint centre at ``(x, 0, z)``."""
    frame = yaw_frame(yaw)
    origin = np.array([x, 0.0, z])
    for kind, where, *rest in item.parts:
        at = origin + np.asarray(where) @ frame
        if kind == "box":
            half, local_yaw, color, material = rest
            scene.add_box(at, half, yaw + local_yaw, color, material)
        elif kind == "cyl":
            radius, height, color, material = rest
            scene.add_cylinder(at, radius, height, color, material)
        else:
            radius, color, material = rest
            scene.add_sphere(at, radius, color, material)
