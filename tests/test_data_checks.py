"""``--check DIR`` of every real-data reader, on small folders built here.

Each check is run as the user runs it (``python -m datasets.X --check DIR``) on a sound
folder (exit 0, the expected counts) and on the same folder with files removed, cut short
or broken (exit 1, each problem named). A folder that does not exist is a usage error.
"""

from __future__ import annotations

import json
import math
import shutil

import cv2
import numpy as np
import pytest

from datasets.checks import image_file_problem
from datasets.depth_io import write_exr
from datasets.hpatches_demo import generate
from datasets.r2d2_pairs import R2D2PairDataset
from datasets.r2d2_sources import write_flow_png
from tests.commands import run_command
from tests.test_depth_readers import sens_frames, write_sens

RNG = np.random.default_rng(0)


def image(height: int = 24, width: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def cut(path, keep: int = 40) -> None:
    """Truncate a file, as an interrupted download leaves it."""
    path.write_bytes(path.read_bytes()[:keep])


def check(capsys, module: str, *args) -> tuple[int, str]:
    code = run_command(("-m", module), [str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_image_file_problem_finds_what_downloads_leave(tmp_path):
    for suffix in (".jpg", ".png", ".ppm", ".bmp"):
        path = tmp_path / f"sound{suffix}"
        cv2.imwrite(str(path), image())
        assert image_file_problem(path) is None, suffix
        shutil.copy(path, tmp_path / f"cut{suffix}")
        cut(tmp_path / f"cut{suffix}", 60)
    assert "truncated JPEG" in image_file_problem(tmp_path / "cut.jpg")
    assert "truncated PNG" in image_file_problem(tmp_path / "cut.png")
    assert "truncated (60 of" in image_file_problem(tmp_path / "cut.ppm")
    assert "cannot be decoded" in image_file_problem(tmp_path / "cut.bmp")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert image_file_problem(tmp_path / "empty.jpg") == "empty file"
    (tmp_path / "page.jpg").write_text("<html>Not found</html>")
    assert "cannot be decoded" in image_file_problem(tmp_path / "page.jpg")
    assert image_file_problem(tmp_path / "nope.png") == "missing"


def write_sequence(folder, kind_seed: int) -> None:
    folder.mkdir(parents=True)
    for index in range(1, 7):
        cv2.imwrite(str(folder / f"{index}.ppm"), image(8, 8))
    for k in range(2, 7):
        (folder / f"H_1_{k}").write_text(f"1 0 {kind_seed}\n0 1 0\n0 0 1\n")


def test_hpatches_check_counts_a_full_release(tmp_path, capsys):
    release = tmp_path / "hpatches" / "hpatches-sequences-release"
    for n in range(116):
        write_sequence(release / f"{'iv'[n % 2]}_seq{n:03d}", n % 3)
    code, out = check(capsys, "datasets.hpatches", "--check", tmp_path / "hpatches")
    assert code == 0, out
    assert "116 sequences, 696 images, 580 homographies" in out
    assert "58 i_* and 58 v_* sequences" in out and "no problems found" in out


def test_hpatches_check_names_missing_cut_and_malformed_files(tmp_path, capsys):
    root = tmp_path / "hp"
    generate("builtin", root, num_sequences=2, max_size=48, kinds="iv", progress=False)
    code, out = check(capsys, "datasets.hpatches", "--check", root, "--sequences", "0")
    assert code == 0, out
    assert "4 sequences, 24 images, 20 homographies" in out
    # The release count is expected by default.
    code, out = check(capsys, "datasets.hpatches", "--check", root)
    assert code == 1 and "4 sequences where the release has 116" in out
    seq = sorted(p for p in root.iterdir() if p.name.startswith("v_"))[0]
    (seq / "3.ppm").unlink()
    cut(seq / "5.ppm", 100)
    (seq / "H_1_4").write_text("1 0 0\n0 1\n")
    code, out = check(capsys, "datasets.hpatches", "--check", root, "--sequences", "0")
    assert code == 1
    assert "4 sequences, 23 images, 19 homographies" in out
    assert f"{seq / '3.ppm'}: image is missing" in out
    assert f"{seq / '5.ppm'}: truncated" in out
    assert f"{seq / 'H_1_4'}: malformed homography" in out
    assert "3 problems" in out
    code, out = check(capsys, "datasets.hpatches", "--check", tmp_path / "nope")
    assert code == 2 and "HPatches folder does not exist" in out


def test_coco_check_counts_both_splits_and_names_bad_files(tmp_path, capsys):
    root = tmp_path / "coco"
    for split, count in (("train2014", 3), ("val2014", 2)):
        (root / split).mkdir(parents=True)
        for n in range(count):
            cv2.imwrite(str(root / split / f"COCO_{split}_{n:012d}.jpg"), image())
    code, out = check(
        capsys, "datasets.image_folder", "--check", root, "--layout", "coco"
    )
    assert code == 0, out
    assert "3 train2014 images, 2 val2014 images" in out
    cut(root / "train2014" / "COCO_train2014_000000000001.jpg", 200)
    shutil.rmtree(root / "val2014")
    code, out = check(
        capsys, "datasets.image_folder", "--check", root, "--layout", "coco"
    )
    assert code == 1
    assert "COCO_train2014_000000000001.jpg: truncated JPEG" in out
    assert f"{root / 'val2014'}: no images" in out


def test_kitti_check_follows_the_split_files(tmp_path, capsys):
    root = tmp_path / "kitti"
    drive = "2011_09_26/2011_09_26_drive_0001_sync"
    for camera in ("image_02", "image_03"):
        (root / drive / camera / "data").mkdir(parents=True)
        for n in range(2):
            cv2.imwrite(str(root / drive / camera / "data" / f"{n:010d}.png"), image())
    (root / "train.txt").write_text(drive + "\n")
    (root / "val.txt").write_text(drive + "\n")
    args = ("--check", root, "--layout", "kitti")
    code, out = check(capsys, "datasets.image_folder", *args)
    assert code == 0, out
    assert "2 drives listed, 8 frames" in out
    (root / "val.txt").write_text("2011_09_26/2011_09_26_drive_0002_sync\n")
    (root / "train.txt").unlink()
    code, out = check(capsys, "datasets.image_folder", *args)
    assert code == 1
    assert f"{root / 'train.txt'}: split file not found" in out
    assert "val.txt:1: '2011_09_26/2011_09_26_drive_0002_sync' has no frames" in out


def naver_aachen(root) -> None:
    """NAVER's Aachen layout: database images, flow/mask PNGs named after them, styles."""
    db = root / "images_upright" / "db"
    db.mkdir(parents=True)
    for name in ("1001", "1002", "1003"):
        cv2.imwrite(str(db / f"{name}.jpg"), image(48, 64))
    for folder in ("flow", "mask"):
        (root / "optical_flow" / folder).mkdir(parents=True)
    for a, b in (("1001", "1002"), ("1002", "1003")):
        flow = np.full((48, 64, 2), 0.5, np.float32)
        write_flow_png(str(root / "optical_flow" / "flow" / f"{a}_{b}.png"), flow)
        mask = np.full((48, 64), 255, np.uint8)
        cv2.imwrite(str(root / "optical_flow" / "mask" / f"{a}_{b}.png"), mask)
    (root / "style_transfer").mkdir()
    styled = root / "style_transfer" / "1001.jpg.st_7___night.jpg"
    cv2.imwrite(str(styled), image(48, 64))


def test_r2d2_sources_check_and_naver_pair_lists(tmp_path, capsys):
    root = tmp_path / "aachen"
    naver_aachen(root)
    module = "datasets.r2d2_pairs"
    flow, style = root / "optical_flow", root / "style_transfer"
    code, out = check(capsys, module, "--check", flow, "--type", "flow")
    assert code == 1 and "pairs.txt: pair list not found" in out
    assert f"--write-pairs {flow} --type flow" in out
    for folder, kind in ((flow, "flow"), (style, "style")):
        code, out = check(capsys, module, "--write-pairs", folder, "--type", kind)
        assert code == 0, out
    assert (flow / "pairs.txt").read_text().splitlines() == [
        "../images_upright/db/1001.jpg ../images_upright/db/1002.jpg",
        "../images_upright/db/1002.jpg ../images_upright/db/1003.jpg",
    ]
    assert (style / "pairs.txt").read_text() == (
        "../images_upright/db/1001.jpg 1001.jpg.st_7___night.jpg\n"
    )
    code, out = check(capsys, module, "--check", flow, "--type", "flow")
    assert code == 0 and "2 pairs, 2 masks" in out, out
    code, out = check(capsys, module, "--check", style, "--type", "style")
    assert code == 0 and "1 pairs" in out, out
    code, out = check(capsys, module, "--check", root / "images_upright" / "db")
    assert code == 0 and "3 images" in out, out
    # The written lists are what the training sources read.
    conf = {"type": "flow", "root": str(flow)}
    dataset = R2D2PairDataset(
        {"sources": {"f": conf, "s": {"type": "style", "root": str(style)}}}
        | {"crop": 32, "scale": [40, 60]}
    )
    assert len(dataset) == 3 and dataset[0]["aflow"].shape == (2, 32, 32)
    (flow / "flow" / "1002_1003.png").unlink()
    cut(root / "images_upright" / "db" / "1003.jpg", 100)
    code, out = check(capsys, module, "--check", flow, "--type", "flow")
    assert code == 1
    assert "flow/1002_1003.png: missing" in out and "1003.jpg: truncated JPEG" in out
    (root / "images_upright" / "db" / "1002.jpg").unlink()
    code, out = check(capsys, module, "--check", flow, "--type", "flow")
    assert "pairs.txt:1: " in out and "1002.jpg not found" in out


def test_depth_source_checks(tmp_path, capsys):
    module = "datasets.depth_sources"
    scannet = tmp_path / "scannet" / "scans"
    scannet.mkdir(parents=True)
    write_sens(scannet / "scene0000_00.sens", sens_frames())
    write_sens(scannet / "scene0001_00.sens", sens_frames())
    code, out = check(capsys, module, "--check", scannet, "--source", "scannet")
    assert code == 0 and "2 scenes, 4 frames" in out, out
    write_sens(scannet / "scene0001_00.sens", sens_frames(), truncate=40)
    code, out = check(capsys, module, "--check", scannet, "--source", "scannet")
    assert code == 1 and "scene0001_00.sens' is truncated or corrupt" in out

    kenburns = tmp_path / "kenburns"
    (kenburns / "city").mkdir(parents=True)
    (kenburns / "city-depth").mkdir()
    for frame in ("00001", "00002"):
        depth = np.full((12, 16), 5.0, np.float32)
        write_exr(kenburns / "city-depth" / f"{frame}-tl-depth.exr", depth)
        meta = kenburns / "city" / f"{frame}-meta.json"
        meta.write_text(json.dumps({"fltFov": 60.0}))
    code, out = check(capsys, module, "--check", kenburns, "--source", "kenburns")
    assert code == 0 and "1 scenes, 2 frames" in out, out
    (kenburns / "city" / "00002-meta.json").unlink()
    code, out = check(capsys, module, "--check", kenburns, "--source", "kenburns")
    assert code == 1 and "00002-meta.json' not found" in out

    taskonomy = tmp_path / "taskonomy"
    depth_dir = taskonomy / "depth_zbuffer" / "taskonomy" / "building"
    info_dir = taskonomy / "point_info" / "taskonomy" / "building"
    depth_dir.mkdir(parents=True)
    info_dir.mkdir(parents=True)
    stem = "point_0_view_0_domain_"
    cv2.imwrite(str(depth_dir / f"{stem}depth_zbuffer.png"), np.ones((8, 8), np.uint16))
    info = {"field_of_view_rads": math.radians(75.0)}
    (info_dir / f"{stem}point_info.json").write_text(json.dumps(info))
    code, out = check(capsys, module, "--check", taskonomy, "--source", "taskonomy")
    assert code == 0 and "1 scenes, 1 frames" in out, out
    (info_dir / f"{stem}point_info.json").write_text("{}")
    code, out = check(capsys, module, "--check", taskonomy, "--source", "taskonomy")
    assert code == 1 and "has no 'field_of_view_rads'" in out

    folder = tmp_path / "depths"
    folder.mkdir()
    cv2.imwrite(str(folder / "0001.png"), np.full((8, 8), 1000, np.uint16))
    args = ("--check", folder, "--source", "folder")
    code, out = check(capsys, module, *args)
    assert code == 1 and "0001.png' has no intrinsics" in out
    code, out = check(capsys, module, *args, "--shared-intrinsics")
    assert code == 0 and "1 scenes, 1 frames" in out, out
    code, out = check(
        capsys, module, "--check", tmp_path / "nope", "--source", "folder"
    )
    assert code == 2 and "is not a folder" in out


@pytest.mark.parametrize("layout", ["folder", "coco", "kitti"])
def test_image_folder_check_of_a_missing_root_is_a_usage_error(
    tmp_path, capsys, layout
):
    args = ("--check", tmp_path / "nope", "--layout", layout)
    code, out = check(capsys, "datasets.image_folder", *args)
    assert code == 2 and "is not a folder" in out
