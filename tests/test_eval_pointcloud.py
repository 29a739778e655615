"""``evaluation.py pointcloud``: LeReS order, written clouds and scores, bad inputs."""

import json

import cv2
import numpy as np
import open3d as o3d
import pytest
import torch

import data_gen
import evaluation
from evaluators import pointcloud as pointcloud_eval
from evaluators.pointcloud import predict, recover
from geometry.camera import fov_to_focal, normalize_depth, valid_depth_mask
from models.pointcloud_nets import build_cloud_model
from utils.io import atomic_torch_save

TINY = {"name": "pointnet", "widths": [8, 16], "head": [8]}


def constant_model(target: str, value: float):
    """A regressor whose prediction is ``value`` whatever the cloud (head bias only)."""
    model = build_cloud_model({**TINY, "target": target}).eval()
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.fill_(value - (0.0 if target == "shift" else 1.0))
    conf = {"model": model.conf, "loss": model.loss_conf, "data": {"num_points": 64}}
    return model, conf


def save(model_conf, path):
    model, conf = model_conf
    atomic_torch_save({"model": model.state_dict(), "config": conf}, path)
    return str(path)


def test_focal_then_shift_then_focal():
    depth = np.random.default_rng(0).uniform(1, 5, (24, 32))
    valid = valid_depth_mask(depth)
    models = {
        "focal": constant_model("focal", 2.0),
        "shift": constant_model("shift", 0.1),
    }
    result = recover(
        depth, valid, models, 60.0, np.random.default_rng(0), torch.device("cpu")
    )
    f0 = fov_to_focal(60.0, 24)
    assert result["focal_init"] == pytest.approx(f0)
    assert result["focal_first"] == pytest.approx(f0 / 2, rel=1e-5)
    assert result["focal"] == pytest.approx(f0 / 4, rel=1e-5)
    assert result["shift"] == pytest.approx(0.1, abs=1e-6)
    np.testing.assert_allclose(
        result["corrected"], result["normalised"] - 0.1, atol=1e-6
    )


def test_iterations_compose_shifts_of_renormalised_depths(monkeypatch):
    """A second shift pass reads the corrected depth normalised again; its shift, mapped
    back, leaves a depth proportional to that renormalised depth minus its shift."""
    depth = np.random.default_rng(0).uniform(1, 5, (24, 32))
    valid = valid_depth_mask(depth)
    models = {
        "focal": constant_model("focal", 1.1),
        "shift": constant_model("shift", 0.1),
    }
    cpu = torch.device("cpu")
    once = recover(depth, valid, models, 60.0, np.random.default_rng(0), cpu)
    twice = recover(
        depth, valid, models, 60.0, np.random.default_rng(0), cpu, 1, False, 2
    )
    renormalised = normalize_depth(once["corrected"], valid) - 0.1
    ratio = twice["corrected"][valid] / renormalised[valid]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    assert twice["shift"] != pytest.approx(once["shift"])
    np.testing.assert_allclose(
        twice["corrected"],
        np.where(valid, once["normalised"] - twice["shift"], 0),
        atol=1e-6,
    )
    assert twice["focal"] == pytest.approx(fov_to_focal(60.0, 24) / 1.1**3, rel=1e-5)
    calls = []
    monkeypatch.setattr(
        pointcloud_eval, "predict", lambda model, conf, *a: calls.append(conf) or 1.0
    )
    recover(depth, valid, models, 60.0, np.random.default_rng(0), cpu, 1, False, 3)
    targets = [conf["model"]["target"] for conf in calls]
    assert targets == ["focal"] + ["shift", "focal"] * 3


def test_draws_average_every_prediction(monkeypatch):
    """``draws`` samplings per prediction, in all three passes; ratios averaged
    geometrically (the same clouds one at a time give the same values: eval mode)."""
    torch.manual_seed(0)
    depth = np.random.default_rng(0).uniform(1, 5, (24, 32))
    valid = valid_depth_mask(depth)
    model = build_cloud_model({**TINY, "target": "focal", "log_space": True}).eval()
    conf = {"model": model.conf, "data": {"num_points": 64}}
    K = np.array([[30.0, 0, 15.5], [0, 30.0, 11.5], [0, 0, 1]])
    cpu = torch.device("cpu")
    averaged = predict(model, conf, depth, valid, K, np.random.default_rng(3), cpu, 4)
    rng = np.random.default_rng(3)
    singles = [predict(model, conf, depth, valid, K, rng, cpu) for _ in range(4)]
    assert len(set(singles)) == 4  # the draws differ
    assert averaged == pytest.approx(np.exp(np.mean(np.log(singles))), rel=1e-5)

    seen = []

    def spy(*args):
        seen.append(args[-2:])
        return 1.0

    monkeypatch.setattr(pointcloud_eval, "predict", spy)
    models = {"focal": (model, conf), "shift": (model, conf)}
    recover(depth, valid, models, 60.0, np.random.default_rng(0), cpu, draws=5)
    recover(depth, valid, models, 60.0, np.random.default_rng(0), cpu, 6, True)
    assert seen == [(5, False)] * 3 + [(6, True)] * 3


class MeanX(torch.nn.Module):
    """A focal "model" whose ratio is exp(mean x of the cloud): odd under a mirror."""

    def forward(self, batch):
        return {"value": batch["points"][..., 0].double().mean(1).exp()}


def test_mirror_draws_read_the_reflected_scene():
    """With every pixel drawn, the mirrored draw's x are the negated x (principal point
    reflected), so an odd prediction averages out exactly; without the mirror it does not."""
    depth = np.random.default_rng(0).uniform(1, 5, (6, 8))
    valid = valid_depth_mask(depth)
    conf = {"model": {"target": "focal", "input_channels": 3}, "data": {}}
    conf["data"]["num_points"] = int(valid.sum())
    K = np.array([[9.0, 0, 2.5], [0, 9.0, 3.0], [0, 0, 1]])  # off-centre cx
    cpu = torch.device("cpu")

    def run(mirror):
        rng = np.random.default_rng(1)
        return predict(MeanX(), conf, depth, valid, K, rng, cpu, 2, mirror)

    assert run(True) == pytest.approx(1.0, abs=1e-9)
    assert abs(np.log(run(False))) > 0.05


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pc")
    assert data_gen.main(
        ["pointclouds", "--procedural", "3", "--size", "24,32", "--seed", "5",
         "--no-sensor-effects", "--out", str(root / "test")]
    ) == 0  # fmt: skip
    focal = save(constant_model("focal", 1.1), root / "focal.pt")
    shift = save(constant_model("shift", 0.05), root / "shift.pt")
    return root, focal, shift


def test_scores_and_clouds_of_a_generated_folder(setup, tmp_path, capsys):
    root, focal, shift = setup
    out = tmp_path / "eval"
    code = evaluation.main(
        ["pointcloud", "--focal-model", focal, "--shift-model", shift,
         "--depth", str(root / "test"), "--distort-shift=-0.25,0.8", "--seed", "1",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("px (vertical FOV") == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 3 and summary["distort_shift"] == [-0.25, 0.8]
    rows = json.loads((out / "predictions.json").read_text())
    for row in rows:  # constant models: baseline shift error = |true shift|
        assert row["baseline_shift_error"] == pytest.approx(abs(row["true_shift"]))
        assert row["shift_error"] == pytest.approx(abs(0.05 - row["true_shift"]))
        assert row["focal"] == pytest.approx(fov_to_focal(60, 24) / 1.1**2, rel=1e-4)
        assert -0.25 <= row["true_shift"] <= 0.8
    medians = np.median([r["fov_error"] for r in rows])
    assert summary["model"]["median FOV error (deg)"] == pytest.approx(medians)
    results = (out / "results.md").read_text()
    assert "| median shift error |" in results
    # One row per depth map: true FOV, start, recovered FOV, errors, shifts.
    for row in rows:
        line = next(
            x for x in results.splitlines() if x.startswith(f"| {row['name']} |")
        )
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[1]) == pytest.approx(row["true_fov"], abs=0.01)
        assert cells[2] == "60"
        assert float(cells[3]) == pytest.approx(row["fov"], abs=0.01)
        assert float(cells[4]) == pytest.approx(row["fov_error"], abs=0.01)
        assert float(cells[5]) == pytest.approx(row["baseline_fov_error"], abs=0.01)
        assert float(cells[8]) == pytest.approx(row["shift_error"], abs=1e-4)
    assert cv2.imread(str(out / "error_cdf.png")) is not None
    cloud = o3d.io.read_point_cloud(str(out / "clouds" / "000000.ply"))
    assert len(cloud.points) == 24 * 32 and cloud.has_colors()


def test_single_png_with_intrinsics_and_rgb(setup, tmp_path, capsys):
    _, focal, shift = setup
    depth = np.full((24, 32), 3000, np.uint16)
    depth[:, 16:] = 1500
    depth[0, 0] = 0
    cv2.imwrite(str(tmp_path / "d.png"), depth)
    cv2.imwrite(str(tmp_path / "d.jpg"), np.full((48, 64, 3), 200, np.uint8))
    out = tmp_path / "eval"
    code = evaluation.main(
        ["pointcloud", "--focal-model", focal, "--shift-model", shift,
         "--depth", str(tmp_path / "d.png"), "--rgb", str(tmp_path / "d.jpg"),
         "--intrinsics", "30,30,15.5,11.5", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert "zero or negative 1" in capsys.readouterr().out
    cloud = o3d.io.read_point_cloud(str(out / "clouds" / "d.ply"))
    assert len(cloud.points) == 24 * 32 - 1
    assert np.allclose(np.asarray(cloud.colors), 200 / 255, atol=0.02)


@pytest.mark.parametrize(
    "case", ["size", "model_target", "missing", "nan", "range", "draws", "iterations"]
)
def test_bad_inputs_one_line_exit_2_nothing_written(setup, tmp_path, capsys, case):
    root, focal, shift = setup
    depth_path = tmp_path / "d.npy"
    depth = np.full((24, 32), 2.0, np.float32)
    args = ["--intrinsics", "30,30,15.5,11.5"]
    if case == "size":
        args = ["--intrinsics", "300,300,319.5,239.5"]
        message = "lies outside it: intrinsics of another image size?"
    elif case == "model_target":
        focal = shift
        message = "--focal-model '" + shift + "' predicts 'shift', not 'focal'"
    elif case == "missing":
        focal = str(tmp_path / "none.pt")
        message = "none.pt' not found"
    elif case == "nan":
        depth[:] = np.nan
        message = "has 0 valid pixels of 768 (NaN 768"
    elif case == "range":
        args += ["--distort-shift", "0.5"]
        message = "--distort-shift '0.5' is not LO,HI"
    elif case == "draws":
        args += ["--draws", "0"]
        message = "--draws must be >= 1, got 0"
    else:
        args += ["--iterations", "0"]
        message = "--iterations must be >= 1, got 0"
    np.save(depth_path, depth)
    out = tmp_path / "eval"
    code = evaluation.main(
        ["pointcloud", "--focal-model", focal, "--shift-model", shift,
         "--depth", str(depth_path), "--out", str(out), *args]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not out.exists()


def test_inference_study_table_of_medians(setup, tmp_path):
    """scripts/pointcloud_study.py: one row per setting; a folder of few maps is run once
    per real seed and its medians pool those runs; the table shows the pooled medians."""
    from scripts import pointcloud_study

    root, focal, shift = setup
    out = tmp_path / "study"
    argv = ["--focal-model", focal, "--shift-model", shift, "--val", str(root / "test"),
            "--draws", "1", "2", "--mirror", "no", "--iterations", "1",
            "--real-seeds", "3", "4", "--out", str(out)]  # fmt: skip
    assert pointcloud_study.main(argv) == 0
    results = json.loads((out / "study.json").read_text())
    assert [r["draws"] for r in results] == [1, 2]
    rows = []
    for seed in (3, 4):
        rows += json.loads(
            (
                out / "runs" / "test" / f"d2_n_i1_s{seed}" / "predictions.json"
            ).read_text()
        )
    pooled = results[1]["folders"]["test"]
    assert pooled["maps"] == 6
    assert pooled["shift_error"] == pytest.approx(
        np.median([abs(0.05 - r["true_shift"]) for r in rows])
    )
    start = np.median([r["baseline_fov_error"] for r in rows])
    assert pooled["ratio"] == pytest.approx(
        np.median([r["fov_error"] for r in rows]) / start
    )
    assert (
        f"{pooled['fov_error']:.2f} ({pooled['ratio']:.2f})"
        in (out / "study.md").read_text()
    )
    few = pointcloud_study.main(
        argv[:-2] + ["--few", "3", "--out", str(tmp_path / "b")]
    )
    assert few == 0
    many = json.loads((tmp_path / "b" / "study.json").read_text())
    assert many[0]["folders"]["test"]["maps"] == 3
