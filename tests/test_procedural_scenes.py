"""Procedural interiors: exact depth and normals, depth ranges per room kind, camera and
FOV priors, sensor noise statistics, determinism per seed, and the ``--show`` grid."""

import math

import cv2
import numpy as np
import pytest

from datasets.procedural_scenes import (
    CAMERA_PROFILES,
    FOV_PRIORS,
    draw_fov,
    main,
    random_scene,
    render_procedural,
)
from datasets.scene_geometry import yaw_frame
from datasets.sensor_effects import (
    MATERIALS,
    NO_EFFECTS,
    apply_sensor,
    axial_sigma,
    far_side_of_edges,
)
from geometry.camera import focal_to_fov, surface_normals


def _plane_hit(origin, direction, center, axes, half):
    """Ray parameter of a rectangle hit (inf when none): the plain formula."""
    normal = np.cross(axes[0], axes[1])
    denom = normal @ direction
    if abs(denom) < 1e-12:
        return math.inf
    t = normal @ (center - origin) / denom
    if t <= 1e-9:
        return math.inf
    offset = origin + t * direction - center
    inside = all(abs(offset @ axes[k]) <= half[k] for k in range(2))
    return t if inside else math.inf


def _quadratic_first_root(a, b, c):
    disc = b * b - 4 * a * c
    if a == 0 or disc < 0:
        return math.inf
    t = (-b - math.sqrt(disc)) / (2 * a)
    return t if t > 1e-9 else math.inf


def loop_depth(scene, K, u, v):
    """Nearest hit of one pixel's ray, primitive by primitive: rectangles and the six
    faces of every box by ray-plane tests, cylinders (side and caps) and spheres by
    their quadratics."""
    ray = np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0])
    d = scene["world_from_camera"] @ ray
    o = scene["camera_position"]
    prims = scene["scene"]
    hits = []
    for c, axes, half in zip(prims.rect_center, prims.rect_axes, prims.rect_half):
        hits.append(_plane_hit(o, d, c, axes, half))
    for c, half, yaw in zip(prims.box_center, prims.box_half, prims.box_yaw):
        frame = yaw_frame(yaw)
        faces = []
        for axis in range(3):
            others = [k for k in range(3) if k != axis]
            for sign in (-1, 1):
                face_c = c + sign * half[axis] * frame[axis]
                faces.append(_plane_hit(o, d, face_c, frame[others], half[others]))
        hits.append(min(faces))
    for base, r, h in zip(prims.cyl_base, prims.cyl_radius, prims.cyl_height):
        rel = o - base
        a = d[0] ** 2 + d[2] ** 2
        b = 2 * (d[0] * rel[0] + d[2] * rel[2])
        side = _quadratic_first_root(a, b, rel[0] ** 2 + rel[2] ** 2 - r * r)
        if not 0 <= rel[1] + side * d[1] <= h:
            side = math.inf
        caps = math.inf
        for level in (0.0, h):
            if d[1] != 0:
                t = (level - rel[1]) / d[1]
                x, z = rel[0] + t * d[0], rel[2] + t * d[2]
                if t > 1e-9 and x * x + z * z <= r * r:
                    caps = min(caps, t)
        hits.append(min(side, caps))
    for center, r in zip(prims.sph_center, prims.sph_radius):
        rel = o - center
        hits.append(_quadratic_first_root(d @ d, 2 * d @ rel, rel @ rel - r * r))
    best = int(np.argmin(hits))
    return hits[best], best


def scenes_of_each_kind(seed=4, size=(40, 56)):
    """The first scene of each room kind of stream ``seed`` (rendered)."""
    found = {}
    for index in range(60):
        kind = random_scene(np.random.default_rng([seed, index]))["kind"]
        if kind not in found:
            found[kind] = render_procedural(index, seed, *size)
        if len(found) == 3:
            return found
    raise AssertionError(f"only {sorted(found)} in 60 scenes")


@pytest.fixture(scope="module")
def kinds():
    return scenes_of_each_kind()


def test_depth_agrees_with_a_per_pixel_loop_over_primitives(kinds):
    covered = set()
    for sample in kinds.values():
        scene, K, depth = sample["scene"], sample["K"], sample["exact_depth"]
        counts = np.cumsum(scene["scene"].counts())
        rng = np.random.default_rng(0)
        pixels = list(zip(rng.integers(0, 40, 25), rng.integers(0, 56, 25)))
        starts = (0, *counts[:-1])
        caps = np.abs(sample["normal"][..., 1]) > 0.99
        for first, last in zip(starts, counts):  # also pixels of each primitive kind
            on = (sample["surface"] >= first) & (sample["surface"] < last)
            for where in (on, on & caps):  # and cylinder caps, box tops
                rows, cols = np.nonzero(where)
                pick = rng.permutation(len(rows))[:10]
                pixels += list(zip(rows[pick], cols[pick]))
        for v, u in pixels:
            expected, surface = loop_depth(scene, K, u, v)
            assert depth[v, u] == pytest.approx(expected, rel=1e-6)
            assert sample["surface"][v, u] == surface
            covered.add(int(np.searchsorted(counts, surface, side="right")))
        # Closed rooms: every pixel hits a surface.
        assert (depth > 0).all() and (sample["surface"] >= 0).all()
    assert covered == {0, 1, 2, 3}  # rectangles, boxes, cylinders, spheres


def test_rendered_normals_match_the_depth_maps_normals(kinds):
    """Where a pixel and its four neighbours see one flat surface, the normal computed
    from the depth map equals the rendered one (turned into the camera frame)."""
    for sample in kinds.values():
        scene, K, depth = sample["scene"], sample["K"], sample["exact_depth"]
        from_depth = surface_normals(depth, depth > 0, K)
        rendered = sample["normal"] @ scene["world_from_camera"]
        rects, boxes, _, _ = scene["scene"].counts()
        surface = sample["surface"]
        # Same surface and the same rendered normal: not across a box's edge.
        same = np.zeros(surface.shape, bool)
        centre = (slice(1, -1), slice(1, -1))
        same[centre] = True
        for rows, cols in (
            (slice(None, -2), slice(1, -1)),
            (slice(2, None), slice(1, -1)),
            (slice(1, -1), slice(None, -2)),
            (slice(1, -1), slice(2, None)),
        ):
            same[centre] &= surface[centre] == surface[rows, cols]
            same[centre] &= (rendered[centre] * rendered[rows, cols]).sum(-1) > 1 - 1e-9
        flat = same & (surface < rects + boxes)
        assert flat.sum() > 200
        cosine = (from_depth[flat] * rendered[flat]).sum(-1)
        assert cosine.min() > math.cos(math.radians(0.1))
        np.testing.assert_allclose(np.linalg.norm(rendered, axis=-1), 1, atol=1e-5)


def test_depth_ranges_and_cameras_of_each_room_kind(kinds):
    assert set(kinds) == {"room", "corridor", "hall"}
    for sample in kinds.values():
        scene, depth = sample["scene"], sample["exact_depth"]
        prims = scene["scene"]
        # The room's floor is the first rectangle, spanning [0, W] x [0, D].
        width, depth_m = 2 * prims.rect_half[0]
        position = scene["camera_position"]
        assert 0 < position[0] < width and 0 < position[2] < depth_m
        # Farther than a wall only through a doorway (spaces behind are <= 9 m deep).
        assert depth.max() <= math.hypot(width, depth_m, 5.0) + 9.0
        assert depth.min() > 0.05
        profile = CAMERA_PROFILES[scene["camera"]]
        assert profile[1][0] <= position[1] <= profile[1][1]
        forward, down = (
            scene["world_from_camera"][:, 2],
            scene["world_from_camera"][:, 1],
        )
        pitch = math.degrees(math.asin(forward[1]))
        assert profile[2][2] - 1e-6 <= pitch <= profile[2][3] + 1e-6
        right = scene["world_from_camera"][:, 0]
        roll = math.degrees(math.asin(abs(right[1]) / math.hypot(*forward[[0, 2]])))
        assert roll <= profile[3][1] + 1e-6 and down[1] < 0.2
    corridor = kinds["corridor"]["scene"]["scene"]
    assert 2 * corridor.rect_half[0][0] < 2.7 and 2 * corridor.rect_half[0][1] > 5.9


def test_fov_priors():
    rng = np.random.default_rng(0)
    real = np.array([draw_fov(rng, "real") for _ in range(4000)])
    wide = np.array([draw_fov(rng, "wide") for _ in range(1000)])
    assert (
        real.min() >= 24 and real.max() <= 70 and 40 <= wide.min() and wide.max() <= 100
    )
    # Component weights: 25% photo lenses below 42 degrees.
    assert abs((real < 42).mean() - 0.25) < 0.03
    expected = sum(w * (lo + hi) / 2 for w, lo, hi in FOV_PRIORS["real"])
    assert abs(real.mean() - expected) < 0.5
    sample = render_procedural(5, 3, 30, 40, fov_prior="wide")
    fov = focal_to_fov(sample["K"][1, 1], 30)
    assert fov == pytest.approx(sample["scene"]["fov_deg"]) and 40 <= fov <= 100
    assert sample["K"][0, 0] == sample["K"][1, 1] and tuple(sample["K"][:2, 2]) == (
        19.5,
        14.5,
    )


ACTIVE = {**NO_EFFECTS, "kind": "active", "noise_scale": 1.0, "max_range": 6.0,
          "min_range": 0.4}  # fmt: skip


def test_noise_grows_with_distance_and_incidence_as_the_kinect_model():
    rng = np.random.default_rng(0)
    matte = np.zeros((200, 200), np.int64)
    for z, theta in ((1.0, 0.0), (3.0, 0.0), (3.0, 1.0)):
        depth = np.full((200, 200), z)
        measured = apply_sensor(depth, np.full_like(depth, theta), matte, ACTIVE, rng)
        residual = measured - depth
        sigma = 0.0012 + 0.0019 * (z - 0.4) ** 2
        sigma += 0.0001 / math.sqrt(z) * theta**2 / (math.pi / 2 - theta) ** 2
        assert residual.std() == pytest.approx(sigma, rel=0.03)
        assert abs(residual.mean()) < 4 * sigma / 200
    stereo = {**ACTIVE, "kind": "stereo", "noise_scale": 0.005}
    depth = np.full((200, 200), 4.0)
    residual = apply_sensor(depth, np.zeros_like(depth), matte, stereo, rng) - depth
    assert residual.std() == pytest.approx(0.005 * 16, rel=0.03)
    assert axial_sigma(np.array([2.0]), np.array([0.0]), stereo)[0] == pytest.approx(
        0.02
    )


def test_missing_returns_by_range_material_and_edges():
    rng = np.random.default_rng(1)
    depth = np.tile(np.linspace(0.2, 8.0, 400), (300, 1))
    flat = np.zeros_like(depth)
    matte = np.zeros(depth.shape, np.int64)
    measured = apply_sensor(depth, flat, matte, ACTIVE, rng)
    inside = (depth >= 0.4) & (depth <= 6.0)
    assert (measured[inside] > 0).all() and (measured[~inside] == 0).all()
    far = np.full((300, 400), 5.0)
    for material, key, share in (
        ("dark", "dark_drop", 0.6),
        ("glass", "glass_drop", 1.0),
    ):
        sensor = {**ACTIVE, key: share, "noise_scale": 0.0}
        kind = np.full(depth.shape, MATERIALS[material])
        missing = apply_sensor(far, flat, kind, sensor, rng) == 0
        assert missing.mean() == pytest.approx(share, abs=0.02)
        assert not (apply_sensor(far, flat, matte, sensor, rng) == 0).any()
    # A near block in front of a far wall: the far side of its edges loses returns.
    step = np.full((60, 80), 4.0)
    step[20:40, 30:50] = 1.5
    edges = far_side_of_edges(step, 1, left_only=False)
    assert edges[20:40, 29].all() and edges[20:40, 50].all() and edges[19, 30:50].all()
    assert not edges[20:40, 30:50].any() and edges.sum() == 4 * 20
    left = far_side_of_edges(step, 3, left_only=True)
    assert (
        left[20:40, 27:30].all() and left.sum() == 3 * 20
    )  # occlusion band on the left
    sensor = {**ACTIVE, "edge_drop": 1.0, "edge_width": 1, "noise_scale": 0.0}
    measured = apply_sensor(
        step, np.zeros_like(step), np.zeros(step.shape, int), sensor, rng
    )
    assert ((measured == 0) == edges).all()


def test_scenes_are_deterministic_per_seed_and_sensor_stream():
    first = render_procedural(3, seed=1, height=30, width=40)
    again = render_procedural(3, seed=1, height=30, width=40)
    for key in ("depth", "exact_depth", "rgb"):
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(
        first["exact_depth"], render_procedural(4, 1, 30, 40)["exact_depth"]
    )
    assert not np.array_equal(
        first["exact_depth"], render_procedural(3, 2, 30, 40)["exact_depth"]
    )
    exact = render_procedural(3, seed=1, height=30, width=40, sensor=False)
    np.testing.assert_array_equal(exact["exact_depth"], first["exact_depth"])
    np.testing.assert_array_equal(exact["depth"], exact["exact_depth"])
    # Sensors other than the ideal one change the depth.
    kinds = {render_procedural(i, 1, 24, 32)["sensor"]["kind"] for i in range(12)}
    assert kinds == {"ideal", "active", "stereo"}
    noisy = next(
        s
        for s in (render_procedural(i, 1, 24, 32) for i in range(12))
        if s["sensor"]["kind"] == "active"
    )
    valid = noisy["depth"] > 0
    assert not np.array_equal(noisy["depth"][valid], noisy["exact_depth"][valid])
    assert (~valid).any() and valid.mean() > 0.3


def test_show_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["--show", "--count", "8", "--size", "24,32", "--out", str(out)]) == 0
    # Six tiles to a row, each RGB above exact and sensor depth, 2 px borders.
    assert cv2.imread(str(out)).shape == (2 * (3 * 24 + 4), 6 * (32 + 4), 3)
    assert main(["--show", "--size", "4,x", "--out", str(out)]) == 2
    assert main(["--show", "--count", "0", "--out", str(out)]) == 2
