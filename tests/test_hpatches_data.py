"""HPatches layout, protocol resizing and the demo-sequence generator."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datasets.hpatches import (
    EXCLUDED_SEQUENCES,
    HPatchesPairs,
    adapt_homography,
    image_size,
    list_sequences,
    load_sequence,
    parse_resize,
    preprocess_image,
    read_homography,
    resize_plan,
)
from datasets.hpatches_demo import generate
from datasets.hpatches_demo import main as demo_main
from geometry.homography import valid_mask, warp_image, warp_points
from utils.errors import UserError


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    generate("builtin", root, num_sequences=2, max_size=128, progress=False)
    return root


def test_demo_layout_and_homographies(demo):
    names = list_sequences(demo)
    assert names == ["i_astronaut", "i_brick", "v_astronaut", "v_brick"]
    assert list_sequences(demo, split="v") == ["v_astronaut", "v_brick"]
    for name in names:
        seq = load_sequence(demo, name)
        assert [p.name for p in seq.images] == [f"{i}.ppm" for i in range(1, 7)]
        assert len(seq.homographies) == 5
        if name.startswith("i_"):
            assert all(np.array_equal(H, np.eye(3)) for H in seq.homographies)
    assert max(image_size(load_sequence(demo, "v_brick").images[0])) <= 128


def test_demo_homographies_are_exact(demo):
    """Warping image 1 by H_1_k reproduces image k where both are defined."""
    seq = load_sequence(demo, "v_astronaut")
    ref = cv2.imread(str(seq.images[0]), cv2.IMREAD_GRAYSCALE).astype(np.float64)
    for k in (2, 6):
        target = cv2.imread(str(seq.images[k - 1]), cv2.IMREAD_GRAYSCALE)
        target = target.astype(np.float64)
        H = seq.homographies[k - 2]
        warped = warp_image(ref, H, target.shape)
        mask = valid_mask(ref.shape, H, target.shape, erosion_radius=3)
        assert mask.mean() > 0.3
        err = np.abs(warped - target)[mask].mean()
        wrong = np.abs(
            warp_image(ref, H @ np.diag([1.02, 1, 1]), target.shape) - target
        )
        assert err < 6.0 and err < 0.5 * wrong[mask].mean()


def test_demo_is_deterministic_and_skips(tmp_path, demo):
    assert (
        demo_main(
            [
                "--out",
                str(tmp_path),
                "--num-sequences",
                "1",
                "--max-size",
                "128",
                "--kinds",
                "v",
            ]
        )
        == 0
    )
    a = (tmp_path / "v_astronaut" / "4.ppm").read_bytes()
    assert a == (demo / "v_astronaut" / "4.ppm").read_bytes()
    assert (tmp_path / "v_astronaut" / "H_1_3").read_text() == (
        demo / "v_astronaut" / "H_1_3"
    ).read_text()


def test_demo_bad_input(tmp_path, capsys):
    assert demo_main(["--images", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_resize_plans():
    assert resize_plan((480, 640), "240x320") == ((480, 640), (240, 320))
    # Portrait: keep the top-left 3:4 region (pytorch-superpoint), then resize.
    assert resize_plan((1000, 750), "240x320") == ((562, 750), (240, 320))
    assert resize_plan((600, 800), "short480") == ((600, 800), (480, 640))
    assert resize_plan((600, 800), "max400") == ((600, 800), (300, 400))
    assert resize_plan((600, 800), "none") == ((600, 800), (600, 800))
    assert str(parse_resize("short480")) == "short480"
    for bad in ("240by320", "short", "max0"):
        with pytest.raises(UserError, match="resize"):
            parse_resize(bad)


def test_adapted_homography_maps_resized_points():
    rng = np.random.default_rng(0)
    H = np.array([[1.1, 0.05, 10], [-0.02, 0.95, 4], [1e-4, 0, 1]])
    shape0, shape1 = (600, 800), (640, 900)
    p0 = rng.uniform(0, 400, (20, 2))
    p1 = warp_points(p0, H)
    for spec in ("240x320", "short480", "none"):
        Hs = adapt_homography(H, shape0, shape1, spec)
        (c0, o0), (c1, o1) = resize_plan(shape0, spec), resize_plan(shape1, spec)
        s0 = np.array([o0[1] / c0[1], o0[0] / c0[0]])
        s1 = np.array([o1[1] / c1[1], o1[0] / c1[0]])
        q0, q1 = s0 * (p0 + 0.5) - 0.5, s1 * (p1 + 0.5) - 0.5
        assert np.allclose(warp_points(q0, Hs), q1)
    image = np.zeros((1000, 750, 3), np.uint8)
    assert preprocess_image(image, "240x320").shape == (240, 320, 3)


def test_read_homography_errors(tmp_path):
    good = tmp_path / "H_1_2"
    np.savetxt(good, np.eye(3))
    assert np.array_equal(read_homography(good), np.eye(3))
    bad = tmp_path / "H_1_3"
    bad.write_text("1 0 0\n0 1 zero\n0 0 1\n")
    with pytest.raises(UserError, match="H_1_3: malformed"):
        read_homography(bad)
    bad.write_text("1 0 0\n0 1 0\n")
    with pytest.raises(UserError, match="H_1_3: malformed"):
        read_homography(bad)
    with pytest.raises(UserError, match="H_1_4: homography file is missing"):
        read_homography(tmp_path / "H_1_4")


def test_exclusion_list_and_dataset(demo, tmp_path):
    assert len(EXCLUDED_SEQUENCES) == 8 and "v_talent" in EXCLUDED_SEQUENCES
    # A fake excluded sequence is dropped only with exclude=True.
    (tmp_path / "v_talent").mkdir()
    (tmp_path / "i_ok").mkdir()
    assert list_sequences(tmp_path) == ["i_ok", "v_talent"]
    assert list_sequences(tmp_path, exclude=True) == ["i_ok"]
    data = HPatchesPairs(demo, resize="240x320", gray=True)
    sample = data[7]
    assert len(data) == 20
    assert sample["image0"].shape == (1, 240, 320) and sample["H_0to1"].shape == (3, 3)
