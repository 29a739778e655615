"""``export.py homography_adaptation``: files, re-runs, shards, bad input."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from export import main

TINY = [
    "model.channels=[8,8,16,16]",
    "model.head_channels=16",
    "data.image_size=[64,96]",
    "export.num_homographies=3",
    "export.batch_size=2",
    "export.device=cpu",
    "export.precision=fp32",
    "data.layout=folder",
]
CONFIG = "configs/magicpoint_coco_export.yaml"


def write_images(folder: Path, count: int = 3) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    photos = [skimage.data.camera(), skimage.data.coins(), skimage.data.moon()]
    names = []
    for k in range(count):
        name = f"img{k}"
        cv2.imwrite(str(folder / f"{name}.png"), photos[k % 3])
        names.append(name)
    return names


def run(args, capsys):
    code = main(["homography_adaptation", CONFIG, *TINY, "--no-progress", *args])
    return code, capsys.readouterr()


def test_export_writes_labels_and_skips_finished(tmp_path, capsys):
    names = write_images(tmp_path / "images")
    out = tmp_path / "labels"
    code, captured = run(
        ["--images", str(tmp_path / "images"), "--out", str(out)], capsys
    )
    assert code == 0
    counts = []
    for name in names:
        with np.load(out / f"{name}.npz") as data:
            points, scores = data["points"], data["scores"]
            assert tuple(data["image_size"]) == (64, 96)
        assert points.shape == (len(scores), 2) and len(points) > 0
        assert np.all(scores > 0.015) and np.all(np.diff(scores) <= 0)
        assert np.all((points >= 0) & (points < [96, 64]))
        counts.append(len(points))
    assert f"{np.mean(counts):.1f} keypoints/image" in captured.out
    assert "no keypoint" not in captured.err
    before = (out / "img0.npz").stat().st_mtime_ns
    code, captured = run(
        ["--images", str(tmp_path / "images"), "--out", str(out)], capsys
    )
    assert (
        code == 0 and "0 exported" in captured.out and "3 already done" in captured.out
    )
    assert (out / "img0.npz").stat().st_mtime_ns == before
    assert not list(out.glob(".*.tmp"))


def test_labels_of_other_settings_are_recomputed_not_reused(tmp_path, capsys):
    """A re-run reuses a label file only if its provenance record matches this run."""
    import json

    write_images(tmp_path / "images")
    out = tmp_path / "labels"
    images = ["--images", str(tmp_path / "images"), "--out", str(out)]
    assert run(images, capsys)[0] == 0
    with np.load(out / "img0.npz") as data:
        record = json.loads(str(data["provenance"]))
        first = dict(data)
    assert record["precision"] == "fp32" and record["detector"]["id"] == "random"
    assert record["export"]["num_homographies"] == 3
    assert record["image_size"] == [64, 96] and record["source_bytes"] > 0

    # Another detection threshold: every file is stale and recomputed, and says why.
    code, captured = run([*images, "export.detection_threshold=0.02"], capsys)
    assert code == 0 and "3 exported" in captured.out
    assert "recomputed 3 label file(s)" in captured.err
    assert "export.detection_threshold was 0.015, now 0.02" in captured.err
    with np.load(out / "img0.npz") as data:
        assert (
            json.loads(str(data["provenance"]))["export"]["detection_threshold"] == 0.02
        )
        assert np.all(data["scores"] > 0.02)
        assert len(data["points"]) < len(first["points"])

    # A file from before records existed is not trusted either.
    del first["provenance"]
    np.savez(out / "img1.npz", **first)
    code, captured = run([*images, "export.detection_threshold=0.02"], capsys)
    assert "1 exported" in captured.out and "2 already done" in captured.out
    assert "no provenance record" in captured.err


def test_images_without_keypoints_are_reported(tmp_path, capsys):
    write_images(tmp_path / "images")
    args = ["--images", str(tmp_path / "images"), "--out", str(tmp_path / "labels")]
    code, captured = run([*args, "export.detection_threshold=1.5"], capsys)
    assert code == 0 and "0.0 keypoints/image" in captured.out
    assert "3 of 3 exported image(s) have no keypoint" in captured.err


def test_shards_split_the_work_and_agree(tmp_path, capsys):
    write_images(tmp_path / "images", 3)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    images = ["--images", str(tmp_path / "images")]
    assert run([*images, "--out", str(whole)], capsys)[0] == 0
    assert run([*images, "--out", str(parts), "--shard", "0/2"], capsys)[0] == 0
    assert sorted(p.stem for p in parts.glob("*.npz")) == ["img0", "img2"]
    assert run([*images, "--out", str(parts), "--shard", "1/2"], capsys)[0] == 0
    for name in ("img0", "img1", "img2"):
        with np.load(whole / f"{name}.npz") as a, np.load(parts / f"{name}.npz") as b:
            assert np.array_equal(a["points"], b["points"])


def test_corrupt_image_is_skipped_and_listed(tmp_path, capsys):
    write_images(tmp_path / "images", 2)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "labels"
    code, captured = run(
        ["--images", str(tmp_path / "images"), "--out", str(out), "--overlays", "1"],
        capsys,
    )
    assert code == 0
    assert sorted(p.stem for p in out.glob("*.npz")) == ["img0", "img1"]
    assert "broken.jpg" in captured.err and "1 failed" in captured.out
    assert len(list((out / "overlays").glob("*.png"))) == 1


def test_unwritable_output_folder(tmp_path, capsys):
    write_images(tmp_path / "images", 1)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, captured = run(
        ["--images", str(tmp_path / "images"), "--out", str(blocker / "sub")], capsys
    )
    assert code == 2
    assert "file.txt" in captured.err and "not writable" in captured.err
    assert captured.err.count("\n") == 1 or "warning" in captured.err


def test_kitti_split_naming_missing_frames(tmp_path, capsys):
    drive = tmp_path / "kitti" / "2011_09_26" / "2011_09_26_drive_0001_sync"
    write_images(drive / "image_02" / "data", 2)
    split = tmp_path / "kitti" / "train.txt"
    split.write_text(
        "2011_09_26/2011_09_26_drive_0001_sync\n"
        "2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000099.png\n"
    )
    args = [
        "data.layout=kitti",
        f"data.split_files.train={split}",
        "data.kitti_cameras=[image_02]",
        "export.split=train",
    ]
    code, captured = run(
        [*args, "--images", str(tmp_path / "kitti"), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert code == 2
    assert "train.txt:2" in captured.err and "0000000099.png" in captured.err
    split.write_text("2011_09_26/2011_09_26_drive_0001_sync\n")
    code, _ = run(
        [*args, "--images", str(tmp_path / "kitti"), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert code == 0
    found = sorted(p.name for p in (tmp_path / "o").rglob("*.npz"))
    assert found == ["img0.npz", "img1.npz"]


def test_bad_shard_and_unknown_key(tmp_path, capsys):
    write_images(tmp_path / "images", 1)
    code, captured = run(
        [
            "--images",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path / "o"),
            "--shard",
            "3/2",
        ],
        capsys,
    )
    assert code == 2 and "--shard" in captured.err
    code, captured = run(
        [
            "export.num_homographys=3",
            "--images",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "num_homographies" in captured.err


def test_image_listing_layouts_and_label_rescaling(tmp_path):
    from datasets.image_folder import ImageFolder, list_images, load_labels
    from utils.errors import UserError

    conf = dict(ImageFolder.default_conf)
    write_images(tmp_path / "coco" / "train2014", 3)
    write_images(tmp_path / "coco" / "val2014", 1)
    coco = {**conf, "root": str(tmp_path / "coco"), "layout": "coco"}
    assert [e.name for e in list_images(coco, "val")] == ["val2014/img0"]
    assert len(list_images(coco, "train")) == 3 and len(list_images(coco, "all")) == 4
    folder = {**conf, "root": str(tmp_path / "coco"), "val_fraction": 0.25}
    train, val = list_images(folder, "train"), list_images(folder, "val")
    assert len(train) == 3 and len(val) == 1 and not {*train} & {*val}
    with pytest.raises(UserError, match="not a folder"):
        list_images({**conf, "root": str(tmp_path / "nope")}, "all")
    np.savez(
        tmp_path / "a.npz",
        points=np.array([[0.0, 0.0], [99.0, 49.0]]),
        image_size=np.array([50, 100]),
    )
    scaled = load_labels(tmp_path, "a", (100, 200))
    np.testing.assert_allclose(scaled, [[0.5, 0.5], [198.5, 98.5]])
    with pytest.raises(UserError, match="export.py homography_adaptation"):
        load_labels(tmp_path, "missing", (100, 200))


def test_torchrun_with_one_gpu_index_is_refused(tmp_path, capsys, monkeypatch):
    # cuda:N would put every torchrun process on one GPU: refused before any work.
    write_images(tmp_path / "images", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    out = tmp_path / "labels"
    code, captured = run(
        [
            "--images",
            str(tmp_path / "images"),
            "--out",
            str(out),
            "export.device=cuda:1",
        ],
        capsys,
    )
    assert code == 2 and not out.exists()
    assert captured.err.strip().count("\n") == 0
    assert "'cuda:1' puts all 2 torchrun processes on one GPU" in captured.err
