import numpy as np
import torch

from geometry.keypoints import extract_keypoints, greedy_nms, nms
from losses.detector import cell_labels, detector_loss
from models.superpoint import (
    MagicPoint,
    SuperPoint,
    logits_to_heatmap,
    sample_descriptors,
)


def test_nms_equals_greedy_loop_on_random_maps():
    gen = torch.Generator().manual_seed(0)
    for radius in (1, 2, 4):
        scores = torch.rand(3, 37, 53, generator=gen) ** 3
        kept, _ = extract_keypoints(scores, threshold=0.05, nms_radius=radius)
        for b in range(3):
            expected = greedy_nms(scores[b].numpy(), radius, threshold=0.05)
            assert set(map(tuple, kept[b].long().tolist())) == set(
                map(tuple, expected.tolist())
            )


def test_nms_keeps_isolated_peaks_and_border_top_k():
    heat = torch.zeros(1, 32, 32)
    heat[0, 10, 10], heat[0, 10, 12], heat[0, 20, 25], heat[0, 1, 1] = (
        0.9,
        0.5,
        0.7,
        0.95,
    )
    assert nms(heat, 4)[0].nonzero().tolist() == [[1, 1], [10, 10], [20, 25]]
    kpts, scores = extract_keypoints(heat, 0.1, 4, border=4, top_k=1)
    assert kpts[0].tolist() == [[10.0, 10.0]] and scores[0].tolist() == [
        0.8999999761581421
    ]


def test_cell_labels_position_and_random_tie_break():
    kmap = torch.zeros(1, 16, 16)
    kmap[0, 3, 5] = 1  # cell (0, 0), position 3 * 8 + 5
    kmap[0, 8, 9], kmap[0, 15, 15] = 1, 1  # two keypoints in cell (1, 1)
    seen = set()
    for seed in range(30):
        labels = cell_labels(kmap, torch.Generator().manual_seed(seed))
        assert labels[0, 0, 0] == 29 and labels[0, 0, 1] == 64 and labels[0, 1, 0] == 64
        seen.add(int(labels[0, 1, 1]))
    assert seen == {0 * 8 + 1, 7 * 8 + 7}


def test_detector_loss_near_zero_for_perfect_logits_and_masks_cells():
    kmap = torch.zeros(2, 32, 32)
    kmap[0, 4, 4], kmap[1, 17, 30] = 1, 1
    labels = cell_labels(kmap)
    logits = torch.nn.functional.one_hot(labels, 65).permute(0, 3, 1, 2).float() * 50
    assert detector_loss(logits, kmap) < 1e-6
    wrong = -logits
    mask = torch.ones(2, 32, 32)
    mask[:, :, :8] = 0
    mask[:, :, 9] = 0  # makes the second cell column invalid too
    full, masked = detector_loss(wrong, kmap), detector_loss(wrong, kmap, mask)
    assert full > 10 and masked > 10
    assert detector_loss(logits, kmap, torch.zeros(2, 32, 32)) == 0


def test_heatmap_depth_to_space_ordering():
    logits = torch.full((1, 65, 2, 3), -20.0)
    logits[0, 64] = 20.0
    logits[0, 8 * 2 + 5, 1, 2] = 40.0  # cell (1, 2), row 2, col 5
    heat = logits_to_heatmap(logits)
    assert heat.shape == (1, 16, 24)
    assert divmod(int(heat[0].argmax()), 24) == (8 + 2, 16 + 5)


def test_descriptor_sampling_at_cell_centres_and_shapes():
    dense = torch.nn.functional.normalize(torch.randn(1, 16, 4, 5), dim=1)
    centres = torch.tensor(
        [[[8 * j + 3.5, 8 * i + 3.5] for i in range(4) for j in range(5)]]
    )
    sampled = sample_descriptors(centres, dense)
    np.testing.assert_allclose(
        sampled[0].numpy(), dense[0].flatten(1).T.numpy(), atol=1e-5
    )
    model = SuperPoint(
        {"channels": [4, 4, 8, 8], "head_channels": 8, "descriptor_dim": 16}
    )
    pred = model({"image": torch.rand(2, 1, 48, 64)})
    assert pred["logits"].shape == (2, 65, 6, 8) and pred[
        "dense_descriptors"
    ].shape == (2, 16, 6, 8)
    out = model.detect(pred, detection_threshold=0.0)
    assert out["descriptors"][0].shape == (len(out["keypoints"][0]), 16)
    assert "dense_descriptors" not in MagicPoint({"channels": [4, 4, 8, 8]})(
        {"image": torch.rand(1, 1, 16, 16)}
    )


def test_layer_names_match_magicleap_release():
    names = {k.split(".")[0] for k in SuperPoint().state_dict()}
    assert names == {
        "conv1a",
        "conv1b",
        "conv2a",
        "conv2b",
        "conv3a",
        "conv3b",
        "conv4a",
        "conv4b",
        "convPa",
        "convPb",
        "convDa",
        "convDb",
    }
    assert SuperPoint().convPb[0].weight.shape == (65, 256, 1, 1)


def test_running_window_max_equals_max_pool():
    from geometry.keypoints import _window_max_1d

    x = torch.rand(2, 23, 31, generator=torch.Generator().manual_seed(3))
    for radius in (1, 2, 3, 4, 7):
        expected = torch.nn.functional.max_pool2d(
            x[:, None], 2 * radius + 1, 1, radius
        )[:, 0]
        got = _window_max_1d(_window_max_1d(x, radius, -1), radius, -2)
        assert torch.equal(got, expected)
