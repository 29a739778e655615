"""Tests of the Synthetic Shapes generator, dataset and cache (datasets/synthetic_shapes.py)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datasets import synthetic_shapes as S
from datasets.synthetic_shapes import painters, primitives, raster
from engine.data import collate
from geometry.homography import points_inside, warp_points
from utils.errors import UserError

SHAPE = (96, 128)


def _area_centroid(polygon: np.ndarray) -> tuple[float, np.ndarray]:
    x, y = polygon[:, 0], polygon[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    centroid = np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (
        6 * area
    )
    return abs(area), centroid


def _coverage_stats(image: np.ndarray, value: float) -> tuple[float, np.ndarray]:
    weight = image.astype(np.float64) / value
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    total = weight.sum()
    return total, np.array([(weight * xs).sum(), (weight * ys).sum()]) / total


def test_paint_polygon_area_and_centroid_are_exact():
    """Anti-aliased coverage integrates to the polygon's area and centroid."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        n = int(rng.integers(3, 7))
        angles = (np.arange(n) + rng.random(n)) * 2 * math.pi / n
        radii = rng.uniform(15, 35, n)
        centre = rng.uniform(40, 60, 2)
        polygon = centre + radii[:, None] * np.stack(
            [np.cos(angles), np.sin(angles)], 1
        )
        image = np.zeros(SHAPE, np.uint8)
        raster.paint_polygon(image, polygon, 200)
        area, centroid = _area_centroid(polygon)
        total, drawn_centroid = _coverage_stats(image, 200)
        assert abs(total - area) / area < 0.01
        assert np.abs(drawn_centroid - centroid).max() < 0.05


def test_paint_segment_is_centred_on_its_ends():
    rng = np.random.default_rng(1)
    for _ in range(5):
        p0, p1 = rng.uniform(20, 80, 2), rng.uniform(20, 80, 2) + [30, 0]
        thickness = rng.uniform(1.5, 4)
        image = np.zeros(SHAPE, np.uint8)
        raster.paint_segment(image, p0, p1, thickness, 250)
        total, centroid = _coverage_stats(image, 250)
        length = np.linalg.norm(p1 - p0)
        capsule = length * thickness + math.pi * thickness**2 / 4
        assert abs(total - capsule) / capsule < 0.03
        assert np.abs(centroid - (p0 + p1) / 2).max() < 0.05


def test_polygon_keypoints_are_the_drawn_vertices():
    """The drawn region is exactly the polygon spanned by the keypoints, in order."""
    for seed in range(4):
        image = np.zeros(SHAPE, np.uint8)
        points = painters.paint_polygon_primitive(image, np.random.default_rng(seed))
        value = float(image.max())
        area, centroid = _area_centroid(points)
        total, drawn_centroid = _coverage_stats(image, value)
        assert len(points) >= 3
        assert abs(total - area) / area < 0.02
        assert np.abs(drawn_centroid - centroid).max() < 0.1


def test_board_junctions_are_exact_saddle_points():
    """cornerSubPix (an independent chessboard-corner refiner) lands on the junctions."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        rows, cols, size = 4, 5, 24
        transform = painters._board_transform(rng, (120, 160), (0.05, 0.15))
        colors = np.where((np.arange(rows)[:, None] + np.arange(cols)) % 2, 60.0, 190.0)
        board = np.repeat(np.repeat(colors, size, axis=0), size, axis=1)
        image = np.full((120, 160), 128, np.uint8)
        raster.paint_board(image, transform, board)
        gx, gy = np.meshgrid(np.arange(1, cols), np.arange(1, rows))
        inner = size * np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)
        junctions = warp_points(inner, transform)
        junctions = junctions[points_inside(junctions, image.shape, border=6)]
        assert len(junctions) >= 6
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 50, 1e-3)
        start = (junctions + [0.7, -0.6]).astype(np.float32).reshape(-1, 1, 2)
        refined = cv2.cornerSubPix(image, start, (4, 4), (-1, -1), criteria)
        assert np.linalg.norm(refined.reshape(-1, 2) - junctions, axis=1).max() < 0.15


def test_checkerboard_keypoints_are_warped_grid_vertices():
    """Labels are the board's (rows + 1) x (cols + 1) vertices that are in the image."""
    for seed in range(3):
        image = np.full((120, 160), 128, np.uint8)
        rng = np.random.default_rng(seed)
        points = painters.paint_checkerboard(image, rng)
        rng = np.random.default_rng(seed)
        rows, cols = int(rng.integers(3, 7)), int(rng.integers(3, 7))
        assert len(points) == (rows + 1) * (cols + 1)


@pytest.mark.parametrize("name", [p for p in S.PRIMITIVES if p != "gaussian_noise"])
def test_keypoints_lie_on_image_structure(name):
    """Every keypoint is inside the image and on a local intensity change."""
    for seed in range(3):
        image, points = S.PRIMITIVE_FUNCTIONS[name](np.random.default_rng(seed), SHAPE)
        assert image.shape == SHAPE and image.dtype == np.uint8
        assert points.dtype == np.float32 and points.shape[1:] == (2,)
        assert points_inside(points, SHAPE).all()
        if name == "draw_ellipses":
            assert len(points) == 0
        for x, y in np.rint(points).astype(int):
            window = image[max(y - 3, 0) : y + 4, max(x - 3, 0) : x + 4]
            assert int(window.max()) - int(window.min()) >= 8, (name, seed, x, y)


def test_cube_hides_one_vertex_and_shows_seven():
    for seed in range(5):
        image = np.zeros((120, 160), np.uint8)
        points = painters.paint_cube(image, np.random.default_rng(seed))
        assert points.shape == (7, 2)
        hull = cv2.convexHull(points.astype(np.float32), returnPoints=False).ravel()
        # Six silhouette vertices plus the front vertex (index 6 here = vertex 7).
        assert len(hull) == 6 and 6 not in hull


def test_noise_and_ellipses_have_no_keypoints():
    for name in ("gaussian_noise", "draw_ellipses"):
        _, points = S.PRIMITIVE_FUNCTIONS[name](np.random.default_rng(0), SHAPE)
        assert points.shape == (0, 2)


def test_generation_is_deterministic_per_seed():
    for name in S.PRIMITIVES:
        a = S.generate_sample(name, S.content_rng(3, name, "train", 7), SHAPE)
        b = S.generate_sample(name, S.content_rng(3, name, "train", 7), SHAPE)
        c = S.generate_sample(name, S.content_rng(4, name, "train", 7), SHAPE)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert not np.array_equal(a[0], c[0])


def test_supersampled_keypoints_follow_pixel_centres():
    rng = np.random.default_rng(5)
    image, points = S.generate_sample("draw_star", rng, (48, 64), supersample=2)
    big, big_points = primitives.draw_star(np.random.default_rng(5), (96, 128))
    expected = (big_points + 0.5) / 2 - 0.5
    assert image.shape == (48, 64)
    np.testing.assert_allclose(points, expected[points_inside(expected, (48, 64))])
    np.testing.assert_array_equal(
        image, cv2.resize(big, (64, 48), interpolation=cv2.INTER_AREA)
    )


def _conf(**extra) -> dict:
    conf = {
        "image_size": [64, 96],
        "split_sizes": {"train": 3, "val": 2, "test": 2},
        "primitives": ["draw_polygon", "draw_checkerboard", "draw_cube"],
    }
    conf.update(extra)
    return conf


AUGMENT = {
    "photometric": {"enable": True},
    "homographic": {"enable": True},
}


def test_dataset_sample_keys_shapes_and_dtypes():
    data = S.SyntheticShapes(_conf(), "val")
    assert len(data) == 6
    sample = data[3]
    assert (
        sample["image"].shape == (1, 64, 96) and sample["image"].dtype == torch.float32
    )
    assert 0 <= sample["image"].min() and sample["image"].max() <= 1
    assert sample["keypoints"].dtype == torch.float32
    assert sample["keypoint_map"].shape == (64, 96)
    assert torch.equal(sample["valid_mask"], torch.ones(64, 96))
    assert sample["primitive"] == "draw_checkerboard" and sample["index"] == 3
    pixels = torch.round(sample["keypoints"]).long()
    assert sample["keypoint_map"][pixels[:, 1], pixels[:, 0]].eq(1).all()
    assert sample["keypoint_map"].sum() == len(torch.unique(pixels, dim=0))
    batch = collate([data[0], data[1]])
    assert batch["image"].shape == (2, 1, 64, 96) and isinstance(
        batch["keypoints"], list
    )


def test_augmented_samples_keep_labels_in_valid_area():
    data = S.SyntheticShapes(_conf(augmentation=AUGMENT), "train")
    data.set_epoch(2)
    for i in range(len(data)):
        sample = data[i]
        points = sample["keypoints"].numpy()
        assert points_inside(points, (64, 96)).all()
        pixels = np.rint(points).astype(int)
        assert sample["valid_mask"].numpy()[pixels[:, 1], pixels[:, 0]].all()
    plain = S.SyntheticShapes(_conf(), "train")
    assert not torch.equal(data[0]["image"], plain[0]["image"])


def test_augmentation_depends_on_epoch_not_on_workers():
    data = S.SyntheticShapes(_conf(augmentation=AUGMENT), "train")
    data.set_epoch(5)
    first = data[4]["image"]
    data.set_epoch(6)
    assert not torch.equal(first, data[4]["image"])
    data.set_epoch(5)
    serial = list(DataLoader(data, batch_size=3, num_workers=0, collate_fn=collate))
    parallel = list(DataLoader(data, batch_size=3, num_workers=2, collate_fn=collate))
    for a, b in zip(serial, parallel):
        assert torch.equal(a["image"], b["image"])
        assert all(torch.equal(x, y) for x, y in zip(a["keypoints"], b["keypoints"]))


def test_val_split_is_not_augmented_by_default():
    a = S.SyntheticShapes(_conf(augmentation=AUGMENT), "val")[0]
    b = S.SyntheticShapes(_conf(), "val")[0]
    assert torch.equal(a["image"], b["image"])


def test_crop_is_a_window_of_the_augmented_sample():
    whole = S.SyntheticShapes(_conf(augmentation=AUGMENT), "train")
    cropped = S.SyntheticShapes(_conf(augmentation=AUGMENT, crop=[40, 56]), "train")
    windows = set()
    for i in range(len(whole)):
        full, part = whole[i], cropped[i]
        assert part["image"].shape == (1, 40, 56)
        # The crop is drawn after the augmentation: find the window in the whole sample.
        image = full["image"][0]
        found = [
            (top, left)
            for top in range(64 - 40 + 1)
            for left in range(96 - 56 + 1)
            if torch.equal(image[top : top + 40, left : left + 56], part["image"][0])
        ]
        assert found, f"sample {i}: the crop is not a window of the augmented image"
        top, left = found[0]
        windows.add((top, left))
        window = (slice(top, top + 40), slice(left, left + 56))
        assert torch.equal(part["valid_mask"], full["valid_mask"][window])
        assert torch.equal(part["keypoint_map"], full["keypoint_map"][window])
        shifted = full["keypoints"] - torch.tensor([left, top], dtype=torch.float32)
        pixels = torch.round(shifted)
        inside = (pixels >= 0).all(1) & (pixels[:, 0] <= 55) & (pixels[:, 1] <= 39)
        assert torch.allclose(part["keypoints"], shifted[inside])
    assert len(windows) > 1, "every sample got the same window"
    val = S.SyntheticShapes(_conf(augmentation=AUGMENT, crop=[40, 56]), "val")
    assert val[0]["image"].shape == (1, 64, 96)  # only augmented splits are cropped
    with pytest.raises(UserError, match=r"data.crop .*8 <= h <= 64"):
        S.SyntheticShapes(_conf(crop=[80, 56]), "train")


def test_cache_matches_on_the_fly_and_is_worker_independent(tmp_path):
    args = [
        "--size", "64", "96",
        "--primitives", "draw_polygon", "draw_checkerboard", "draw_cube",
        "--splits", "val",
        "--split-sizes", "val=2",
        "--shard-size", "1",
    ]  # fmt: skip
    assert S.generate_main(["--out", str(tmp_path / "a"), "--workers", "2", *args]) == 0
    assert S.generate_main(["--out", str(tmp_path / "b"), "--workers", "1", *args]) == 0
    files = sorted((tmp_path / "a").rglob("*.npz"))
    assert len(files) == 6
    for path in files:
        other = tmp_path / "b" / path.relative_to(tmp_path / "a")
        with np.load(path) as x, np.load(other) as y:
            for key in ("images", "keypoints", "offsets"):
                assert np.array_equal(x[key], y[key])
    mtimes = [p.stat().st_mtime_ns for p in files]
    assert S.generate_main(["--out", str(tmp_path / "a"), "--workers", "2", *args]) == 0
    assert mtimes == [p.stat().st_mtime_ns for p in files]

    cached = S.SyntheticShapes(_conf(cache_dir=str(tmp_path / "a")), "val")
    fresh = S.SyntheticShapes(_conf(), "val")
    for i in range(len(fresh)):
        a, b = cached[i], fresh[i]
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["keypoints"], b["keypoints"])


def test_cache_errors_are_user_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="holds only 0"):
        S.SyntheticShapes(_conf(cache_dir=str(tmp_path)), "val")
    args = ["--out", str(tmp_path), "--primitives", "draw_cube", "--splits", "val"]
    assert S.generate_main([*args, "--split-sizes", "val=1", "--size", "32", "48"]) == 0
    with pytest.raises(UserError, match="config asks for"):
        S.SyntheticShapes(
            _conf(cache_dir=str(tmp_path), primitives=["draw_cube"], seed=1), "val"
        )
    assert S.generate_main([*args, "--split-sizes", "val=1", "--seed", "3"]) == 2
    assert S.generate_main([*args, "--primitives", "draw_cubes"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "draw_cubes" in err


def test_config_errors_name_the_key():
    with pytest.raises(UserError, match="image_sise.*image_size"):
        S.SyntheticShapes({"image_sise": [8, 8]})
    with pytest.raises(UserError, match="augmentation.homographic.enabled"):
        S.SyntheticShapes({"augmentation": {"homographic": {"enabled": True}}})
    with pytest.raises(UserError, match="draw_circle"):
        S.SyntheticShapes({"primitives": ["draw_circle"]})
    with pytest.raises(UserError, match="split"):
        S.SyntheticShapes(None, "training")
    with pytest.raises(UserError, match="valid names"):
        S.SyntheticShapes({"augmentation": {"photometric": {"primitives": ["blur"]}}})


def test_show_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    argv = ["--show", "--out", str(out), "--per-primitive", "1", "--size", "32", "48"]
    assert S.main(argv) == 0
    grid = cv2.imread(str(out))
    assert grid.shape == (len(S.PRIMITIVES) * 64, 96, 3)


@pytest.mark.parametrize("background", [0, 255])
def test_show_labels_read_on_dark_and_light_backgrounds(background):
    from datasets.synthetic_shapes.show import draw_label

    image = np.full((40, 160, 3), background, np.uint8)
    draw_label(image, "draw_star")
    label = image[2:20, 2:70].reshape(-1, 3).astype(int)
    text = label[(label != 0).any(axis=1)]
    # Black strip, yellow text: the text is far from the strip whatever lies behind.
    assert (label == 0).all(axis=1).mean() > 0.5 and len(text) > 20
    assert text.sum(axis=1).max() >= 400
