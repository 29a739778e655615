"""Point-cloud training samples and ``data_gen.py pointclouds``."""

import json

import cv2
import numpy as np
import pytest

import data_gen
from datasets.pointcloud import (
    PointCloudDataset,
    cloud_input,
    distorted_sample,
    main,
    plane_fit_normals,
)
from engine.data import collate
from geometry.camera import depth_to_points, intrinsics_from_fov, surface_normals
from tests.test_camera import plane_depth
from tests.test_depth_readers import sens_frames, write_sens
from utils.errors import UserError

TINY = {"procedural": {"count": 6, "seed": 3, "size": [24, 32]}, "num_points": 64}


def test_samples_are_pure_functions_of_seed_epoch_and_index():
    first = PointCloudDataset(TINY, "train")
    again = PointCloudDataset(TINY, "train")
    a, b = first[1], again[1]
    np.testing.assert_array_equal(a["points"], b["points"])
    assert a["target"] == b["target"]
    again.set_epoch(1)
    assert not np.array_equal(again[1]["points"], a["points"])
    other = PointCloudDataset({**TINY, "seed": 9}, "train")
    assert other[1]["focal_ratio"] != a["focal_ratio"]
    assert len(first) + len(PointCloudDataset(TINY, "val")) == 6
    logs = PointCloudDataset(
        {**TINY, "focal_log_uniform": True, "focal_range": [0.5, 2]}
    )
    ratios = [logs[i]["focal_ratio"] for i in range(len(logs))]
    assert all(0.5 <= r <= 2 for r in ratios) and ratios != [a["focal_ratio"]] * len(
        ratios
    )
    batch = collate([first[0], first[1]])
    assert batch["points"].shape == (2, 64, 3) and batch["target"].shape == (2,)


def test_targets_correct_the_sampled_cloud_exactly():
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 6.0, (20, 28))
    depth[0, 0] = 0.0
    K = intrinsics_from_fov(75.0, 20, 28)
    conf = {**PointCloudDataset.default_conf, "input_channels": 5, "num_points": 200}
    sample = distorted_sample(depth, K, np.random.default_rng(5), conf)
    points, shift = sample["points"].astype(np.float64), float(sample["shift"])
    ratio, scale = float(sample["focal_ratio"]), float(sample["scale"])
    assert shift != 0 and ratio != 1
    # Recover each point's pixel from the uv channels, then its true point.
    u = points[:, 3] * 10 + K[0, 2]
    v = points[:, 4] * 10 + K[1, 2]
    rows, cols = np.round(v).astype(int), np.round(u).astype(int)
    assert np.allclose(u, cols, atol=1e-4) and np.allclose(v, rows, atol=1e-4)
    assert depth[rows, cols].min() > 0
    truth = depth_to_points(depth, K)[rows, cols]
    z = points[:, 2] - shift
    corrected = np.stack(
        [
            points[:, 0] * ratio * z / points[:, 2],
            points[:, 1] * ratio * z / points[:, 2],
            z,
        ],
        -1,
    )
    np.testing.assert_allclose(corrected * scale, truth, rtol=1e-4, atol=1e-6)


def test_six_channels_carry_the_surface_normal_of_the_cloud():
    K = intrinsics_from_fov(75.0, 20, 28)
    normal = np.array([-0.4, 0.1, -1.0]) / np.linalg.norm([-0.4, 0.1, -1.0])
    depth = plane_depth(normal, -3.0, K, (20, 28))
    points = cloud_input(depth, depth > 0, K, 300, np.random.default_rng(0), 6)
    assert points.shape == (300, 6)
    # Inner pixels carry the plane's normal; border pixels (no neighbour on one side) 0.
    normals = points[:, 3:].astype(np.float64)
    inner = np.abs(normals).sum(1) > 0
    assert 0.7 < inner.mean() < 1
    np.testing.assert_allclose(
        normals[inner], np.broadcast_to(normal, (inner.sum(), 3)), atol=1e-5
    )
    np.testing.assert_allclose(
        points[:, :3] @ normal, -3.0 / np.percentile(depth, 98), rtol=1e-4
    )


def test_plane_fit_normals_are_exact_on_planes_and_steady_under_noise():
    K = intrinsics_from_fov(60.0, 40, 56)
    first = np.array([-0.4, 0.1, -1.0]) / np.linalg.norm([-0.4, 0.1, -1.0])
    second = np.array([0.2, -0.5, -1.0]) / np.linalg.norm([0.2, -0.5, -1.0])
    depth = plane_depth(first, -3.0, K, (40, 56))
    depth[:, 28:] = plane_depth(second, -1.5, K, (40, 56))[:, 28:]  # an edge
    valid = depth > 0
    valid[10, 5] = False
    pixels = np.flatnonzero(valid)
    normals = plane_fit_normals(depth, valid, K, pixels, 2)
    truth = np.where((pixels % 56 < 28)[:, None], first, second)
    found = np.abs(normals).sum(1) > 0
    assert found.mean() > 0.99  # the fits do not reach across the edge
    np.testing.assert_allclose(normals[found], truth[found], atol=1e-6)
    noisy = depth + np.random.default_rng(0).normal(0, 0.01 * depth)
    fitted = plane_fit_normals(noisy, valid, K, pixels, 3)
    central = surface_normals(noisy, valid, K, pixels)
    errors = []
    for estimate in (fitted, central):
        ok = np.abs(estimate).sum(1) > 0
        cosine = np.clip((estimate[ok] * truth[ok]).sum(1), -1, 1)
        errors.append(np.median(np.degrees(np.arccos(cosine))))
    assert errors[0] < 4.0 and errors[1] > 3 * errors[0]
    points = cloud_input(depth, valid, K, 200, np.random.default_rng(0), 6, 2)
    assert points.shape == (200, 6)
    np.testing.assert_allclose(np.linalg.norm(points[:, 3:], axis=1), 1, atol=1e-5)


def test_roots_mix_by_weight(tmp_path):
    roots = []
    for seed in (1, 2):
        roots.append(str(tmp_path / f"pc{seed}"))
        assert gen(tmp_path, "--procedural", "6", "--size", "12,16", "--seed",
                   str(seed), "--out", roots[-1]) == 0  # fmt: skip
    conf = {"root": roots, "weights": [3, 1], "num_points": 16, "train_split": 0.5}
    train = PointCloudDataset(conf, "train")
    assert len(train) == 6
    picks = [
        train.item(i, np.random.default_rng([0, epoch, i]))
        for epoch in range(60)
        for i in range(len(train))
    ]
    share = np.mean([source == 0 for source, _ in picks])
    assert share == pytest.approx(0.75, abs=0.06)
    assert {item for _, item in picks} <= set(range(6))
    # Each source draws only from its own training half.
    assert {i for s, i in picks if s == 1} == set(train.parts[1].tolist())
    np.testing.assert_array_equal(
        train[2]["points"], PointCloudDataset(conf, "train")[2]["points"]
    )
    only_first = PointCloudDataset({**conf, "weights": [1, 0]}, "train")
    assert all(
        only_first.item(i, np.random.default_rng([0, 0, i]))[0] == 0 for i in range(6)
    )
    val = PointCloudDataset(conf, "val")
    assert sorted(s for s, _ in val.items) == [0, 0, 0, 1, 1, 1]
    for weights in ([1], [-1, 2], [0, 0]):
        with pytest.raises(UserError, match="data.weights"):
            PointCloudDataset({**conf, "weights": weights})


def test_show_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["--show", "--count", "2", "--out", str(out)]) == 0
    assert cv2.imread(str(out)).shape[0] == 2 * 128


def gen(tmp_path, *args):
    return data_gen.main(["pointclouds", *args])


def test_procedural_generation_is_resumable_and_sharded(tmp_path, capsys):
    out = tmp_path / "pc"
    common = ["--procedural", "5", "--size", "24,32", "--seed", "2", "--out", str(out)]
    assert gen(tmp_path, *common, "--shard", "0/2") == 0
    assert sorted(p.name for p in (out / "depths").iterdir()) == [
        "000000.npz",
        "000002.npz",
        "000004.npz",
    ]
    assert not (out / "focals.npy").exists()
    assert gen(tmp_path, *common, "--shard", "1/2") == 0
    focals, scales = np.load(out / "focals.npy"), np.load(out / "scales.npy")
    assert focals.shape == (5,) and (scales > 0).all()
    assert (out / "histograms.png").stat().st_size > 0
    K = np.load(out / "intrinsics" / "000003.npy")
    with np.load(out / "depths" / "000003.npz") as data:
        assert data["depth"].shape == (24, 32) and (data["depth"] > 0).all()
    assert focals[3] == K[1, 1]
    assert cv2.imread(str(out / "rgb" / "000003.jpg")).shape == (24, 32, 3)
    capsys.readouterr()
    assert gen(tmp_path, *common) == 0
    assert "wrote 0 samples" in capsys.readouterr().out
    assert gen(tmp_path, *common[:-2], "--out", str(out), "--seed", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds another plan" in err[0]


def test_parallel_workers_write_the_same_samples_with_progress(tmp_path, capsys):
    common = ["--procedural", "16", "--size", "12,16", "--seed", "4"]
    assert gen(tmp_path, *common, "--workers", "2", "--out", str(tmp_path / "a")) == 0
    progress = capsys.readouterr().err
    assert "16/16" in progress and "sample" in progress
    assert gen(tmp_path, *common, "--workers", "1", "--out", str(tmp_path / "b")) == 0
    for name in sorted(p.name for p in (tmp_path / "a" / "depths").iterdir()):
        with np.load(tmp_path / "a" / "depths" / name) as a:
            with np.load(tmp_path / "b" / "depths" / name) as b:
                np.testing.assert_array_equal(a["depth"], b["depth"])
    np.testing.assert_array_equal(
        np.load(tmp_path / "a" / "fovs.npy"), np.load(tmp_path / "b" / "fovs.npy")
    )


def test_dataset_sources_spread_and_invalid_pixels_reported(tmp_path, capsys):
    (tmp_path / "scans").mkdir()
    write_sens(tmp_path / "scans" / "s0.sens", sens_frames())
    folder = tmp_path / "folder"
    folder.mkdir()
    depth = np.full((12, 16), 2.0, np.float32)
    depth[0, :4] = np.nan
    depth[1, :2] = np.inf
    np.save(folder / "a.npy", depth)
    out = tmp_path / "out"
    code = gen(
        tmp_path,
        "--scannet", str(tmp_path / "scans"),
        "--folder", str(folder),
        "--intrinsics", "20,20,7.5,5.5",
        "-n", "2,1",
        "--procedural", "1", "--size", "12,16", "--no-sensor-effects",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "NaN 4, inf 2, zero or negative 0" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_source"] == {"scannet": 2, "folder": 1, "procedural": 1}
    with np.load(out / "depths" / "000001.npz") as data:
        np.testing.assert_allclose(
            data["depth"], sens_frames()[1][1] / 1000.0, rtol=1e-6
        )
    with np.load(out / "depths" / "000002.npz") as data:
        assert (data["depth"] == 0).sum() == 6 and list(data["invalid_counts"]) == [
            4,
            2,
            0,
        ]


@pytest.mark.parametrize("case", ["truncated_sens", "kenburns_no_fov", "bad_counts"])
def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    out = tmp_path / "out"
    if case == "truncated_sens":
        (tmp_path / "scans").mkdir()
        write_sens(tmp_path / "scans" / "s.sens", sens_frames(), truncate=9)
        args = ["--scannet", str(tmp_path / "scans"), "-n", "2"]
        message = "s.sens' is truncated or corrupt"
    elif case == "kenburns_no_fov":
        from datasets.depth_io import write_exr

        (tmp_path / "kb" / "x-depth").mkdir(parents=True)
        (tmp_path / "kb" / "x").mkdir()
        write_exr(tmp_path / "kb" / "x-depth" / "00001-tl-depth.exr", np.ones((8, 8)))
        (tmp_path / "kb" / "x" / "00001-meta.json").write_text('{"fltBaseline": 40}')
        args = ["--kenburns", str(tmp_path / "kb"), "-n", "1"]
        message = "has no 'fltFov'"
    else:
        args = ["--procedural", "2", "-n", "3"]
        message = "-n counts samples of"
    assert gen(tmp_path, *args, "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists() or not any(out.rglob("*"))
