"""Camera geometry of the point-cloud module: projections, FOV, normalisation, distortions."""

import numpy as np
import pytest
import torch

from geometry.camera import (
    affine_depth_with_shift,
    depth_to_points,
    focal_to_fov,
    fov_to_focal,
    intrinsics_from_fov,
    normalize_depth,
    normalized_shift,
    project,
    scale_focal,
    shift_bounds,
    surface_normals,
    unproject,
    valid_depth_mask,
)
from utils.errors import UserError


def random_depth(seed: int, shape=(24, 32)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.7, 9.0, shape)


def test_unprojection_then_projection_is_identity_numpy_and_torch():
    rng = np.random.default_rng(0)
    K = np.array([[300.0, 0, 61.5], [0, 280.0, 47.2], [0, 0, 1]])
    uv = rng.uniform(-10, 140, (50, 2))
    depth = rng.uniform(0.1, 20, 50)
    back, z = project(unproject(uv, depth, K), K)
    np.testing.assert_allclose(back, uv, atol=1e-9)
    np.testing.assert_allclose(z, depth)
    # Batched torch, float64: same identity, and points equal the formula x = (u-cx) d / f.
    Kt = torch.from_numpy(np.stack([K, scale_focal(K, 0.7)]))
    uvt = torch.from_numpy(np.stack([uv, uv[::-1].copy()]))
    dt = torch.from_numpy(np.stack([depth, depth[::-1].copy()]))
    points = unproject(uvt, dt, Kt)
    back_t, _ = project(points, Kt)
    torch.testing.assert_close(back_t, uvt)
    expected_x = (uv[0, 0] - K[0, 2]) * depth[0] / K[0, 0]
    assert abs(float(points[0, 0, 0]) - expected_x) < 1e-9


def test_depth_to_points_follows_the_pixel_convention():
    K = intrinsics_from_fov(90.0, 4, 6)  # f = 2, centre (2.5, 1.5)
    depth = np.full((4, 6), 2.0)
    points = depth_to_points(depth, K)
    assert points.shape == (4, 6, 3)
    # Top-left pixel centre is (0, 0): x = (0 - 2.5) * 2 / 2, y = (0 - 1.5) * 2 / 2.
    np.testing.assert_allclose(points[0, 0], [-2.5, -1.5, 2.0])
    np.testing.assert_allclose(points[3, 5], [2.5, 1.5, 2.0])


def test_fov_refers_to_the_image_height_and_round_trips():
    assert fov_to_focal(90.0, 480) == pytest.approx(240.0)
    for fov in (40.0, 60.0, 100.0):
        assert focal_to_fov(fov_to_focal(fov, 123), 123) == pytest.approx(fov)
    K = intrinsics_from_fov(60.0, 96, 128)
    assert K[1, 1] == pytest.approx(48 / np.tan(np.radians(30)))
    with pytest.raises(UserError, match="not in"):
        fov_to_focal(180.0, 10)


def test_leres_normalisation_min_offset_and_percentile():
    depth = random_depth(1)
    depth[0, :5] = 0.0
    valid = valid_depth_mask(depth)
    out = normalize_depth(depth, valid)
    values = depth[valid]
    moved = values - values.min() + 0.5
    p98 = np.percentile(moved, 98)
    assert out[~valid].sum() == 0
    assert out[valid].min() == pytest.approx(0.5 / p98, rel=1e-6)
    assert np.percentile(out[valid], 98) == pytest.approx(1.0, rel=1e-6)
    # An additive shift of the input is removed entirely; a scale is not (the +0.5).
    np.testing.assert_allclose(normalize_depth(depth + 7, valid), out, rtol=1e-5)
    assert np.abs(normalize_depth(3 * depth, valid) - out).max() > 0.01


def test_affine_depth_has_exactly_the_requested_normalised_shift():
    depth = random_depth(2)
    valid = valid_depth_mask(depth)
    lower, upper = shift_bounds(depth, valid)
    for shift in (-0.25, 0.0, 0.3, 0.8):
        shift = max(shift, 0.9 * lower)
        affine, scale = affine_depth_with_shift(depth, valid, shift, offset=4.0)
        corrected = normalize_depth(affine, valid)[valid] - shift
        ratio = corrected / depth[valid]
        assert scale > 0 and upper == 1.0
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    # Undistorted metric depth: normalized_shift is the shift of its own normalisation.
    own = normalize_depth(depth, valid)[valid] - normalized_shift(depth, valid)
    np.testing.assert_allclose(own / depth[valid], (own / depth[valid])[0], rtol=1e-5)
    with pytest.raises(UserError, match="not reachable"):
        affine_depth_with_shift(depth, valid, 1.2)


def test_known_distortion_then_exact_correction_restores_the_cloud():
    depth = random_depth(3)
    valid = valid_depth_mask(depth)
    K = intrinsics_from_fov(70.0, *depth.shape)
    truth = depth_to_points(depth, K)
    shift, ratio = 0.45, 0.8
    affine, _ = affine_depth_with_shift(depth, valid, shift)
    distorted_depth = normalize_depth(affine, valid).astype(np.float64)
    distorted_K = scale_focal(K, ratio)
    distorted = depth_to_points(distorted_depth, distorted_K)
    # The distortion really bends the cloud: it is not a scaled copy of the truth.
    ratio_map = distorted[..., 0] / np.where(truth[..., 0] == 0, 1, truth[..., 0])
    assert np.ptp(ratio_map[valid & (np.abs(truth[..., 0]) > 0.1)]) > 0.1
    corrected = depth_to_points(
        distorted_depth - shift, scale_focal(distorted_K, 1 / ratio)
    )
    scale = corrected[..., 2] / truth[..., 2]
    np.testing.assert_allclose(corrected, truth * scale.mean(), rtol=1e-5, atol=1e-9)


def plane_depth(normal, offset, K, shape=(24, 32)):
    """Depth of the plane ``normal . X = offset`` seen through ``K`` (ray-plane hits)."""
    v, u = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    rays = np.stack(
        [(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1
    )
    return offset / (rays @ normal)


def test_surface_normals_of_a_plane_and_of_its_wrongly_unprojected_cloud():
    K = intrinsics_from_fov(60.0, 24, 32)
    normal = np.array([0.3, -0.2, -1.0]) / np.linalg.norm([0.3, -0.2, -1.0])
    depth = plane_depth(normal, -2.0, K)
    valid = np.ones(depth.shape, bool)
    valid[5, 7] = False
    normals = surface_normals(depth, valid, K)
    inner = np.zeros(depth.shape, bool)
    inner[1:-1, 1:-1] = True
    for r, c in ((5, 7), (4, 7), (6, 7), (5, 6), (5, 8)):
        inner[r, c] = False  # the hole and its four neighbours
    np.testing.assert_allclose(
        normals[inner], np.broadcast_to(normal, (inner.sum(), 3)), atol=1e-9
    )
    assert not normals[~inner].any()
    # A wrong focal length keeps the cloud planar but turns its normal: x and y of every
    # point scale by f_true / f_wrong, so the normal's x and y scale by the inverse.
    wrong = scale_focal(K, 1.5)
    turned = normal * np.array([1.5, 1.5, 1.0])
    np.testing.assert_allclose(
        surface_normals(depth, valid, wrong)[10, 10],
        turned / np.linalg.norm(turned),
        atol=1e-9,
    )


def test_surface_normals_at_pixels_equal_the_dense_ones():
    depth = random_depth(3)
    valid = valid_depth_mask(depth)
    valid[4:6, 9:12] = False
    K = np.array([[20.0, 0, 14.0], [0, 26.0, 12.5], [0, 0, 1]])  # fx != fy, off-centre
    dense = surface_normals(depth, valid, K)
    pixels = np.random.default_rng(0).choice(depth.size, 200, replace=False)
    np.testing.assert_array_equal(
        surface_normals(depth, valid, K, pixels), dense.reshape(-1, 3)[pixels]
    )
    # Unit length where defined, facing the camera (against the ray to the point).
    points = depth_to_points(depth, K).reshape(-1, 3)
    length = np.linalg.norm(dense.reshape(-1, 3), axis=1)
    defined = length > 0
    np.testing.assert_allclose(length[defined], 1.0)
    assert ((dense.reshape(-1, 3) * points).sum(1)[defined] < 0).all()
