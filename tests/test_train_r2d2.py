"""train_r2d2.py end to end (real demo config shrunk by overrides), the engine's
``epochs`` option, R2D2 checkpoints in extract.py / evaluation, and bad input."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import extract
import train_r2d2
from datasets.hpatches_demo import generate
from datasets.r2d2_sources import write_flow_png
from engine.state import latest_checkpoint
from evaluators.hpatches import main as evaluate_main
from losses.r2d2 import PeakyLoss
from models import load_extractor
from models.r2d2 import R2D2, R2D2Extractor
from models.r2d2_net import R2D2Net
from tests.helpers import free_port, set_torchrun_env, write_photos
from utils.errors import UserError
from utils.io import load_checkpoint

CONFIG = "configs/r2d2_demo_builtin.yaml"
SHRINK = [
    "data.crop=48",
    "data.scale=[64,96]",
    "data.synthetic.scale=[64,96]",
    "data.val_pairs=2",
    "model.dim=16",
    "model.mchan=1",
    "loss.N=8",
    "loss.sampler.border=8",
    "train.batch_size=2",
    "train.num_workers=0",
    "train.val_every=2",
    "train.val_batches=1",
    "train.save_every=1",
    "train.log_every=1",
    "train.image_every=1",
    "train.device=cpu",
    "train.precision=fp32",
]
# Loose thresholds: a briefly trained tiny network is not confident yet.
EXTRACT_CONF = {"min_size": 32, "reliability_thr": 0.0, "repeatability_thr": 0.0}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    """Three small real photographs (scikit-image) and a list naming each twice."""
    folder = write_photos(
        tmp_path_factory.mktemp("photos"), ("chelsea", "coffee", "rocket")
    )
    (folder / "list.txt").write_text("chelsea.png\ncoffee.png\nrocket.png\n" * 2)
    return str(folder)


def args(photos: str, logdir, exp: str, *extra: str) -> list[str]:
    return [
        CONFIG,
        "--exp",
        exp,
        "--logdir",
        str(logdir),
        f"data.sources.photos.root={photos}",
        f"data.sources.photos.list={photos}/list.txt",
        *SHRINK,
        *extra,
    ]


def test_steps_write_checkpoint_events_and_resume_exactly(tmp_path, photos):
    straight = train_r2d2.run(args(photos, tmp_path, "straight", "train.max_steps=3"))
    run_dir = tmp_path / "straight"
    assert (run_dir / "config.yaml").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    assert ckpt["step"] == 3 and ckpt["config"]["model"]["name"] == "r2d2"
    assert ckpt["config"]["loss"]["similarity"] == "cosine"

    train_r2d2.run(args(photos, tmp_path, "split", "train.max_steps=2"))
    resumed = train_r2d2.run(
        args(photos, tmp_path, "split", "train.max_steps=3", "--resume")
    )
    assert resumed.step == 3
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values()
    ):
        assert torch.equal(a, b), f"{name} differs after resume"


def _variant_case(reliability: str) -> tuple[dict, dict]:
    """Hand-made predictions of a 32 x 32 pair (identity flow) with known loss terms.

    Repeatability: image 0 is 1 everywhere, image 1 a checkerboard of 1 and 0.5, so
    every 8 x 8 patch holds 32 of each value. Reliability is 1 everywhere. Descriptors:
    the same random ones in both images for ``ap`` (every AP is 1: term 0), one constant
    vector for ``hardnet`` (every distance is equal: triplet 1, term 1).
    """
    b, h, w = 2, 32, 32
    if reliability == "ap":
        gen = torch.Generator().manual_seed(0)
        desc = F.normalize(torch.randn(b, 16, h, w, generator=gen), dim=1)
    else:
        desc = F.normalize(torch.ones(b, 16, h, w), dim=1)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    checker = torch.where((xs + ys) % 2 == 0, 1.0, 0.5).expand(b, 1, h, w)
    ones = torch.ones(b, 1, h, w)
    pred = {
        "descriptors0": desc,
        "descriptors1": desc.clone(),
        "reliability0": ones,
        "reliability1": ones,
        "repeatability0": ones,
        "repeatability1": checker,
    }
    flow = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy"))
    data = {
        "aflow": flow.float().expand(b, 2, h, w),
        "mask": torch.ones(b, h, w, dtype=torch.bool),
    }
    return pred, data


# 1 - similarity of a patch of 64 ones and one of 32 ones and 32 halves. Squared chord,
# on sum-normalised patches p' = 1/64, q' = 1/48 or 1/96: sum (sqrt p' - sqrt q')^2
# = 2 - 2 sum sqrt(p' q') = 2 - (1 / sqrt(0.75) + sqrt(0.5 / 0.75)). Dice:
# 1 - 2 * 48 / (64 + 40) = 1 / 13.
REPEATABILITY = {
    "squared_chord": 2 - (1 / 0.75**0.5 + (0.5 / 0.75) ** 0.5),
    "dice": 1 / 13,
}


@pytest.mark.parametrize(
    ("similarity", "reliability", "precision"),
    [("squared_chord", "ap", "bf16"), ("dice", "hardnet", "fp32")],
)
def test_study_variants_train_and_compute_their_formula(
    tmp_path, photos, similarity, reliability, precision
):
    """The variant keys reach the trained model's loss: on hand-made predictions its
    terms equal the variant's formula (the cosine gives 0.0513 here, the AP term with
    constant descriptors about 0.99), so a variant key that is dropped or mis-wired
    fails; the step itself leaves finite weights."""
    variant = [
        f"loss.similarity={similarity}",
        f"loss.reliability={reliability}",
        f"train.precision={precision}",
    ]
    trainer = train_r2d2.run(args(photos, tmp_path, "v", "train.max_steps=1", *variant))
    assert trainer.precision == precision and trainer.nan_streak == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    _, terms = trainer.model.criterion(*_variant_case(reliability))
    assert terms["repeatability"].item() == pytest.approx(
        REPEATABILITY[similarity], abs=1e-5
    )
    expected = {"ap": 0.0, "hardnet": 1.0}[reliability]
    assert terms["reliability"].item() == pytest.approx(expected, abs=1e-5)
    assert ("triplet" in terms) == (reliability == "hardnet")


def test_epochs_set_the_number_of_steps(tmp_path, photos):
    # 4 pairs (max_pairs), batch 2: 2 batches per epoch; epochs win over max_steps.
    trainer = train_r2d2.run(
        args(
            photos,
            tmp_path,
            "epochs",
            "data.max_pairs=4",
            "train.epochs=2",
            "train.max_steps=1",
            "train.val_every=100",
            "train.image_every=100",
            "train.save_every=100",
        )
    )
    assert trainer.max_steps == 4 and trainer.step == 4
    assert load_checkpoint(latest_checkpoint(tmp_path / "epochs"))["step"] == 4


def test_reliability_loss_is_nan_safe_in_a_training_step():
    model = R2D2({"dim": 16, "mchan": 1, "fast": True})
    batch = {
        "image0": torch.rand(1, 3, 24, 24),
        "image1": torch.rand(1, 3, 24, 24),
        "aflow": torch.full((1, 2, 24, 24), float("nan")),
        "mask": torch.zeros(1, 24, 24, dtype=torch.bool),
    }
    pred = model(batch)
    losses, metrics = model.loss(pred, batch)
    losses["total"].backward()
    assert set(losses) == {"total", "reliability", "repeatability", "peaky"}
    assert metrics["n_valid"] == 0
    # No valid query or patch: those terms are exactly 0 and the total is peakiness.
    assert losses["reliability"].item() == 0 and losses["repeatability"].item() == 0
    peaky = PeakyLoss(16)(pred["repeatability0"], pred["repeatability1"])
    torch.testing.assert_close(losses["total"], peaky)
    assert all(
        torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
    )


def test_checkpoint_extracts_through_load_extractor_and_extract_py(tmp_path, photos):
    trainer = train_r2d2.run(args(photos, tmp_path, "ex", "train.max_steps=1"))
    ckpt_path = latest_checkpoint(tmp_path / "ex")
    extractor = load_extractor(str(ckpt_path), conf=dict(EXTRACT_CONF))
    assert isinstance(extractor, R2D2Extractor) and not extractor.grayscale
    # Same weights as the trained network: identical dense outputs.
    image = torch.rand(1, 3, 40, 48)
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model({"image": image})["repeatability"]
    with torch.no_grad():
        _, _, repeatability = extractor.dense(extractor.net.normalize(image))
    torch.testing.assert_close(repeatability, expected, atol=1e-5, rtol=1e-4)

    image_file = tmp_path / "img.png"
    cv2.imwrite(str(image_file), cv2.imread(os.path.join(photos, "coffee.png")))
    conf = [f"{k}={v}" for k, v in EXTRACT_CONF.items()]
    code = extract.main(
        ["--model", str(ckpt_path), "--images", str(image_file), "--tag", "r2d2"]
        + ["--top-k", "50", *conf]
    )
    assert code == 0
    with np.load(tmp_path / "img.png.r2d2") as out:
        keypoints, desc = out["keypoints"], out["descriptors"]
        assert keypoints.shape[1] == 3 and 0 < len(keypoints) <= 50
        assert desc.shape == (len(keypoints), 16)
        assert np.all(np.diff(out["scores"]) <= 0)
        # Scale = 32 / s with pyramid levels s = 2^(-k/4), k = 0, 1, ...
        levels = 4 * np.log2(keypoints[:, 2] / 32)
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)


def test_naver_published_file_works_in_extract_py(tmp_path, capsys):
    net = R2D2Net(fast=True)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "faster2d2_WASF_N16.pt"
    torch.save({"net": "Fast_Quad_L2Net_ConfCFS()", "state_dict": state}, path)
    extractor = load_extractor(str(path), conf={"precision": "bf16"})
    assert extractor.tag == "faster2d2_WASF_N16-bf16"
    reference = R2D2Extractor(dict(EXTRACT_CONF), net=net.eval())
    image = torch.rand(1, 3, 48, 64)
    ours = load_extractor(str(path), conf=dict(EXTRACT_CONF))(image)
    torch.testing.assert_close(ours["keypoints"], reference(image)["keypoints"])

    image_file = tmp_path / "img.png"
    cv2.imwrite(
        str(image_file),
        np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8),
    )
    conf = [f"{k}={v}" for k, v in EXTRACT_CONF.items()]
    assert extract.main(["--model", str(path), "--images", str(image_file), *conf]) == 0
    assert (tmp_path / "img.png.faster2d2_WASF_N16").is_file()
    # SuperPoint options are refused by name.
    capsys.readouterr()
    code = extract.main(
        ["--model", str(path), "--images", str(image_file), "nms_radius=4"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "nms_radius" in err[0]


def test_constructor_off_the_whitelist_is_one_line(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    state = R2D2Net().state_dict()
    torch.save({"net": "__import__('os').system('true')", "state_dict": state}, path)
    image_file = tmp_path / "img.png"
    cv2.imwrite(str(image_file), np.zeros((32, 32, 3), np.uint8))
    code = extract.main(["--model", str(path), "--images", str(image_file)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "evil.pt" in err[0]
    assert "expected a call" in err[0]
    torch.save({"net": "ResNet50()", "state_dict": state}, path)
    with pytest.raises(UserError, match="'ResNet50' is not an accepted network"):
        load_extractor(str(path))


def _pair_folder(tmp_path, flow_shape: tuple[int, int]) -> str:
    root = tmp_path / "flow_pairs"
    (root / "flow").mkdir(parents=True)
    image = np.full((64, 80, 3), 128, np.uint8)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(root / name), image)
    (root / "pairs.txt").write_text("a.png b.png\n")
    write_flow_png(str(root / "flow" / "a_b.png"), np.zeros((*flow_shape, 2)))
    return str(root)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["train.learning_rate=1"], "unknown config key 'train.learning_rate'"),
        (["model.name=superpoint"], "train_r2d2.py trains 'r2d2'"),
        (["loss.similarity=cosinus"], "cosinus"),
        (["data.sources.photos.root=/nonexistent/folder"], "/nonexistent/folder"),
    ],
)
def test_bad_config_gives_one_line(tmp_path, photos, capsys, extra, message):
    code = train_r2d2.main(args(photos, tmp_path, "bad", "train.max_steps=1", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and message in err[0]


def test_flow_png_of_wrong_size_and_missing_pair_files(tmp_path, photos, capsys):
    root = _pair_folder(tmp_path, (32, 40))
    flow_source = [
        "data.sources={flow: {type: flow, root: " + root + "}}",
        "data.use=[flow]",
        "train.batch_size=1",
        "train.max_steps=1",
    ]
    code = train_r2d2.main(args(photos, tmp_path, "flow", *flow_source))
    # The flow is read when the pair is drawn (after the progress bar started): the
    # error is still a single line, with no traceback.
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert code != 0 and "Traceback" not in err and len(lines) == 1
    assert "a_b.png" in lines[0] and "80x64" in lines[0] and "40x32" in lines[0]

    (tmp_path / "flow_pairs" / "pairs.txt").write_text("a.png missing.png\n")
    code = train_r2d2.main(args(photos, tmp_path, "flow2", *flow_source))
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "missing.png" in err[0]


def _ddp_worker(rank: int, port: int, photos: str, out_dir: str) -> None:
    set_torchrun_env(rank, port)
    trainer = train_r2d2.run(
        args(photos, out_dir, "ddp", "train.max_steps=2", "train.batch_size=1")
    )
    params = {k: v for k, v in trainer.model.named_parameters()}
    torch.save(params, f"{out_dir}/rank{rank}.pt")


def test_two_process_gloo_ddp_ranks_agree(tmp_path, photos):
    port = free_port()
    mp.spawn(_ddp_worker, args=(port, photos, str(tmp_path)), nprocs=2, join=True)
    weights = [
        torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert load_checkpoint(latest_checkpoint(tmp_path / "ddp"))["step"] == 2


def test_d2net_evaluation_of_a_checkpoint(tmp_path, photos, capsys):
    train_r2d2.run(args(photos, tmp_path, "ev", "train.max_steps=1"))
    data = tmp_path / "hpatches"
    generate("builtin", data, num_sequences=1, max_size=64, progress=False)
    out = tmp_path / "eval"
    conf = '{"min_size": 32, "reliability_thr": 0, "repeatability_thr": 0}'
    code = evaluate_main(
        ["--data", str(data), "--preset", "d2net", "--model"]
        + [str(latest_checkpoint(tmp_path / "ev")), "--tag", "r2d2", "--out", str(out)]
        + [f"extractor_conf={conf}", "--num-match-plots", "0"]
    )
    assert code == 0, capsys.readouterr().err
    features = next(data.glob("v_*/1.ppm.r2d2"))
    with np.load(features) as f:
        assert f["keypoints"].shape[1] == 3 and len(f["keypoints"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    mma3 = summary["results"]["all"]["mma@3"]
    assert 0.0 <= mma3 <= 1.0 and summary["preset"]["name"].startswith("d2net[")
    capsys.readouterr()
    # The superpoint preset's detection threshold and NMS radius are SuperPoint settings:
    # an R2D2 model gets its own options and the shared keypoint budget, with a note.
    conf = conf[:-1] + ', "detection_threshold": 0.015, "nms_radius": 4, "top_k": 5}'
    code = evaluate_main(
        ["--data", str(data), "--preset", "superpoint", "--model"]
        + [str(latest_checkpoint(tmp_path / "ev")), "--tag", "r2d2sp"]
        + ["--out", str(tmp_path / "eval_sp"), f"extractor_conf={conf}"]
        + ["--num-match-plots", "0"]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "detection_threshold, nms_radius not applied" in err
    with np.load(next(data.glob("v_*/1.ppm.r2d2sp"))) as f:
        assert 0 < len(f["keypoints"]) <= 5
