"""Depth readers: each parses a small file the test writes in the dataset's own format."""

import json
import math
import struct
import zlib

import cv2
import numpy as np
import pytest

from datasets.depth_io import (
    check_intrinsics_fit,
    clean_depth,
    parse_intrinsics,
    read_depth_file,
    read_intrinsics_file,
    write_exr,
)
from datasets.depth_sources import (
    FolderSource,
    KenBurnsSource,
    TaskonomySource,
    read_kenburns,
    read_taskonomy,
    spread_evenly,
)
from datasets.scannet_sens import SensReader
from utils.errors import UserError

H, W = 12, 16


def write_sens(path, frames, depth_shift=1000.0, truncate=0):
    """A ScanNet .sens file, packed field by field as the format describes."""
    k_color = np.diag([500.0, 500.0, 1.0, 1.0]).astype(np.float32)
    k_color[0, 2], k_color[1, 2] = 7.5, 5.5
    k_depth = np.diag([250.0, 251.0, 1.0, 1.0]).astype(np.float32)
    k_depth[0, 2], k_depth[1, 2] = 7.5, 5.5
    name = b"test-sensor"
    data = struct.pack("<I", 4) + struct.pack("<Q", len(name)) + name
    for matrix in (k_color, np.eye(4), k_depth, np.eye(4)):
        data += np.asarray(matrix, "<f4").tobytes()
    data += struct.pack("<ii", 2, 1)  # jpeg colour, zlib depth
    data += struct.pack("<IIII", W, H, W, H)
    data += struct.pack("<f", depth_shift) + struct.pack("<Q", len(frames))
    for i, (color, depth_mm) in enumerate(frames):
        pose = np.eye(4, dtype="<f4")
        pose[0, 3] = i
        ok, jpg = cv2.imencode(".jpg", color)
        assert ok
        packed = zlib.compress(depth_mm.astype("<u2").tobytes())
        data += pose.tobytes() + struct.pack("<QQ", 10 * i, 10 * i + 1)
        data += struct.pack("<QQ", len(jpg), len(packed)) + jpg.tobytes() + packed
    path.write_bytes(data[: len(data) - truncate])


def sens_frames():
    rng = np.random.default_rng(0)
    return [
        (
            np.full((H, W, 3), 40 * (i + 1), np.uint8),
            rng.integers(500, 5000, (H, W)).astype(np.uint16),
        )
        for i in range(2)
    ]


def test_sens_two_frames(tmp_path):
    frames = sens_frames()
    write_sens(tmp_path / "scene.sens", frames)
    sens = SensReader(tmp_path / "scene.sens")
    assert len(sens) == 2 and sens.header.sensor_name == "test-sensor"
    assert (
        sens.header.depth_size == (H, W)
        and sens.header.depth_compression == "zlib_ushort"
    )
    K = sens.depth_intrinsics()
    assert (K[0, 0], K[1, 1], K[0, 2], K[1, 2]) == (250.0, 251.0, 7.5, 5.5)
    for i, (_, depth_mm) in enumerate(frames):
        np.testing.assert_array_equal(sens.depth_raw(i), depth_mm)
        np.testing.assert_allclose(sens.depth(i), depth_mm / 1000.0, rtol=1e-6)
        assert abs(int(sens.color(i).mean()) - 40 * (i + 1)) <= 2
        assert sens.pose(i)[0, 3] == i


@pytest.mark.parametrize("cut", [1, 40, 300])
def test_truncated_sens_is_one_clear_error(tmp_path, cut):
    write_sens(tmp_path / "cut.sens", sens_frames(), truncate=cut)
    with pytest.raises(
        UserError, match=r"cut\.sens' is truncated or corrupt: .*frame 1 of 2"
    ):
        SensReader(tmp_path / "cut.sens")


def test_sens_depth_size_differing_from_header(tmp_path):
    frames = sens_frames()
    frames[1] = (frames[1][0], frames[1][1][:, :-1])  # one column short
    write_sens(tmp_path / "odd.sens", frames)
    sens = SensReader(tmp_path / "odd.sens")
    with pytest.raises(UserError, match="depth of frame 1 has .* 16x12 needs"):
        sens.depth(1)


def test_kenburns_exr_and_json(tmp_path):
    depth = np.random.default_rng(1).uniform(1, 30, (H, W)).astype(np.float32)
    (tmp_path / "city").mkdir()
    (tmp_path / "city-depth").mkdir()
    write_exr(tmp_path / "city-depth" / "00001-tl-depth.exr", depth)
    (tmp_path / "city" / "00001-meta.json").write_text(json.dumps({"fltFov": 60.0}))
    source = KenBurnsSource(tmp_path)
    assert source.scenes() == [[str(tmp_path / "city-depth" / "00001-tl-depth.exr")]]
    frame = source.load(source.scenes()[0][0])
    np.testing.assert_array_equal(frame.depth, depth)
    direct = read_kenburns(
        tmp_path / "city-depth" / "00001-tl-depth.exr",
        tmp_path / "city" / "00001-meta.json",
    )
    np.testing.assert_array_equal(direct[1], frame.K)
    # fltFov spans the larger side (16 px).
    assert frame.K[0, 0] == pytest.approx(8 / math.tan(math.radians(30)))
    (tmp_path / "city" / "00001-meta.json").write_text(json.dumps({"fltFocal": 5}))
    with pytest.raises(UserError, match=r"00001-meta\.json' has no 'fltFov'"):
        source.check(source.scenes()[0][0])


def test_taskonomy_png_and_point_info(tmp_path):
    raw = np.full((H, H), 1024, np.uint16)
    raw[0, 0] = 65535
    depth_dir = tmp_path / "depth_zbuffer" / "taskonomy" / "building"
    info_dir = tmp_path / "point_info" / "taskonomy" / "building"
    depth_dir.mkdir(parents=True)
    info_dir.mkdir(parents=True)
    stem = "point_0_view_0_domain_"
    cv2.imwrite(str(depth_dir / f"{stem}depth_zbuffer.png"), raw)
    (info_dir / f"{stem}point_info.json").write_text(
        json.dumps({"field_of_view_rads": math.radians(75.0), "point_uuid": "x"})
    )
    source = TaskonomySource(tmp_path)
    frame = source.load(source.scenes()[0][0])
    assert frame.depth[0, 0] == 0 and frame.depth[1, 1] == pytest.approx(2.0)
    assert frame.K[1, 1] == pytest.approx(6 / math.tan(math.radians(37.5)))
    (info_dir / f"{stem}point_info.json").write_text(json.dumps({"point_uuid": "x"}))
    with pytest.raises(UserError, match="has no 'field_of_view_rads'"):
        read_taskonomy(
            depth_dir / f"{stem}depth_zbuffer.png", info_dir / f"{stem}point_info.json"
        )


def test_depth_png_folder_intrinsics_once_and_per_file(tmp_path):
    raw = np.full((H, W), 5000, np.uint16)
    raw[2, 3] = 0
    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "0001.png"), raw)
    cv2.imwrite(str(tmp_path / "a" / "0002.png"), raw)
    once = FolderSource(tmp_path, 5000.0, parse_intrinsics("20,21,7.5,5.5"))
    frame = once.load(once.scenes()[0][0])
    assert frame.depth[0, 0] == pytest.approx(1.0) and frame.depth[2, 3] == 0
    assert frame.K[1, 1] == 21
    (tmp_path / "a" / "0001.json").write_text(
        json.dumps({"fx": 30, "fy": 30, "cx": 7.5, "cy": 5.5, "width": W, "height": H})
    )
    with pytest.raises(UserError, match="0002.png' has no intrinsics"):
        FolderSource(tmp_path, 1000.0, None)
    (tmp_path / "a" / "0002.txt").write_text("40 0 7.5\n0 40 5.5\n0 0 1\n")
    per_file = FolderSource(tmp_path, 1000.0, None)
    keys = per_file.scenes()[0]
    assert per_file.load(keys[0]).K[0, 0] == 30 and per_file.load(keys[1]).K[0, 0] == 40
    assert per_file.load(keys[0]).depth[0, 0] == pytest.approx(5.0)


def test_depth_size_differing_from_intrinsics(tmp_path):
    cv2.imwrite(str(tmp_path / "d.png"), np.full((H, W), 900, np.uint16))
    (tmp_path / "d.json").write_text(
        json.dumps(
            {"fx": 30, "fy": 30, "cx": 7.5, "cy": 5.5, "width": 640, "height": 480}
        )
    )
    source = FolderSource(tmp_path, 1000.0, None)
    with pytest.raises(UserError, match="is 16x12 but its intrinsics are for 640x480"):
        source.load(source.scenes()[0][0])
    K, size = read_intrinsics_file(tmp_path / "d.json")
    assert size == (480, 640)
    with pytest.raises(UserError, match="principal point .* outside it"):
        check_intrinsics_fit(parse_intrinsics("500,500,319.5,239.5"), None, (H, W), "d")


def test_invalid_depths_are_masked_counted_and_too_few_valid_is_an_error(tmp_path):
    depth = np.ones((H, W), np.float32)
    depth[0, :3] = np.nan
    depth[1, :2] = np.inf
    depth[2, :4] = 0
    depth[3, 0] = -1
    np.save(tmp_path / "d.npy", depth)
    cleaned, counts = clean_depth(read_depth_file(tmp_path / "d.npy"), "d")
    assert counts == {"nan": 3, "inf": 2, "zero": 5}
    assert np.isfinite(cleaned).all() and (cleaned == 0).sum() == 10
    with pytest.raises(UserError, match="has 0 valid pixels of 192 .*NaN 192"):
        clean_depth(np.full((H, W), np.nan, np.float32), "empty")


def test_bad_depth_files_are_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="bad.png' is not a readable PNG"):
        read_depth_file(tmp_path / "bad.png")
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(UserError, match="expected a single-channel 16-bit PNG"):
        read_depth_file(tmp_path / "rgb.png")
    with pytest.raises(UserError, match="are not fx,fy,cx,cy"):
        parse_intrinsics("1,2,3")


def test_spread_evenly_over_scenes():
    picks = spread_evenly([10, 2, 30], 12)
    per_scene = [sum(1 for s, _ in picks if s == k) for k in range(3)]
    assert per_scene == [5, 2, 5]
    assert [f for s, f in picks if s == 0] == [0, 2, 4, 7, 9]
    assert len(spread_evenly([3, 4], 100)) == 7
