"""evaluation.py inversion and export.py reconstruct: outputs, numbers equal to scikit-image
on the networks' own predictions, offline feature files, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import evaluation
import export
import extract
import train_reconstruct
import train_refine
from engine.state import latest_checkpoint
from pipelines.reconstruction import evaluation_dataset, load_networks
from tests.helpers import write_photos
from tests.test_inversion_train import coarse_args, refine_args


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three small photographs, a 2-step coarse and a 2-step refiner checkpoint."""
    root = tmp_path_factory.mktemp("inversion_eval")
    photos = write_photos(root / "photos")
    logs = root / "logs"
    train_reconstruct.run(coarse_args(str(photos), logs, "coarse", "train.max_steps=2"))
    coarse = latest_checkpoint(logs / "coarse")
    train_refine.run(
        refine_args(str(photos), logs, "refine", coarse, "train.max_steps=2")
    )
    return photos, coarse, latest_checkpoint(logs / "refine")


def test_evaluation_outputs_and_numbers_equal_scikit_image(tmp_path, runs):
    photos, coarse, refiner = runs
    out = tmp_path / "eval"
    argv = [
        "inversion", "--checkpoint", str(coarse), "--refiner", str(refiner),
        "--images", str(photos), "--model", "sift", "--size", "64",
        "--keep", "0.25", "1.0", "--out", str(out),
    ]  # fmt: skip
    assert evaluation.main(argv) == 0
    for name in ("summary.json", "results.md", "grid_keep0.25.png", "grid_keep1.png"):
        assert (out / name).is_file(), name
    assert (out / "sweep.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    quarter, full = summary["results"]
    methods = ["coarse", "refined", "mean image", "interpolation (linear)"]
    assert list(full["mean"]) == methods
    assert quarter["keypoints"] < full["keypoints"]
    assert len(full["per_image"]) == 3
    for method in methods:
        values = [r["scores"][method]["psnr"] for r in full["per_image"]]
        assert full["mean"][method]["psnr"] == pytest.approx(np.mean(values))
    assert "| interpolation (linear) |" in (out / "results.md").read_text()

    networks = load_networks(str(coarse), str(refiner))
    dataset = evaluation_dataset(networks, str(photos), model="sift", size=64)
    for index, record in enumerate(full["per_image"]):
        sample = dataset[index]
        assert sample["name"] == record["name"]
        predictions = networks.predict(sample["input"][None])
        target = sample["image"].numpy().transpose(1, 2, 0).astype(np.float64)
        for key, method in (("coarse", "coarse"), ("refined", "refined")):
            image = predictions[key][0].clamp(0, 1).double().numpy().transpose(1, 2, 0)
            scores = record["scores"][method]
            assert scores["psnr"] == pytest.approx(
                peak_signal_noise_ratio(target, image, data_range=1.0), abs=1e-6
            )
            assert scores["ssim"] == pytest.approx(
                structural_similarity(target, image, data_range=1.0, channel_axis=2),
                abs=1e-6,
            )


def test_offline_features_and_export_reconstruct(tmp_path, runs):
    photos, coarse, refiner = runs
    images = tmp_path / "photos"
    shutil.copytree(photos, images)
    assert extract.main(["--model", "sift", "--images", str(images)]) == 0
    out = tmp_path / "png"
    argv = [
        "reconstruct", "--checkpoint", str(coarse), "--refiner", str(refiner),
        "--images", str(images), "--features", "sift", "--size", "64", "--out", str(out),
    ]  # fmt: skip
    assert export.main(argv) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["astronaut.png", "chelsea.png", "coffee.png"]
    assert cv2.imread(str(out / "coffee.png")).shape == (64, 85, 3)
    before = (out / "coffee.png").stat().st_mtime_ns
    assert export.main(argv) == 0
    assert (out / "coffee.png").stat().st_mtime_ns == before


def _fails(capsys, main, argv, *needles) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_bad_input_one_line_exit_2_nothing_written(tmp_path, runs, capsys):
    photos, coarse, refiner = runs
    images = tmp_path / "photos"
    shutil.copytree(photos, images)
    assert extract.main(["--model", "orb", "--images", str(images)]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    base = ["--checkpoint", str(coarse), "--images", str(images), "--out", str(out)]
    # ORB files give 256 channels (+3 colours), the network takes 128 + 3.
    _fails(capsys, evaluation.main, ["inversion", *base, "--features", "orb"],
           "256-D", "131 input channels")  # fmt: skip
    _fails(capsys, export.main, ["reconstruct", *base, "--features", "orb"], "256-D")
    listing = tmp_path / "list.txt"
    listing.write_text("photos/coffee.png\nphotos/absent.png\n")
    argv = ["inversion", "--checkpoint", str(coarse), "--images", str(listing),
            "--model", "sift", "--out", str(out)]  # fmt: skip
    _fails(capsys, evaluation.main, argv, "absent.png")
    _fails(capsys, evaluation.main,
           ["inversion", *base, "--model", "sift", "--refiner", str(coarse)],
           "expected 'refiner'")  # fmt: skip
    _fails(capsys, evaluation.main,
           ["inversion", *base, "--model", "sift", "--checkpoint", str(refiner)],
           "expected 'inversion'")  # fmt: skip
    assert not out.exists()
    assert torch.load(coarse, weights_only=True)["step"] == 2
    assert Path(coarse).is_file()
