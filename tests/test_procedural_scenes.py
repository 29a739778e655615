"""Procedural scenes: rendered depth equals a plain per-pixel ray-plane intersection."""

import numpy as np
import pytest

from datasets.procedural_scenes import FOV_RANGE_DEG, main, render_procedural
from geometry.camera import focal_to_fov


def loop_depth(scene, K, u, v):
    """Nearest hit of one pixel's ray: every rectangle's plane, point-in-rectangle test."""
    ray = np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0])
    direction = scene["world_from_camera"] @ ray
    origin = scene["camera_position"]
    rect = scene["rectangles"]
    best, best_index = np.inf, -1
    for i in range(len(rect)):
        n = rect.normal[i]
        if abs(n @ direction) < 1e-12:
            continue
        t = n @ (rect.center[i] - origin) / (n @ direction)
        if t <= 0:
            continue
        offset = origin + t * direction - rect.center[i]
        inside = all(abs(offset @ rect.axes[i, k]) <= rect.half[i, k] for k in range(2))
        if inside and t < best:
            best, best_index = t, i
    return best, best_index


@pytest.mark.parametrize("index", [0, 1, 2])
def test_depth_agrees_with_ray_plane_intersection(index):
    sample = render_procedural(index, seed=7, height=40, width=56)
    scene, K, depth = sample["scene"], sample["K"], sample["depth"]
    rng = np.random.default_rng(index)
    for v, u in zip(rng.integers(0, 40, 40), rng.integers(0, 56, 40)):
        expected, surface = loop_depth(scene, K, u, v)
        assert depth[v, u] == pytest.approx(expected, rel=1e-5)
        assert sample["surface"][v, u] == surface
    # Closed room: every pixel hits a surface.
    assert (depth > 0).all() and (sample["surface"] >= 0).all()


def test_intrinsics_are_exact_and_scenes_deterministic():
    first = render_procedural(3, seed=1, height=30, width=40)
    again = render_procedural(3, seed=1, height=30, width=40)
    other = render_procedural(4, seed=1, height=30, width=40)
    np.testing.assert_array_equal(first["depth"], again["depth"])
    assert not np.array_equal(first["depth"], other["depth"])
    K = first["K"]
    assert K[0, 0] == K[1, 1] and (K[0, 2], K[1, 2]) == (19.5, 14.5)
    fov = focal_to_fov(K[1, 1], 30)
    assert fov == pytest.approx(first["scene"]["fov_deg"])
    fovs = [render_procedural(i, 0, 16, 16)["scene"]["fov_deg"] for i in range(30)]
    assert FOV_RANGE_DEG[0] <= min(fovs) and max(fovs) <= FOV_RANGE_DEG[1]
    assert max(fovs) - min(fovs) > 30


def test_show_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["--show", "--count", "2", "--size", "24,32", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert main(["--show", "--size", "4,x", "--out", str(out)]) == 2
