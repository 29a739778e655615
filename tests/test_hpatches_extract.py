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
    pytest.importorskip("models.extractor")
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
    feats = np.load(next(root.glob("*/1.ppm.*")))
    assert feats["imsize"].tolist() == [320, 240]
    assert len(feats["keypoints"]) > 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    results = summary["results"]["all"]
    assert 0.0 <= results["repeatability"] <= 1.0
    if name == "magicpoint":
        assert "descriptors" not in feats.files and results["nn_map"] is None
        assert any("no descriptors" in n for n in summary["notes"])
    else:
        assert feats["descriptors"].shape[1] == 16
        assert 0.0 <= results["nn_map"] <= 1.0
