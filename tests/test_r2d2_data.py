"""Tests of the R2D2 pair dataset: flow encoding, synthetic/flow/still pairs, --show."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from datasets.r2d2_pairs import R2D2PairDataset, main
from datasets.r2d2_sources import read_flow_png, write_flow_png
from engine.data import collate
from geometry.homography import pixel_to_grid
from utils.errors import UserError


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for name in ("astronaut", "coffee", "chelsea"):
        rgb = getattr(skimage.data, name)()
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


def _clean(conf: dict) -> dict:
    """No photometric changes, so image 1 sampled at the flow must equal image 0."""
    return {
        **conf,
        "color_jitter": [0, 0, 0, 0],
        "synthetic": {"scale": [256, 512], "tilt": 0.5, "noise": 0},
        "scale": [256, 512],
    }


def _warp_error(sample: dict, shift: float = 0.0) -> float:
    """Mean |image0 - image1(aflow)| over the mask (flow optionally shifted)."""
    flow = sample["aflow"].permute(1, 2, 0)[None] + shift
    h, w = sample["image1"].shape[-2:]
    grid = pixel_to_grid(torch.nan_to_num(flow, nan=-1e4), (h, w))
    warped = F.grid_sample(sample["image1"][None], grid, align_corners=False)[0]
    mask = sample["mask"]
    return (warped - sample["image0"]).abs().mean(0)[mask].mean().item()


def test_flow_png_roundtrip_and_size_check(tmp_path):
    rng = np.random.default_rng(0)
    flow = rng.uniform(-300, 300, size=(17, 23, 2)).astype(np.float32)
    path = str(tmp_path / "flow.png")
    write_flow_png(path, flow)
    back = read_flow_png(path, (17, 23))
    assert back.shape == (17, 23, 2) and back.dtype == np.float32
    assert np.abs(back - flow).max() <= 1 / 32 + 1e-6  # 1/16 px fixed point
    with pytest.raises(UserError, match="flow.png.*23x17.*40x30"):
        read_flow_png(path, (30, 40))
    grey = str(tmp_path / "grey.png")
    cv2.imwrite(grey, np.zeros((5, 5), np.uint8))
    with pytest.raises(UserError, match="grey.png"):
        read_flow_png(grey)


def test_synthetic_pair_flow_maps_pixels_onto_warped_pixels(image_dir):
    dataset = R2D2PairDataset(
        _clean({"sources": {"web": {"type": "synthetic", "root": str(image_dir)}}})
    )
    assert len(dataset) == 3
    for index in range(3):
        sample = dataset[index]
        assert sample["mask"].float().mean() > 0.3
        aligned = _warp_error(sample)
        assert aligned < 0.04
        assert _warp_error(sample, shift=4.0) > 1.5 * aligned


def test_sample_format_and_epoch_determinism(image_dir):
    conf = {"sources": {"web": {"root": str(image_dir)}}, "crop": 96}
    dataset = R2D2PairDataset(conf)
    sample = dataset[1]
    assert sample["image0"].shape == sample["image1"].shape == (3, 96, 96)
    assert sample["image0"].dtype == torch.float32
    assert 0 <= sample["image0"].min() and sample["image0"].max() <= 1
    assert (
        sample["aflow"].shape == (2, 96, 96) and sample["aflow"].dtype == torch.float32
    )
    assert sample["mask"].shape == (96, 96) and sample["mask"].dtype == torch.bool
    assert torch.isfinite(sample["aflow"][:, sample["mask"]]).all()
    again = R2D2PairDataset(conf)[1]
    assert torch.equal(sample["image1"], again["image1"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]["image1"], sample["image1"])
    batch = collate([dataset[0], dataset[1]])
    assert batch["aflow"].shape == (2, 2, 96, 96) and batch["mask"].shape == (2, 96, 96)


def _write_pair_folder(root, shift=(7, -5)):
    """A flow source: image 1 = image 0 translated by ``shift``; constant flow PNG."""
    (root / "flow").mkdir(parents=True)
    (root / "mask").mkdir()
    rgb = skimage.data.astronaut()[::2, ::2]
    h, w = rgb.shape[:2]
    M = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    moved = cv2.warpAffine(rgb, M, (w, h))
    cv2.imwrite(str(root / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "b.png"), cv2.cvtColor(moved, cv2.COLOR_RGB2BGR))
    flow = np.broadcast_to(np.float32(shift), (h, w, 2))
    write_flow_png(str(root / "flow" / "a_b.png"), flow)
    mask = np.full((h, w), 255, np.uint8)
    mask[:, :20] = 0
    cv2.imwrite(str(root / "mask" / "a_b.png"), mask)
    (root / "pairs.txt").write_text("a.png b.png\n")
    return h, w


def test_flow_and_still_sources(tmp_path, image_dir):
    _write_pair_folder(tmp_path / "flowpairs")
    still = tmp_path / "still"
    still.mkdir()
    (still / "pairs.txt").write_text(
        f"{image_dir / 'coffee.png'} {image_dir / 'coffee.png'}\n"
    )
    conf = _clean(
        {
            "sources": {
                "flow": {"type": "flow", "root": str(tmp_path / "flowpairs")},
                "still": {"type": "still", "root": str(still)},
                "web": {"type": "synthetic", "root": str(image_dir)},
            },
            "use": ["flow", "still"],
            "crop": 128,
        }
    )
    dataset = R2D2PairDataset(conf)
    assert len(dataset) == 2
    for index in range(2):
        sample = dataset[index]
        assert sample["source"] == ["flow", "still"][index]
        assert _warp_error(sample) < 0.04
        assert _warp_error(sample, shift=4.0) > 0.04


def test_bad_inputs_name_the_file(tmp_path, image_dir):
    (tmp_path / "pairs.txt").write_text("a.png missing.png\n")
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(UserError, match="pairs.txt:1: .*missing.png not found"):
        R2D2PairDataset({"sources": {"f": {"type": "flow", "root": str(tmp_path)}}})
    with pytest.raises(UserError, match="no_such_dir"):
        R2D2PairDataset({"sources": {"w": {"root": str(tmp_path / "no_such_dir")}}})
    with pytest.raises(UserError, match="unknown source 'nope'"):
        R2D2PairDataset({"sources": {"w": {"root": str(image_dir)}}, "use": ["nope"]})
    with pytest.raises(UserError, match="crp"):
        R2D2PairDataset({"sources": {"w": {"root": str(image_dir)}}, "crp": 3})
    # A flow PNG of the wrong size is reported when the pair is loaded.
    root = tmp_path / "wrong"
    h, w = _write_pair_folder(root)
    write_flow_png(str(root / "flow" / "a_b.png"), np.zeros((h // 2, w, 2), np.float32))
    dataset = R2D2PairDataset({"sources": {"f": {"type": "flow", "root": str(root)}}})
    with pytest.raises(UserError, match="a_b.png.*first image"):
        dataset[0]


def test_show_writes_png_and_reports_bad_folder(tmp_path, image_dir, capsys):
    out = tmp_path / "pairs.png"
    code = main(["--show", "--images", str(image_dir), "--num", "2", "--out", str(out)])
    assert code == 0 and out.is_file()
    drawn = cv2.imread(str(out))
    assert drawn.shape == (2 * 192, 2 * 192, 3)
    code = main(["--show", "--images", str(tmp_path / "none"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "none" in err and len(err.splitlines()) == 1
