"""Feature-inversion data: offline feature files follow rescale/crop/flips, online
extraction, keep fraction, depth, the built-in split and bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datasets.features import write_features
from datasets.inversion import InversionDataset
from datasets.inversion import main as data_main
from datasets.inversion_sources import BUILTIN_HELD_OUT, builtin_split, list_images
from models.classical import OpenCVExtractor
from utils.errors import UserError

BLOB = 7  # half-size of the flat colour squares around each keypoint


def _write_folder(root: Path, tag: str = "fake", packed: bool = False) -> Path:
    """Three 96 x 128 images of flat colour squares; one feature file each whose
    descriptors are the square's colour, written at half resolution (imsize) as
    extract.py --max-size would."""
    folder = root / "images"
    folder.mkdir(parents=True)
    for index in range(3):
        rng = np.random.default_rng(index)
        image = np.full((96, 128, 3), 128, np.uint8)
        # One square per 32 x 32 cell of a 4 x 3 grid, jittered: squares never overlap.
        cells = np.stack(np.meshgrid(np.arange(4), np.arange(3)), -1).reshape(-1, 2)
        centres = 16 + 32 * cells + rng.integers(-4, 5, (12, 2))
        colors = rng.integers(0, 256, (12, 3), dtype=np.uint8)
        for (x, y), color in zip(centres, colors):
            image[y - BLOB : y + BLOB + 1, x - BLOB : x + BLOB + 1] = color
        path = folder / f"img{index}.png"
        cv2.imwrite(str(path), image[..., ::-1])
        half = (centres + 0.5) / 2 - 0.5
        descriptors = np.packbits(colors > 127, axis=1) if packed else colors / 255.0
        write_features(
            path.with_name(f"{path.name}.{tag}"),
            {
                "keypoints": half.astype(np.float32),
                "scores": rng.random(12).astype(np.float32),
                "descriptors": descriptors.astype(np.uint8 if packed else np.float32),
                "imsize": np.array([64, 48]),
                "original_imsize": np.array([128, 96]),
            },
        )
    return folder


def _conf(folder: Path, **extra) -> dict:
    return {
        "images": str(folder),
        "features": "fake",
        "crop": 64,
        "scale": [64, 160],
        "eval_size": 64,
        "max_points": 100,
        "keep_range": [1.0, 1.0],
        "mask": True,
        "vflip": True,
        **extra,
    }


def test_offline_descriptors_follow_rescale_crop_and_flips(tmp_path):
    dataset = InversionDataset(_conf(_write_folder(tmp_path)), "train")
    assert dataset.descriptor_dim == 3 and dataset.input_channels == 3 + 3 + 1
    checked = 0
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            target, sparse = sample["image"], sample["input"]
            rows, cols = torch.nonzero(sample["keypoint_mask"][0], as_tuple=True)
            assert torch.equal(sparse[-1] > 0, sample["keypoint_mask"][0] > 0)
            # Descriptor = colour of the square the keypoint sits in; colours channels
            # = the target at the pixel. Both must agree wherever a keypoint landed.
            torch.testing.assert_close(
                sparse[:3, rows, cols], target[:, rows, cols], atol=2 / 255, rtol=0
            )
            torch.testing.assert_close(sparse[3:6, rows, cols], target[:, rows, cols])
            checked += len(rows)
    assert checked > 20


def test_dataset_is_deterministic_and_epochs_differ(tmp_path):
    conf = _conf(_write_folder(tmp_path), keep_range=[0.05, 1.0])
    a, b = InversionDataset(conf, "train"), InversionDataset(conf, "train")
    for index in range(3):
        assert torch.equal(a[index]["input"], b[index]["input"])
    b.set_epoch(1)
    assert any(not torch.equal(a[i]["image"], b[i]["image"]) for i in range(3))
    val = InversionDataset(conf, "val")
    val.set_epoch(5)
    assert torch.equal(val[0]["input"], InversionDataset(conf, "val")[0]["input"])


def test_keep_fraction_and_max_points_in_samples(tmp_path):
    folder = _write_folder(tmp_path)
    half = InversionDataset(_conf(folder, keep_range=[0.5, 0.5], crop=0), "val")
    capped = InversionDataset(_conf(folder, max_points=4, crop=0), "val")
    for index in range(3):
        assert len(half[index]["keypoints"]) == 6
        assert len(capped[index]["keypoints"]) == 4


def test_orb_style_packed_descriptors_become_256_channels(tmp_path):
    folder = _write_folder(tmp_path, packed=True)
    dataset = InversionDataset(_conf(folder, colors=False, mask=False), "val")
    assert dataset.descriptor_dim == 8 and dataset.input_channels == 8
    sample = dataset[0]
    mask = sample["keypoint_mask"][0] > 0
    values = sample["input"][:, mask]
    assert set(values.unique().tolist()) == {-1.0, 1.0}
    assert (sample["input"][:, ~mask] == 0).all()


def test_online_sift_and_orb_extraction(tmp_path):
    folder = _write_folder(tmp_path)
    for kind, dim in (("sift", 128), ("orb", 256)):
        conf = _conf(
            folder, features="online", colors=False, mask=False, crop=0, eval_size=96
        )
        dataset = InversionDataset(conf, "val", extractor=OpenCVExtractor(kind))
        assert dataset.descriptor_dim == dim
        sample = dataset[0]
        assert sample["input"].shape == (dim, 96, 128)
        assert len(sample["keypoints"]) > 0
        written = (sample["input"] != 0).any(0)
        assert torch.equal(written, sample["keypoint_mask"][0] > 0)


def test_depth_and_gray_channels(tmp_path):
    folder = _write_folder(tmp_path)
    depth_dir = tmp_path / "depth"
    depth_dir.mkdir()
    for index in range(3):
        depth = np.tile(np.arange(128, dtype=np.float32), (96, 1)) + 1
        np.save(depth_dir / f"img{index}.npy", depth)
    conf = _conf(folder, depth_dir=str(depth_dir), color="gray", crop=0, eval_size=96)
    dataset = InversionDataset(conf, "val")
    assert dataset.input_channels == 3 + 1 + 1 + 1
    sample = dataset[0]
    assert sample["image"].shape == (1, 96, 128)
    mask = sample["keypoint_mask"][0] > 0
    rows, cols = torch.nonzero(mask, as_tuple=True)
    # Depth = column + 1 at full resolution (eval_size 96 keeps the size).
    torch.testing.assert_close(sample["input"][4, rows, cols], cols.float() + 1)


def test_builtin_split_is_fixed_by_name():
    train, test = builtin_split("train"), builtin_split("test")
    assert set(test) == set(BUILTIN_HELD_OUT) and not set(train) & set(test)
    assert len(train) >= 10
    assert [s.name for s in list_images("builtin")] == [f"{n}.png" for n in test]


def test_bad_inputs_one_line(tmp_path):
    folder = _write_folder(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("images/img0.png\nimages/missing.png\n")
    cases = [
        ({"images": str(listing)}, "missing.png"),
        ({"images": str(tmp_path / "nowhere")}, "nowhere"),
        (_conf(folder, features="other"), "img0.png.other"),
        (_conf(folder, keep_range=[0.5, 0.2]), "data.keep_range"),
        (_conf(folder, colour="rgb"), "data.colour"),
    ]
    bad = np.load(folder / "img1.png.fake")
    write_features(
        folder / "img1.png.fake",
        {**dict(bad), "descriptors": np.zeros((12, 5), np.float32)},
    )
    cases.append((_conf(folder), "img1.png.fake"))
    for conf, needle in cases:
        with pytest.raises(UserError, match=needle.replace(".", r"\.")) as err:
            InversionDataset(conf, "train")
        assert "\n" not in str(err.value)


def test_show_writes_a_grid(tmp_path):
    folder = _write_folder(tmp_path)
    out = tmp_path / "grid.png"
    code = data_main(
        [
            "--show",
            "--images",
            str(folder),
            "--features",
            "fake",
            "--count",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    grid = cv2.imread(str(out))
    assert grid.shape[1] == 3 * 256 and grid.shape[0] == 2 * 256


def test_online_superpoint_checkpoint_and_detector_only_refused(tmp_path):
    from models import build_model

    folder = _write_folder(tmp_path)
    for name in ("superpoint", "magicpoint"):
        conf = {"name": name, "channels": [8, 8, 16, 16], "head_channels": 16}
        if name == "superpoint":
            conf["descriptor_dim"] = 16
        torch.manual_seed(0)
        path = tmp_path / f"{name}.pt"
        torch.save(
            {"model": build_model(conf).state_dict(), "config": {"model": conf}}, path
        )
        data = _conf(
            folder,
            features="online",
            extractor=str(path),
            extractor_conf={"detection_threshold": 0.0, "top_k": 50},
            crop=0,
            eval_size=96,
        )
        if name == "magicpoint":
            with pytest.raises(UserError, match="detector-only"):
                InversionDataset(data, "val")
            continue
        dataset = InversionDataset(data, "val")
        assert dataset.descriptor_dim == 16 and dataset.input_channels == 16 + 3 + 1
        sample = dataset[0]
        assert 0 < len(sample["keypoints"]) <= 50
        mask = sample["keypoint_mask"][0] > 0
        norms = sample["input"][:16, mask].norm(dim=0)
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-4, rtol=0)
