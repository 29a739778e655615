"""The Middlebury Motorcycle validation frame: calibration, scale checks, validation only."""

import numpy as np
import pytest

import data_gen
from datasets.middlebury import (
    MOTORCYCLE_CALIBRATION,
    disparity_to_frame,
    main,
    motorcycle_frame,
)
from datasets.pointcloud import PointCloudDataset
from geometry.camera import focal_to_fov, project
from utils.errors import UserError

CALIB = {**MOTORCYCLE_CALIBRATION, "width": 16, "height": 12, "vmin": 2.0, "vmax": 40.0}


def test_depth_and_intrinsics_follow_the_calibration_at_any_scale():
    """A scene point seen at full scale and in the 1/4 block-mean image: the downscaled
    intrinsics put it where block means put its pixel, with the same depth."""
    full = np.full((12, 16), 20.0)
    depth, K = disparity_to_frame(full, CALIB)
    expected = CALIB["baseline_mm"] * CALIB["focal"] / (20.0 + CALIB["doffs"]) / 1000
    np.testing.assert_allclose(depth, expected, rtol=1e-6)
    quarter, K4 = disparity_to_frame(np.full((3, 4), 5.0), CALIB)
    np.testing.assert_allclose(quarter, expected, rtol=1e-6)  # same metres
    point = np.array([[0.3, -0.2, 2.0]])
    uv_full, _ = project(point, K)
    uv_quarter, _ = project(point, K4)
    # Pixel centres: full-scale pixel u falls in block (u - 1.5) / 4.
    np.testing.assert_allclose(uv_quarter, (uv_full - 1.5) / 4, atol=1e-9)
    assert K4[1, 1] == pytest.approx(CALIB["focal"] / 4)


@pytest.mark.parametrize(
    "shape, disparity, message",
    [
        ((5, 7), 5.0, "not the calibrated 16x12 divided by one integer"),
        ((3, 4), 20.0, "outside the calibrated 0.5-10.0 px at 1/4 scale"),
    ],
)
def test_frames_of_another_scale_are_refused(shape, disparity, message):
    with pytest.raises(UserError, match=message):
        disparity_to_frame(np.full(shape, disparity), CALIB)


def test_the_bundled_frame():
    depth, K, rgb = motorcycle_frame()
    assert depth.shape == rgb.shape[:2] == (500, 741)
    valid = depth > 0
    assert valid.mean() == pytest.approx(0.9265, abs=1e-3)
    assert depth[valid].min() == pytest.approx(2.110, abs=1e-3)
    assert depth[valid].max() == pytest.approx(5.017, abs=1e-3)
    assert focal_to_fov(K[1, 1], 500) == pytest.approx(28.21, abs=0.01)
    np.testing.assert_allclose(K[:2, 2], [310.818, 254.50175], atol=1e-6)


def test_written_for_evaluation_and_refused_for_training(tmp_path, capsys):
    out = tmp_path / "motorcycle"
    assert data_gen.main(["pointclouds", "--motorcycle", "--out", str(out)]) == 0
    assert len(list((out / "depths").glob("*.npz"))) == 1
    with pytest.raises(UserError, match="validation-only frame"):
        PointCloudDataset({"root": str(out)})
    with pytest.raises(UserError, match="validation-only frame"):
        PointCloudDataset({"root": [str(out)], "weights": [1.0]})
    capsys.readouterr()
    assert data_gen.main(["pointclouds", "--motorcycle", "--procedural", "2",
                          "--out", str(tmp_path / "mixed")]) == 2  # fmt: skip
    assert "writes the validation frame alone" in capsys.readouterr().err
    assert main(["--show", "--out", str(tmp_path / "m.png")]) == 0
