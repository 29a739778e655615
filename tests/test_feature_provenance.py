"""Feature files name the model they came from: two runs' ``best.pt`` never share features.

The case this guards against: ``logs/a/checkpoints/best.pt`` and ``logs/b/checkpoints/best.pt``
were both tagged ``best``, so evaluating b after a scored a's cached features.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import train_superpoint
from datasets.features import read_features, read_provenance, write_features
from datasets.hpatches_demo import generate
from evaluators.hpatches import main as eval_main
from extract import main as extract_main
from models.extractor import checkpoint_tag
from tests.test_train_superpoint import CONFIG, SHRINK


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny MagicPoints trained 1 step with different seeds, each saved as best.pt."""
    logs = tmp_path_factory.mktemp("logs")
    for run, seed in (("a", 0), ("b", 1)):
        train_superpoint.run(
            [CONFIG, "--exp", run, "--logdir", str(logs), *SHRINK]
            + ["train.max_steps=1", f"train.seed={seed}"]
        )
    return logs / "a/checkpoints/best.pt", logs / "b/checkpoints/best.pt"


@pytest.fixture(scope="module")
def hpatches(tmp_path_factory):
    root = tmp_path_factory.mktemp("hp")
    generate("builtin", root, num_sequences=1, max_size=160, kinds="v", progress=False)
    return root


def evaluate(data, model, out, *extra):
    code = eval_main(
        ["--data", str(data), "--preset", "superpoint", "--model", str(model)]
        + ["--out", str(out), "--num-match-plots", "0", "--device", "cpu", *extra]
    )
    assert code == 0
    return json.loads((out / "pairs.json").read_text())


def numbers(records):
    return [
        (
            r["scene"],
            r["index"],
            r["repeatability"],
            r["num_keypoints0"],
            r["num_keypoints1"],
        )
        for r in records
    ]


def test_two_best_pt_files_each_get_their_own_numbers(
    two_runs, hpatches, tmp_path, capsys
):
    a, b = two_runs
    # The original collision: both evaluated under one tag.
    alone_b = evaluate(
        hpatches, b, tmp_path / "b_alone", "--features-dir", str(tmp_path / "fb")
    )
    first_a = evaluate(hpatches, a, tmp_path / "a", "--tag", "best-superpoint")
    capsys.readouterr()
    then_b = evaluate(hpatches, b, tmp_path / "b", "--tag", "best-superpoint")
    assert "features best-superpoint: 6 written (6 stale, re-extracted)" in (
        capsys.readouterr().out
    )
    assert numbers(first_a) != numbers(alone_b), "the two models must differ"
    assert numbers(then_b) == numbers(alone_b)
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    record = read_provenance(hpatches / "v_astronaut" / "1.ppm.best-superpoint")
    assert summary["features_extractors"] == [record["extractor"]["id"]]
    assert record["extractor"]["weights"] == str(b) and record["preset"] == "superpoint"
    assert record["image_size"] == [320, 240] and record["resize"] == "240x320"

    # Up to date now: nothing is extracted again.
    capsys.readouterr()
    evaluate(hpatches, b, tmp_path / "b2", "--tag", "best-superpoint")
    assert (
        "features best-superpoint: 0 written, 6 up to date" in capsys.readouterr().out
    )

    # --no-overwrite refuses a's model over b's files, naming the first, touching none.
    before = {p: p.stat().st_mtime_ns for p in hpatches.rglob("*.best-superpoint")}
    code = eval_main(
        ["--data", str(hpatches), "--model", str(a), "--tag", "best-superpoint"]
        + ["--no-overwrite", "--out", str(tmp_path / "refused")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert (
        "v_astronaut/1.ppm.best-superpoint: feature file is stale (extractor.id" in err
    )
    assert before == {p: p.stat().st_mtime_ns for p in before}
    assert not (tmp_path / "refused").exists()


def test_default_tags_name_the_run(two_runs, hpatches, tmp_path, capsys, monkeypatch):
    a, _ = two_runs
    assert checkpoint_tag(a) == "a-best"
    assert checkpoint_tag("logs/x/checkpoints/last_00000300.pt") == "x-last_00000300"
    assert checkpoint_tag("pretrained/superpoint_v1.pth") == "superpoint_v1"
    assert checkpoint_tag("runs/exp3/model.pt") == "exp3-model"
    monkeypatch.chdir(tmp_path)
    code = eval_main(
        ["--data", str(hpatches), "--model", str(a), "--num-match-plots", "0"]
        + ["--device", "cpu"]
    )
    assert code == 0 and "features a-best-superpoint:" in capsys.readouterr().out
    assert (hpatches / "v_astronaut" / "6.ppm.a-best-superpoint").is_file()
    # The output folder names the preset once (not a-best-superpoint-superpoint).
    assert (tmp_path / "outputs/hpatches/a-best-superpoint/results.md").is_file()


def test_old_files_without_record_are_read_but_stale_for_a_model(
    hpatches, tmp_path, capsys
):
    evaluate(hpatches, "sift", tmp_path / "new", "--tag", "old")
    files = sorted(hpatches.rglob("*.old"))
    for path in files:  # rewrite as an earlier version did: no record
        write_features(path, read_features(path).arrays)
        assert read_provenance(path) is None
    code = eval_main(
        ["--data", str(hpatches), "--features", "old", "--out", str(tmp_path / "s")]
        + ["--num-match-plots", "0"]
    )
    assert code == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["features_extractors"] == ["unrecorded"]
    capsys.readouterr()
    code = eval_main(
        ["--data", str(hpatches), "--model", "sift", "--tag", "old", "--no-overwrite"]
        + ["--out", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "feature file is stale (no provenance record" in err
    evaluate(hpatches, "sift", tmp_path / "again", "--tag", "old")
    assert f"{len(files)} written ({len(files)} stale" in capsys.readouterr().out


def test_extract_py_reuses_only_matching_files(two_runs, tmp_path, capsys):
    a, b = two_runs
    image = tmp_path / "img.png"
    cv2.imwrite(
        str(image), (np.random.default_rng(0).random((64, 96)) * 255).astype("uint8")
    )

    def extract(*args):
        code = extract_main(["--images", str(image), *args])
        return code, capsys.readouterr()

    code, out = extract("--model", str(a), "--tag", "t", "--device", "cpu")
    assert code == 0 and "t: 1 written, 0 up to date" in out.out
    record = read_provenance(tmp_path / "img.png.t")
    assert record["options"] == {"precision": "fp32"} and record["preset"] is None
    assert record["original_size"] == [96, 64]
    code, out = extract("--model", str(a), "--tag", "t", "--device", "cpu")
    assert "t: 0 written, 1 up to date" in out.out
    # Other options, another model, or another image size: stale.
    code, out = extract("--model", str(a), "--tag", "t", "nms_radius=2")
    assert "t: 1 written (1 stale, re-extracted)" in out.out
    code, out = extract("--model", str(b), "--tag", "t", "nms_radius=2")
    assert "t: 1 written (1 stale, re-extracted)" in out.out
    cv2.imwrite(str(image), np.zeros((64, 80), np.uint8))
    code, out = extract(
        "--model", str(b), "--tag", "t", "nms_radius=2", "--no-overwrite"
    )
    assert code == 2 and "source image was [96, 64], now [80, 64]" in out.err
    # SIFT records the OpenCV version; the HDF5 layout keeps the same record.
    code, out = extract("--model", "sift", "--h5", str(tmp_path / "f.h5"))
    assert code == 0
    code, out = extract(
        "--model", "orb", "--h5", str(tmp_path / "f.h5"), "--no-overwrite"
    )
    assert (
        code == 2 and "f.h5:img.png: feature file is stale (extractor.id was" in out.err
    )
    assert f"(OpenCV {cv2.__version__})" in out.err
