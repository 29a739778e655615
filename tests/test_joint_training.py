"""SuperPoint joint training: pair data, loss terms, metrics, and a resumable short run."""

import numpy as np
import pytest
import torch

import train_superpoint
from datasets.superpoint_pairs import SuperPointPairs
from engine.state import latest_checkpoint
from export import main as export_main
from geometry.homography import warp_points
from models import build_model
from models.superpoint import SuperPoint
from utils.errors import UserError
from utils.io import load_checkpoint

TINY_MODEL = [
    "model.channels=[8,8,16,16]",
    "model.head_channels=16",
    "model.descriptor_dim=16",
]


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    out = tmp_path_factory.mktemp("ha")
    code = export_main(
        [
            "homography_adaptation",
            "configs/magicpoint_coco_export.yaml",
            "data.layout=folder",
            "data.image_size=[64,96]",
            "data.max_images=6",
            "model.channels=[8,8,16,16]",
            "model.head_channels=16",
            "export.num_homographies=2",
            "export.device=cpu",
            "export.precision=fp32",
            "--images",
            "builtin",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    return out


def pair_conf(labels):
    return {
        "root": "builtin",
        "max_images": 6,
        "val_fraction": 0.3,
        "labels_dir": str(labels),
        "image_size": [64, 96],
        "augmentation": {"photometric": {"enable": True}},
    }


def test_pairs_carry_labels_through_the_homography(labels):
    data = SuperPointPairs(pair_conf(labels), "train")
    assert len(data) == 4 and len(SuperPointPairs(pair_conf(labels), "val")) == 2
    sample = data[0]
    H = sample["H_0to1"].double().numpy()
    warped = warp_points(sample["keypoints0"].double().numpy(), H)
    got = sample["keypoints1"].double().numpy()
    assert len(got) > 0
    # Every label of view 1 is the warp of a label of view 0.
    dist = np.linalg.norm(warped[:, None] - got[None], axis=-1).min(0)
    assert dist.max() < 1e-3
    assert sample["valid_mask1"].min() == 0 and sample["valid_mask0"].min() == 1
    assert torch.equal(data[0]["image1"], sample["image1"])  # deterministic


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_pair_loss_terms_and_metrics(labels, kind):
    torch.manual_seed(0)
    model = SuperPoint(
        {"channels": [8, 8, 16, 16], "head_channels": 16, "descriptor_dim": 16},
        {"descriptor_loss": kind, "lambda_loss": 2.0},
    )
    data = SuperPointPairs(pair_conf(labels), "train")
    batch = {k: torch.stack([data[i][k] for i in range(2)]) for k in data[0]
             if isinstance(data[0][k], torch.Tensor) and k[:-1] != "keypoints"}  # fmt: skip
    pred = model(batch)
    losses, _ = model.loss(pred, batch)
    expected = losses["detector0"] + losses["detector1"] + 2.0 * losses["descriptor"]
    torch.testing.assert_close(losses["total"], expected)
    losses["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    metrics = model.metrics(pred, batch)
    assert set(metrics) == {"precision", "recall", "matching_accuracy"}
    assert 0 <= float(metrics["matching_accuracy"]) <= 1
    single = model({"image": batch["image0"]})
    torch.testing.assert_close(single["heatmap"], pred["heatmap0"], atol=1e-6, rtol=0)


def test_unknown_descriptor_loss_is_refused(labels):
    model = SuperPoint({"channels": [8, 8, 16, 16], "head_channels": 16,
                        "descriptor_dim": 16}, {"descriptor_loss": "triplet"})  # fmt: skip
    data = SuperPointPairs(pair_conf(labels), "train")
    batch = {k: data[0][k][None] for k in ("image0", "image1", "keypoint_map0",
             "keypoint_map1", "valid_mask0", "valid_mask1", "H_0to1")}  # fmt: skip
    with pytest.raises(UserError, match="descriptor_loss"):
        model.loss(model(batch), batch)


def test_train_superpoint_runs_and_resumes(labels, tmp_path):
    overrides = [
        "data.root=builtin",
        "data.layout=folder",
        f"data.labels_dir={labels}",
        "data.max_images=6",
        "data.val_fraction=0.3",
        "data.image_size=[64,96]",
        "train.batch_size=2",
        "train.num_workers=0",
        "train.val_every=2",
        "train.val_batches=1",
        "train.save_every=2",
        "train.image_every=2",
        "train.log_every=1",
        "train.precision=fp32",
        "train.device=cpu",
        "loss.descriptor_loss=sparse",
        *TINY_MODEL,
    ]
    args = ["configs/superpoint_coco.yaml", *overrides]
    logdir = ["--logdir", str(tmp_path), "--exp", "sp"]
    trainer = train_superpoint.run([*args, "train.max_steps=2", *logdir])
    assert trainer.step == 2
    ckpt = latest_checkpoint(tmp_path / "sp")
    assert ckpt is not None and ckpt.name == "last_00000002.pt"
    resumed = train_superpoint.run([*args, "train.max_steps=3", *logdir, "--resume"])
    assert resumed.step == 3
    saved = load_checkpoint(latest_checkpoint(tmp_path / "sp"))
    assert saved["config"]["loss"]["descriptor_loss"] == "sparse"
    assert (tmp_path / "sp" / "checkpoints" / "best.pt").is_file()
    assert any(p.name.startswith("events.out") for p in (tmp_path / "sp").iterdir())


def test_superpoint_starts_from_a_magicpoint(labels, tmp_path, capsys):
    conf = {"channels": [8, 8, 16, 16], "head_channels": 16}
    magicpoint = build_model({"name": "magicpoint", **conf})
    path = tmp_path / "magicpoint.pt"
    torch.save(
        {"model": magicpoint.state_dict(), "config": {"model": magicpoint.conf}}, path
    )
    args = [
        "configs/superpoint_coco.yaml",
        "data.root=builtin",
        "data.layout=folder",
        f"data.labels_dir={labels}",
        "data.max_images=6",
        "data.image_size=[64,96]",
        "train.batch_size=2",
        "train.num_workers=0",
        "train.max_steps=1",
        "train.lr=0.0",  # the step leaves the weights as loaded
        "train.device=cpu",
        "train.precision=fp32",
        f"train.init_weights={path}",
        *TINY_MODEL,
        "--logdir",
        str(tmp_path),
    ]
    trainer = train_superpoint.run([*args, "--exp", "init"])
    out = capsys.readouterr().out
    assert "new: convDa.0, convDb.0" in out
    state = trainer.model.state_dict()
    for key, value in magicpoint.state_dict().items():
        assert torch.equal(state[key], value), key
    # A detector of another width is refused, naming the first tensor that does not fit.
    wide = build_model({"name": "magicpoint", **conf, "channels": [16, 8, 16, 16]})
    torch.save({"model": wide.state_dict(), "config": {"model": wide.conf}}, path)
    assert train_superpoint.main([*args, "--exp", "bad"]) == 2
    assert "key 'conv1a.0.weight' has shape (16, 1, 3, 3)" in capsys.readouterr().err
