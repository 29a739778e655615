"""extract.py: inputs, outputs, skipping, HDF5, bad input and learned checkpoints."""

from __future__ import annotations

import json

import cv2
import h5py
import numpy as np
import pytest
import skimage.data
import torch

from datasets.hpatches_demo import generate
from evaluators.hpatches import main as eval_main
from extract import main as extract_main


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "cam.png"), skimage.data.camera()[::2, ::2])
    cv2.imwrite(str(folder / "sub" / "coffee.jpg"), skimage.data.coffee()[::2, ::2])
    return folder


def test_folder_list_and_files(images, tmp_path):
    assert (
        extract_main(["--model", "sift", "--images", str(images), "--top-k", "100"])
        == 0
    )
    out = images / "sub" / "coffee.jpg.sift-k100"
    data = np.load(out)
    assert data["keypoints"].shape[1] == 2 and len(data["keypoints"]) <= 100
    assert data["descriptors"].dtype == np.float32
    assert np.allclose(np.linalg.norm(data["descriptors"], axis=1), 1, atol=1e-5)
    assert np.all(np.diff(data["scores"]) <= 0)  # best first
    assert data["imsize"].tolist() == [300, 200]
    # A second run skips the finished file.
    stamp = out.stat().st_mtime_ns
    assert (
        extract_main(["--model", "sift", "--images", str(images), "--top-k", "100"])
        == 0
    )
    assert out.stat().st_mtime_ns == stamp
    listing = tmp_path / "list.txt"
    listing.write_text("imgs/cam.png\n# comment\n\n")
    assert (
        extract_main(
            [
                "--model",
                "orb",
                "--images",
                str(listing),
                "--max-size",
                "128",
                "--out-dir",
                str(tmp_path / "feats"),
            ]
        )
        == 0
    )
    orb = np.load(tmp_path / "feats" / "imgs" / "cam.png.orb-max128")
    assert orb["descriptors"].dtype == np.uint8 and orb["descriptors"].shape[1] == 32
    assert orb["imsize"].tolist() == [128, 128]
    assert orb["original_imsize"].tolist() == [256, 256]


def test_hdf5_layout(images, tmp_path):
    h5 = tmp_path / "feats.h5"
    assert (
        extract_main(["--model", "sift", "--images", str(images), "--h5", str(h5)]) == 0
    )
    with h5py.File(h5) as f:
        assert set(f["sub/coffee.jpg"]) >= {"keypoints", "descriptors", "scores"}
        assert f["cam.png/keypoints"].shape[1] == 2
    assert (
        extract_main(["--model", "sift", "--images", str(images), "--h5", str(h5)]) == 0
    )


def test_bad_image(images, capsys):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert extract_main(["--model", "sift", "--images", str(images)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "broken.png: cannot decode image" in err[0]
    assert extract_main(["--model", "sift", "--images", str(images), "--skip-bad"]) == 0
    assert "broken.png" in capsys.readouterr().err
    assert extract_main(["--model", "sift", "--images", str(images / "nope.png")]) == 2


def _tiny_checkpoint(path, name: str) -> None:
    from models import build_model

    conf = {"name": name, "channels": [8, 8, 16, 16], "head_channels": 16}
    if name == "superpoint":
        conf["descriptor_dim"] = 16
    torch.manual_seed(0)
    model = build_model(conf)
    torch.save({"model": model.state_dict(), "config": {"model": conf}}, path)


@pytest.mark.parametrize("name", ["magicpoint", "superpoint"])
def test_learned_checkpoint(tmp_path, name):
    """HPatches with a learned model: the feature files hold exactly what the model
    gives on the preset's preprocessed image, and every pair's repeatability is the
    metric of those files under the resized ground-truth homography."""
    from datasets.hpatches import (
        adapt_homography,
        image_size,
        preprocess_image,
        read_homography,
        read_image,
    )
    from evaluators.hpatches.metrics import repeatability
    from evaluators.hpatches.presets import PRESETS
    from models.extractor import build_extractor

    ckpt = tmp_path / f"{name}.pt"
    _tiny_checkpoint(ckpt, name)
    root = tmp_path / "hp"
    generate("builtin", root, num_sequences=1, max_size=96, progress=False)
    code = eval_main(
        [
            "--data",
            str(root),
            "--preset",
            "superpoint",
            "--model",
            str(ckpt),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "extractor_conf.detection_threshold=0.0",
            "--num-match-plots",
            "0",
        ]
    )
    assert code == 0
    preset = PRESETS["superpoint"]
    options = {**preset.extractor_conf, "detection_threshold": 0.0}
    extractor = build_extractor(str(ckpt), "cpu", options)
    feats = {}
    for image in sorted(root.glob("*/?.ppm")):
        feats[image] = np.load(next(image.parent.glob(f"{image.name}.*")))
        direct = extractor(preprocess_image(read_image(image, True), preset.resize))
        np.testing.assert_array_equal(feats[image]["keypoints"], direct["keypoints"])
        np.testing.assert_array_equal(feats[image]["scores"], direct["scores"])
        if name == "superpoint":
            np.testing.assert_array_equal(
                feats[image]["descriptors"], direct["descriptors"]
            )
        assert feats[image]["imsize"].tolist() == [320, 240]
        assert len(feats[image]["keypoints"]) > 100
    records = json.loads((tmp_path / "o" / "pairs.json").read_text())
    assert len(records) == 5 * len(feats) // 6 == 10
    shape = (240, 320)
    for record in records:
        sequence, k = root / record["scene"], record["index"]
        first, other = sequence / "1.ppm", sequence / f"{k}.ppm"
        H = adapt_homography(
            read_homography(sequence / f"H_1_{k}"),
            image_size(first),
            image_size(other),
            preset.resize,
        )
        expected = repeatability(
            feats[first]["keypoints"],
            feats[other]["keypoints"],
            H,
            shape,
            shape,
            preset.correct_px,
            feats[first]["scores"],
            feats[other]["scores"],
            preset.top_k,
        )["repeatability"]
        assert expected > 0.05
        assert record["repeatability"] == pytest.approx(expected, rel=1e-9)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    results = summary["results"]["all"]
    assert results["repeatability"] == pytest.approx(
        np.mean([r["repeatability"] for r in records]), rel=1e-9
    )
    if name == "magicpoint":
        assert all("descriptors" not in f.files for f in feats.values())
        assert results["nn_map"] is None
        assert any("no descriptors" in n for n in summary["notes"])
    else:
        assert all(f["descriptors"].shape[1] == 16 for f in feats.values())
        assert 0.0 <= results["nn_map"] <= 1.0
