"""Homographic adaptation: batched == loop, identity, rotation equivariance, erosion."""

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from geometry.homography import valid_mask
from models.superpoint import MagicPoint
from pipelines.homographic_adaptation import (
    adaptation_keypoints,
    erode,
    homographic_adaptation,
    homographic_adaptation_loop,
    model_detector,
    sample_homographies,
)
from utils.errors import UserError

SHAPE = (64, 96)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = MagicPoint({"channels": [8, 8, 16, 16], "head_channels": 16}).eval()
    gray = cv2.resize(skimage.data.camera(), SHAPE[::-1], interpolation=cv2.INTER_AREA)
    image = torch.from_numpy(gray.astype(np.float32) / 255.0)[None, None]
    return model_detector(model), image


def test_identity_only_equals_single_pass(setup):
    detector, image = setup
    result = homographic_adaptation(image, detector, np.eye(3)[None])
    assert torch.equal(result.prob, detector(image)[0])
    assert torch.all(result.count == 1)


@pytest.mark.parametrize("aggregation", ["sum", "mean", "max"])
def test_batched_equals_loop(setup, aggregation):
    detector, image = setup
    Hs = sample_homographies(SHAPE, 7, np.random.default_rng(3))
    fast = homographic_adaptation(
        image, detector, Hs, batch_size=3, aggregation=aggregation
    )
    slow = homographic_adaptation_loop(image, detector, Hs, aggregation=aggregation)
    assert torch.equal(fast.count, slow.count)
    torch.testing.assert_close(fast.prob, slow.prob, atol=2e-5, rtol=0)
    assert fast.count.min() >= 1 and fast.count.max() <= 7


def test_sum_is_mean_over_counted_views_and_max_bounds_it(setup):
    detector, image = setup
    Hs = sample_homographies(SHAPE, 5, np.random.default_rng(1))
    total = homographic_adaptation(image, detector, Hs, aggregation="sum").prob
    mean = homographic_adaptation(image, detector, Hs, aggregation="mean").prob
    peak = homographic_adaptation(image, detector, Hs, aggregation="max").prob
    assert torch.equal(total, mean)
    assert torch.all(peak >= mean - 1e-6)


def test_rotated_image_gives_rotated_keypoints(setup):
    """HA(rot(I), {H_i R^-1}) sees exactly the views HA(I, {H_i}) sees, so its map is
    the rotated map and its keypoints are the rotated keypoints (180 degrees keeps the
    view size; the identity view is left out since rotation makes it a warp)."""
    detector, image = setup
    Hs = sample_homographies(SHAPE, 7, np.random.default_rng(7))[1:]
    h, w = SHAPE
    rotated = torch.rot90(image, k=2, dims=(2, 3))
    R = np.array([[-1.0, 0.0, w - 1.0], [0.0, -1.0, h - 1.0], [0.0, 0.0, 1.0]])
    base = homographic_adaptation(image, detector, Hs)
    turned = homographic_adaptation(rotated, detector, Hs @ np.linalg.inv(R))
    torch.testing.assert_close(
        turned.prob, torch.rot90(base.prob, k=2, dims=(0, 1)), atol=1e-5, rtol=0
    )
    pts, _ = adaptation_keypoints(base.prob, threshold=0.005, nms_radius=2)
    pts_rot, _ = adaptation_keypoints(turned.prob, threshold=0.005, nms_radius=2)
    assert len(pts) > 5
    expected = np.stack([w - 1 - pts[:, 0].numpy(), h - 1 - pts[:, 1].numpy()], 1)
    assert sorted(map(tuple, expected.tolist())) == sorted(
        map(tuple, pts_rot.numpy().tolist())
    )


def test_erode_matches_opencv():
    rng = np.random.default_rng(0)
    for radius in (1, 3):
        H = sample_homographies((40, 50), 2, rng)[1]
        mask = valid_mask((40, 50), np.linalg.inv(H) @ np.diag([1.3, 1.3, 1.0]))
        mask[18:22, 20:26] = False  # a hole inside as well as the invalid border
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
        expected = cv2.erode(mask.astype(np.uint8), kernel) > 0
        # Both paths: OpenCV (the CPU's) and the convolution (other devices').
        for use_opencv in (True, False):
            got = erode(torch.from_numpy(mask)[None], radius, use_opencv)[0].numpy()
            assert np.array_equal(got, expected)
            assert 0 < got.sum() < mask.sum()  # it did erode


def test_sampling_starts_with_identity_and_rejects_bad_input():
    Hs = sample_homographies(SHAPE, 4, np.random.default_rng(0))
    assert Hs.shape == (4, 3, 3) and np.array_equal(Hs[0], np.eye(3))
    assert not np.allclose(Hs[1], np.eye(3))
    with pytest.raises(UserError):
        sample_homographies(SHAPE, 0, np.random.default_rng(0))
    with pytest.raises(UserError, match="aggregation"):
        homographic_adaptation(
            torch.zeros(1, 1, 8, 8), lambda x: x[:, 0], Hs, aggregation="median"
        )
