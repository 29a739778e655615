"""TensorBoard panels of SuperPoint training: matches, correctness and detection settings
checked on a pair built by hand, whose keypoints, matches and correct ones are known."""

from __future__ import annotations

import numpy as np
import torch

from geometry.keypoints import extract_keypoints
from geometry.matching import match_descriptors
from models.superpoint import SuperPoint, sample_descriptors
from visualization.superpoint import match_panels, panel_matches, superpoint_panels

HC, WC = 8, 12  # 64x96 images
SHIFT = (16.0, 8.0)  # view 1 is view 0 moved 2 cells right, 1 cell down
CONF = SuperPoint.defaults()
# View 0 keypoints (cell row, cell column, score); each sits at pixel (8 j + 3, 8 i + 3).
CELLS0 = [(1, 1, 0.9), (2, 5, 0.8), (4, 3, 0.7), (5, 6, 0.6), (3, 8, 0.5)]


def code(i: int, j: int) -> torch.Tensor:
    """The one-hot descriptor of cell (i, j) of view 0."""
    vector = torch.zeros(HC * WC)
    vector[i * WC + j] = 1.0
    return vector


def pixel(i: int, j: int) -> list[float]:
    return [8.0 * j + 3, 8.0 * i + 3]


def pair() -> tuple[dict, torch.Tensor]:
    """Predictions of a pair with known matches.

    Keypoints 0-2 of view 0 reappear in view 1 moved by SHIFT with the same descriptor:
    three correct mutual matches. Keypoint 3 reappears one cell too far right: a mutual
    match 8 px off, incorrect. Keypoint 4's descriptor leans towards keypoint 0's (0.8) but
    keypoint 0 has an exact partner: a one-way nearest neighbour, not a mutual match.
    """
    heat = torch.zeros(2, 8 * HC, 8 * WC)
    dense = torch.zeros(2, HC * WC, HC, WC)
    for i, j, score in CELLS0[:4]:
        heat[0, 8 * i + 3, 8 * j + 3] = score
        dense[0, :, i, j] = code(i, j)
    i, j, score = CELLS0[4]
    heat[0, 8 * i + 3, 8 * j + 3] = score
    dense[0, :, i, j] = 0.8 * code(1, 1) + 0.6 * code(7, 11)
    for k, (i, j, score) in enumerate(CELLS0[:4]):
        i1, j1 = i + 1, j + 2 + (k == 3)
        heat[1, 8 * i1 + 3, 8 * j1 + 3] = score
        dense[1, :, i1, j1] = code(i, j)
    dense = torch.nn.functional.normalize(dense, dim=1)
    H = torch.tensor([[1.0, 0, SHIFT[0]], [0, 1.0, SHIFT[1]], [0, 0, 1.0]])
    pred = {
        "heatmap0": heat[:1],
        "heatmap1": heat[1:],
        "dense_descriptors0": dense[:1],
        "dense_descriptors1": dense[1:],
    }
    return pred, H[None]


def test_panel_matches_are_geometry_matchings_mutual_neighbours():
    pred, H = pair()
    found = panel_matches(pred, H, CONF, correct_distance=3.0)
    np.testing.assert_array_equal(found.keypoints0, [pixel(i, j) for i, j, _ in CELLS0])
    moved = [pixel(i + 1, j + 2 + (k == 3)) for k, (i, j, _) in enumerate(CELLS0[:4])]
    np.testing.assert_array_equal(found.keypoints1, moved)
    assert found.matches.tolist() == [[0, 0], [1, 1], [2, 2], [3, 3]]
    assert found.correct.tolist() == [True, True, True, False]
    descriptors = [
        sample_descriptors(torch.from_numpy(k)[None], pred[f"dense_descriptors{v}"])[0]
        for k, v in ((found.keypoints0, "0"), (found.keypoints1, "1"))
    ]
    expected, _ = match_descriptors(*descriptors, mutual=True)
    np.testing.assert_array_equal(found.matches, expected)


def test_detection_settings_are_the_model_config():
    pred, H = pair()
    conf = {**CONF, "detection_threshold": 0.55, "remove_borders": 12, "top_k": 2}
    found = panel_matches(pred, H, conf, correct_distance=3.0)
    # Above 0.55: keypoints 0-3; 12 px from the border: not keypoint 0 at (11, 11);
    # the two strongest left: keypoints 1 and 2.
    np.testing.assert_array_equal(found.keypoints0, [pixel(2, 5), pixel(4, 3)])
    reference, _ = extract_keypoints(pred["heatmap0"], 0.55, 4, border=12, top_k=2)
    np.testing.assert_array_equal(found.keypoints0, reference[0].numpy())


def test_match_panel_draws_correct_green_and_wrong_red():
    pred, H = pair()
    images = torch.zeros(1, 1, 8 * HC, 8 * WC)
    batch = {"image0": images, "image1": images, "H_0to1": H}
    panels = match_panels(batch, pred, CONF)
    canvas = (panels["matches"].permute(1, 2, 0) * 255).round().numpy()
    assert canvas.shape == (8 * HC, 2 * 8 * WC, 3)
    # Antialiased lines: count the pixels where one of red and green dominates.
    red, green = canvas[..., 0], canvas[..., 1]
    greens = ((green > 128) & (red < 32)).sum()
    reds = ((red > 128) & (green < 32)).sum()
    assert greens > 2 * reds > 0  # three correct lines, one wrong
    assert set(panels) == {"heatmap0", "heatmap1", "matches"}


def test_magicpoint_panel_draws_the_configured_detections():
    pred, _ = pair()
    keypoint_map = torch.zeros(1, 8 * HC, 8 * WC)
    batch = {"image": torch.zeros(1, 1, 8 * HC, 8 * WC), "keypoint_map": keypoint_map}
    conf = {**CONF, "detection_threshold": 0.75}
    panels = superpoint_panels(conf)(batch, {"heatmap": pred["heatmap0"]})
    overlay = (panels["labels_vs_detections"].permute(1, 2, 0) * 255).round().numpy()
    red = np.argwhere((overlay == [255, 0, 0]).all(-1))[:, ::-1]  # (x, y)
    for x, y in (pixel(1, 1), pixel(2, 5)):  # scores 0.9 and 0.8 drawn, 0.7 not
        assert np.abs(red - [x, y]).max(1).min() == 0
    assert np.abs(red - pixel(4, 3)).max(1).min() > 3
