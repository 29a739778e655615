"""Ray casting against the primitives of procedural interiors, vectorised over pixels.

A :class:`Scene` holds four kinds of primitives in world coordinates (metres, ``y`` up):
rectangles (walls with door openings, door leaves, panels, windows), boxes turned about
the vertical axis (furniture, shelves, table tops and legs), vertical capped cylinders
(pillars, bins, round tables, people's legs and bodies) and spheres (heads, plants). Every
primitive is one *surface* with a colour and a material (:data:`MATERIALS`); surfaces are
numbered rectangles first, then boxes, cylinders and spheres.

:func:`cast_rays` returns, for rays from one origin, the ray parameter of the nearest hit,
the surface hit and the outward unit normal there, computed for all rays and all
primitives of a kind at once in NumPy. A ray ``(u - cx) / f, (v - cy) / f, 1`` (camera
frame, turned into the world) has its z-depth as ray parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Surface materials: how a depth sensor sees them (``datasets.sensor_effects``).
MATERIALS = {"matte": 0, "dark": 1, "shiny": 2, "glass": 3}
EPSILON = 1e-9
CHUNK = 2048  # rays cast at once


def yaw_frame(yaw: float | np.ndarray) -> np.ndarray:
    """``(..., 3, 3)`` rows: a box's local x, y, z axes in the world, turned by ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack(
        [
            np.stack([c, zero, -s], -1),
            np.stack([zero, one, zero], -1),
            np.stack([s, zero, c], -1),
        ],
        -2,
    )


@dataclass
class Scene:
    """Primitives of one scene and the colour and material of each surface.

    Attributes (``R`` rectangles, ``B`` boxes, ``C`` cylinders, ``S`` spheres):
        rect_center ``(R, 3)``, rect_axes ``(R, 2, 3)`` unit in-plane axes,
        rect_half ``(R, 2)`` half extents along them;
        box_center ``(B, 3)``, box_half ``(B, 3)`` half extents along the box's axes,
        box_yaw ``(B,)`` turn about the vertical (:func:`yaw_frame`);
        cyl_base ``(C, 3)`` centre of the bottom cap, cyl_radius ``(C,)``,
        cyl_height ``(C,)`` (the axis is vertical);
        sph_center ``(S, 3)``, sph_radius ``(S,)``;
        color ``(R + B + C + S, 3)`` RGB in [0, 1], material ``(R + B + C + S,)`` int.
    """

    rect_center: list = field(default_factory=list)
    rect_axes: list = field(default_factory=list)
    rect_half: list = field(default_factory=list)
    box_center: list = field(default_factory=list)
    box_half: list = field(default_factory=list)
    box_yaw: list = field(default_factory=list)
    cyl_base: list = field(default_factory=list)
    cyl_radius: list = field(default_factory=list)
    cyl_height: list = field(default_factory=list)
    sph_center: list = field(default_factory=list)
    sph_radius: list = field(default_factory=list)
    # Colour and material per primitive kind, concatenated by ``color``/``material``.
    looks: dict = field(
        default_factory=lambda: {k: [] for k in ("rect", "box", "cyl", "sph")}
    )

    def add_rectangle(self, center, axes, half, color, material=0) -> None:
        self.rect_center.append(np.asarray(center, np.float64))
        self.rect_axes.append(np.asarray(axes, np.float64))
        self.rect_half.append(np.asarray(half, np.float64))
        self.looks["rect"].append((np.asarray(color, np.float64), int(material)))

    def add_box(self, center, half, yaw, color, material=0) -> None:
        self.box_center.append(np.asarray(center, np.float64))
        self.box_half.append(np.asarray(half, np.float64))
        self.box_yaw.append(float(yaw))
        self.looks["box"].append((np.asarray(color, np.float64), int(material)))

    def add_cylinder(self, base, radius, height, color, material=0) -> None:
        self.cyl_base.append(np.asarray(base, np.float64))
        self.cyl_radius.append(float(radius))
        self.cyl_height.append(float(height))
        self.looks["cyl"].append((np.asarray(color, np.float64), int(material)))

    def add_sphere(self, center, radius, color, material=0) -> None:
        self.sph_center.append(np.asarray(center, np.float64))
        self.sph_radius.append(float(radius))
        self.looks["sph"].append((np.asarray(color, np.float64), int(material)))

    def counts(self) -> tuple[int, int, int, int]:
        """Numbers of rectangles, boxes, cylinders and spheres."""
        return (
            len(self.rect_center),
            len(self.box_center),
            len(self.cyl_base),
            len(self.sph_center),
        )

    @property
    def color(self) -> np.ndarray:
        looks = [
            look for kind in ("rect", "box", "cyl", "sph") for look in self.looks[kind]
        ]
        return np.array([c for c, _ in looks], np.float64).reshape(-1, 3)

    @property
    def material(self) -> np.ndarray:
        looks = [
            look for kind in ("rect", "box", "cyl", "sph") for look in self.looks[kind]
        ]
        return np.array([m for _, m in looks], np.int64)

    def __len__(self) -> int:
        return sum(self.counts())


def _array(values: list, shape: tuple[int, ...]) -> np.ndarray:
    return np.array(values, np.float64).reshape(-1, *shape)


def _rectangles(origin, directions, scene):
    center = _array(scene.rect_center, (3,))
    axes = _array(scene.rect_axes, (2, 3))
    half = _array(scene.rect_half, (2,))
    normal = np.cross(axes[:, 0], axes[:, 1])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    denom = directions @ normal.T  # (P, R)
    reach = ((center - origin) * normal).sum(-1)  # (R,)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = reach[None] / denom
    t = np.where(np.isfinite(t) & (t > EPSILON), t, np.inf)
    rel = origin - center
    for k in range(2):
        coord = (rel * axes[:, k]).sum(-1)[None] + t * (directions @ axes[:, k].T)
        with np.errstate(invalid="ignore"):
            t = np.where(np.abs(coord) <= half[None, :, k], t, np.inf)
    # Two-sided: cast_rays turns every normal to face the ray.
    return t, lambda rows, cols: normal[cols]


def _boxes(origin, directions, scene):
    center = _array(scene.box_center, (3,))
    half = _array(scene.box_half, (3,))
    yaw = np.array(scene.box_yaw, np.float64)
    c, s = np.cos(yaw), np.sin(yaw)
    rel = origin - center  # (B, 3)
    # Box-frame origin (B,) and directions (P, B) per axis; (P, B) arrays per axis keep
    # NumPy off slow reductions over a length-3 last axis.
    local_origin = (
        c * rel[:, 0] - s * rel[:, 2],
        rel[:, 1],
        s * rel[:, 0] + c * rel[:, 2],
    )
    dx, dy, dz = directions[:, 0:1], directions[:, 1:2], directions[:, 2:3]
    local_dir = (
        dx * c - dz * s,
        np.broadcast_to(dy, (len(directions), len(yaw))),
        dx * s + dz * c,
    )
    lows, highs = [], []
    for k in range(3):
        d, o, h = local_dir[k], local_origin[k], half[:, k]
        with np.errstate(divide="ignore", invalid="ignore"):
            near = (-h - o) / d
            far = (h - o) / d
        # An axis parallel to the ray: inside the slab it never bounds, outside it misses.
        inside = np.abs(o) <= h
        lows.append(
            np.where(d == 0, np.where(inside, -np.inf, np.inf), np.minimum(near, far))
        )
        highs.append(
            np.where(d == 0, np.where(inside, np.inf, -np.inf), np.maximum(near, far))
        )
    t_in = np.maximum(np.maximum(lows[0], lows[1]), lows[2])
    t_out = np.minimum(np.minimum(highs[0], highs[1]), highs[2])
    t = np.where((t_in <= t_out) & (t_in > EPSILON), t_in, np.inf)

    def normals(rows, cols):
        entry = np.stack([lows[k][rows, cols] for k in range(3)], -1).argmax(-1)
        d = np.stack([local_dir[k][rows, cols] for k in range(3)], -1)
        sign = -np.sign(d[np.arange(len(rows)), entry])
        return yaw_frame(yaw[cols])[np.arange(len(rows)), entry] * sign[:, None]

    return t, normals


def _cylinders(origin, directions, scene):
    base = _array(scene.cyl_base, (3,))
    radius = np.array(scene.cyl_radius, np.float64)
    height = np.array(scene.cyl_height, np.float64)
    rel = origin - base  # (C, 3)
    dx, dy, dz = directions[:, 0:1], directions[:, 1:2], directions[:, 2:3]
    a = dx**2 + dz**2  # (P, 1)
    b = 2 * (dx * rel[None, :, 0] + dz * rel[None, :, 2])  # (P, C)
    c = rel[:, 0] ** 2 + rel[:, 2] ** 2 - radius**2  # (C,)
    disc = b**2 - 4 * a * c[None]
    with np.errstate(divide="ignore", invalid="ignore"):
        side = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    y_side = rel[None, :, 1] + side * dy
    side = np.where(
        (disc >= 0) & (a > 0) & (side > EPSILON) & (y_side >= 0) & (y_side <= height),
        side,
        np.inf,
    )
    caps = []
    for level in (np.zeros_like(height), height):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (level - rel[:, 1])[None] / dy
        x = rel[None, :, 0] + t * dx
        z = rel[None, :, 2] + t * dz
        ok = np.isfinite(t) & (t > EPSILON) & (x**2 + z**2 <= radius**2)
        caps.append(np.where(ok, t, np.inf))
    t = np.minimum(side, np.minimum(*caps))

    def normals(rows, cols):
        hit = origin + t[rows, cols, None] * directions[rows] - base[cols]
        radial = np.stack([hit[:, 0], np.zeros(len(rows)), hit[:, 2]], -1)
        radial /= np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-12)
        on_side = t[rows, cols] == side[rows, cols]
        up = np.where(hit[:, 1] > height[cols] / 2, 1.0, -1.0)
        cap = np.stack([np.zeros(len(rows)), up, np.zeros(len(rows))], -1)
        return np.where(on_side[:, None], radial, cap)

    return t, normals


def _spheres(origin, directions, scene):
    center = _array(scene.sph_center, (3,))
    radius = np.array(scene.sph_radius, np.float64)
    rel = origin - center  # (S, 3)
    a = (directions**2).sum(-1, keepdims=True)  # (P, 1)
    b = 2 * directions @ rel.T  # (P, S)
    c = (rel**2).sum(-1) - radius**2
    disc = b**2 - 4 * a * c[None]
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    t = np.where((disc >= 0) & (t > EPSILON), t, np.inf)

    def normals(rows, cols):
        hit = origin + t[rows, cols, None] * directions[rows] - center[cols]
        return hit / radius[cols, None]

    return t, normals


def cast_rays(
    origin: np.ndarray, directions: np.ndarray, scene: Scene
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hits of rays from one origin.

    Args:
        origin: ``(3,)`` ray origin (outside every box, cylinder and sphere).
        directions: ``(P, 3)`` ray directions (not necessarily unit).
        scene: the primitives.

    Returns:
        ``t (P,)`` ray parameter of the nearest hit (``inf`` when none), ``surface (P,)``
        the surface hit (-1 when none) and ``normal (P, 3)`` its unit normal at the hit,
        facing the ray (zero when none).
    """
    if len(directions) > CHUNK:  # bound the (rays, primitives) temporaries
        parts = [
            cast_rays(origin, directions[i : i + CHUNK], scene)
            for i in range(0, len(directions), CHUNK)
        ]
        return tuple(np.concatenate(p) for p in zip(*parts))
    count = len(directions)
    best = np.full(count, np.inf)
    surface = np.full(count, -1, np.int64)
    normal = np.zeros((count, 3))
    offset = 0
    kinds = (_rectangles, _boxes, _cylinders, _spheres)
    for size, kind in zip(scene.counts(), kinds):
        if size == 0:
            continue
        t, normals = kind(origin, directions, scene)
        index = np.argmin(t, axis=1)
        nearest = t[np.arange(count), index]
        closer = nearest < best
        rows = np.flatnonzero(closer)
        best[rows] = nearest[rows]
        surface[rows] = offset + index[rows]
        normal[rows] = normals(rows, index[rows])
        offset += size
    # Face the ray (the inside of a closed room, the back of a door leaf).
    flip = (normal * directions).sum(-1) > 0
    normal[flip] *= -1
    return best, surface, normal
