import numpy as np
import pytest
import torch

from geometry.homography import (
    HomographyConfig,
    points_inside,
    sample_homography,
    scale_homography,
    valid_mask,
    warp_image,
    warp_images,
    warp_points,
)


def test_warp_points_matches_a_hand_computed_point():
    """``p' = H (x, y, 1)^T`` then division by the third coordinate, in NumPy and torch,
    for one ``H`` and for a batch of them (each applied to its own points)."""
    H = np.array([[2.0, 0.5, 3.0], [0.1, 1.0, -4.0], [0.001, 0.002, 1.0]])
    point = np.array([[10.0, 20.0]])
    # (2*10 + 0.5*20 + 3, 0.1*10 + 20 - 4, 0.001*10 + 0.002*20 + 1) = (33, 17, 1.05)
    expected = np.array([[33.0 / 1.05, 17.0 / 1.05]])
    np.testing.assert_allclose(warp_points(point, H), expected, rtol=1e-12)
    torch_out = warp_points(torch.from_numpy(point), torch.from_numpy(H))
    np.testing.assert_allclose(torch_out.numpy(), expected, rtol=1e-12)
    # Batched: the second homography is a pure translation by (5, -7).
    shift = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, -7.0], [0.0, 0.0, 1.0]])
    batch_h = np.stack([H, shift])
    points = np.stack([point, point])
    expected_batch = np.stack([expected, [[15.0, 13.0]]])
    np.testing.assert_allclose(warp_points(points, batch_h), expected_batch, rtol=1e-12)
    torch_batch = warp_points(torch.from_numpy(points), torch.from_numpy(batch_h))
    np.testing.assert_allclose(torch_batch.numpy(), expected_batch, rtol=1e-12)


def test_warp_there_and_back_returns_points():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 100, (50, 2))
    for _ in range(5):
        H = sample_homography((120, 160), rng)
        back = warp_points(warp_points(points, H), np.linalg.inv(H))
        np.testing.assert_allclose(back, points, atol=1e-8)
        torch_back = warp_points(
            warp_points(torch.from_numpy(points), torch.from_numpy(H)),
            torch.from_numpy(np.linalg.inv(H)),
        )
        np.testing.assert_allclose(torch_back.numpy(), points, atol=1e-8)


def test_sampled_patch_stays_inside_without_artifacts():
    rng = np.random.default_rng(1)
    h, w = 120, 160
    corners = np.array(
        [[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]]
    )
    for _ in range(50):
        H = sample_homography((h, w), rng)
        src = warp_points(corners, np.linalg.inv(H))
        assert np.all(src >= -1.0) and np.all(src[:, 0] <= w) and np.all(src[:, 1] <= h)


def test_disabled_perturbations_give_centre_crop_zoom():
    conf = HomographyConfig(
        translation=False, rotation=False, scaling=False, perspective=False
    )
    H = sample_homography((100, 100), np.random.default_rng(0), conf)
    np.testing.assert_allclose(H, [[2, 0, -50], [0, 2, -50], [0, 0, 1]], atol=1e-6)
    with pytest.raises(KeyError, match="bogus"):
        HomographyConfig.from_dict({"bogus": 1})


def test_image_warp_agrees_with_point_warp_opencv_and_torch():
    rng = np.random.default_rng(3)
    image = np.zeros((96, 128), np.float32)
    image[40:43, 60:63] = 1.0  # a 3x3 blob centred on (61, 41)
    H = sample_homography((96, 128), rng, {"patch_ratio": 0.8})
    target = warp_points(np.array([[61.0, 41.0]]), H)[0]
    for warped in (
        warp_image(image, H),
        warp_images(torch.from_numpy(image)[None, None], torch.from_numpy(H)[None])[
            0, 0
        ].numpy(),
    ):
        ys, xs = np.mgrid[: warped.shape[0], : warped.shape[1]]
        centroid = np.array([(xs * warped).sum(), (ys * warped).sum()]) / warped.sum()
        np.testing.assert_allclose(centroid, target, atol=0.3)


def test_valid_mask_identity_is_full_and_matches_torch():
    assert valid_mask((40, 50), np.eye(3), erosion_radius=3).all()
    H = sample_homography(
        (40, 50),
        np.random.default_rng(5),
        {"allow_artifacts": True, "patch_ratio": 0.9},
    )
    np_mask = valid_mask((40, 50), np.linalg.inv(H))
    t_mask = valid_mask((40, 50), torch.from_numpy(np.linalg.inv(H)).float()[None])[
        0
    ].numpy()
    assert (np_mask != t_mask).mean() < 0.01


def test_scale_homography_matches_resized_points():
    rng = np.random.default_rng(7)
    H = sample_homography((480, 640), rng)
    p0 = rng.uniform(0, 400, (20, 2))
    s = np.array([320 / 640, 240 / 480])
    H_small = scale_homography(H, s, s)
    p0_small = s * (p0 + 0.5) - 0.5
    p1_small = s * (warp_points(p0, H) + 0.5) - 0.5
    np.testing.assert_allclose(warp_points(p0_small, H_small), p1_small, atol=1e-8)


def test_points_inside_convention():
    pts = np.array([[-0.5, 0], [-0.51, 0], [9.49, 4.49], [9.5, 0]])
    assert points_inside(pts, (5, 10)).tolist() == [True, False, True, False]


def test_sampling_with_artifacts_never_fails_and_is_deterministic():
    conf = {
        "patch_ratio": 0.8,
        "perspective_amplitude_x": 0.2,
        "perspective_amplitude_y": 0.2,
        "scaling_amplitude": 0.2,
        "allow_artifacts": True,
        "translation_overflow": 0.05,
    }
    first = [
        sample_homography((120, 160), np.random.default_rng(s), conf)
        for s in range(300)
    ]
    again = [
        sample_homography((120, 160), np.random.default_rng(s), conf)
        for s in range(300)
    ]
    assert all(np.isfinite(h).all() for h in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
