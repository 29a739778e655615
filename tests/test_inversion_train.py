"""train_reconstruct.py and train_refine.py end to end (real configs shrunk by overrides):
checkpoints, TensorBoard image grids, exact resume, the GAN step's isolation of the two
networks, the engine's new schedules, and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_reconstruct
import train_refine
from engine.data import collate
from engine.state import PlateauScale, latest_checkpoint, lr_factor
from engine.trainer import TRAIN_DEFAULTS
from tests.helpers import write_photos
from utils.io import load_checkpoint

COARSE = "configs/inversion_sift.yaml"
REFINE = "configs/refine_sift.yaml"
DATA = [
    "data.crop=64",
    "data.scale=[64,96]",
    "data.eval_size=64",
    "data.repeat=2",
    "data.extractor_conf={top_k: 300}",
]
TRAIN = [
    "train.batch_size=2",
    "train.num_workers=0",
    "train.val_every=1",
    "train.val_batches=1",
    "train.save_every=1",
    "train.log_every=1",
    "train.image_every=1",
    "train.device=cpu",
    "train.precision=fp32",
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    """Three small real photographs (scikit-image)."""
    return str(write_photos(tmp_path_factory.mktemp("photos")))


def coarse_args(photos: str, logdir: Path, exp: str, *extra: str) -> list[str]:
    return [
        COARSE,
        "--exp",
        exp,
        "--logdir",
        str(logdir),
        f"data.images={photos}",
        *DATA,
        "model.widths=[4,8]",
        "loss.perceptual=0",
        "loss.ssim=0.5",
        # Reduce at every validation: the plateau state must survive the resume.
        "train.lr_schedule.patience=1",
        "train.lr_schedule.threshold=10.0",
        *TRAIN,
        *extra,
    ]


def refine_args(photos: str, logdir: Path, exp: str, coarse: Path, *extra: str):
    return [
        REFINE,
        "--exp",
        exp,
        "--logdir",
        str(logdir),
        f"data.images={photos}",
        *DATA,
        f"model.coarse_checkpoint={coarse}",
        "model.widths=[4,8]",
        "model.coarse.widths=[4,8]",
        "model.discriminator.widths=[4,8]",
        "loss.perceptual=0",
        "train.lr_schedule.period=2",
        *TRAIN,
        *extra,
    ]


def _image_tags(run_dir: Path) -> list[str]:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    return events.Tags()["images"]


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"


@pytest.fixture(scope="module")
def coarse_run(photos, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logs")
    trainer = train_reconstruct.run(
        coarse_args(photos, logdir, "straight", "train.max_steps=3")
    )
    return trainer, logdir


def test_reconstruct_writes_checkpoints_grids_and_resumes_exactly(photos, coarse_run):
    straight, logdir = coarse_run
    run_dir = logdir / "straight"
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    assert ckpt["step"] == 3 and ckpt["config"]["model"]["in_channels"] == 128 + 3
    assert ckpt["plateau"]["scale"] < 1.0
    assert "train/inversion" in _image_tags(run_dir)
    assert "val/inversion" in _image_tags(run_dir)
    train_reconstruct.run(coarse_args(photos, logdir, "split", "train.max_steps=2"))
    resumed = train_reconstruct.run(
        coarse_args(photos, logdir, "split", "train.max_steps=3", "--resume")
    )
    assert resumed.step == 3
    _assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    assert straight.plateau.state_dict() == resumed.plateau.state_dict()
    assert straight.optimizer.param_groups[0]["lr"] == pytest.approx(
        resumed.optimizer.param_groups[0]["lr"]
    )


@pytest.fixture(scope="module")
def refine_run(photos, coarse_run):
    _, logdir = coarse_run
    coarse = latest_checkpoint(logdir / "straight")
    trainer = train_refine.run(
        refine_args(photos, logdir, "refine", coarse, "train.max_steps=3")
    )
    return trainer, logdir, coarse


def test_refine_writes_both_optimisers_and_resumes_exactly(photos, refine_run):
    straight, logdir, coarse = refine_run
    ckpt = load_checkpoint(latest_checkpoint(logdir / "refine"))
    assert {"d_optimizer", "d_scheduler", "d_updates"} <= ckpt["extra"].keys()
    assert ckpt["extra"]["d_updates"] == straight.d_updates > 0
    assert "train/inversion" in _image_tags(logdir / "refine")
    # The frozen coarse network is the checkpoint's, unchanged by training.
    coarse_state = load_checkpoint(coarse)["model"]
    for key, value in straight.model.coarse.state_dict().items():
        assert torch.equal(value, coarse_state[f"network.{key}"])
    train_refine.run(refine_args(photos, logdir, "rsplit", coarse, "train.max_steps=2"))
    resumed = train_refine.run(
        refine_args(photos, logdir, "rsplit", coarse, "train.max_steps=3", "--resume")
    )
    _assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    a, b = straight.d_optimizer.state_dict(), resumed.d_optimizer.state_dict()
    for index, state in a["state"].items():
        _assert_same_state(state, b["state"][index])
    assert straight.d_updates == resumed.d_updates


def test_refine_in_bf16_validates(photos, refine_run):
    _, logdir, coarse = refine_run
    trainer = train_refine.run(
        refine_args(
            photos, logdir, "bf16", coarse, "train.max_steps=1", "train.precision=bf16"
        )
    )
    assert trainer.precision == "bf16" and trainer.step == 1


def test_one_network_update_leaves_the_other_unchanged(refine_run):
    trainer = refine_run[0]
    model = trainer.model
    model.train()
    batch = collate([trainer.train_set[i] for i in range(2)])
    pred = trainer.net(batch)

    def snapshot(module: torch.nn.Module) -> dict:
        return {k: v.clone() for k, v in module.state_dict().items()}

    generator = [model.generator, model.coarse]
    before_g = [snapshot(m) for m in generator]
    before_d = snapshot(model.discriminator)
    model.loss_conf["d_threshold"] = -math.inf
    _, stepped = trainer.discriminator_update(batch, pred)
    assert stepped
    for module, state in zip(generator, before_g):
        _assert_same_state(state, module.state_dict())
    assert any(
        not torch.equal(before_d[k], v)
        for k, v in model.discriminator.state_dict().items()
    )
    before_d = snapshot(model.discriminator)
    before_generator = snapshot(model.generator)
    trainer.generator_update(batch, pred)
    _assert_same_state(before_d, model.discriminator.state_dict())
    assert all(p.grad is None for p in model.discriminator.parameters())
    assert any(
        not torch.equal(before_generator[k], v)
        for k, v in model.generator.state_dict().items()
    )
    model.loss_conf["d_threshold"] = 1e9
    _, stepped = trainer.discriminator_update(batch, trainer.net(batch))
    assert not stepped


def test_schedules_cosine_restarts_and_plateau():
    conf = {
        **TRAIN_DEFAULTS,
        "lr_schedule": {
            **TRAIN_DEFAULTS["lr_schedule"],
            "type": "cosine_restarts",
            "period": 4,
            "period_mult": 2,
        },
    }
    factors = [lr_factor(s, conf, 100) for s in range(14)]
    assert factors[0] == factors[4] == factors[12] == 1.0
    assert factors[2] == pytest.approx(0.5) and factors[8] == pytest.approx(0.5)
    assert factors[3] < factors[2] and factors[11] < factors[10]
    plateau = PlateauScale(0.5, 2, 0.0, "max", 0.2)
    history = [plateau.update(v) for v in (1.0, 2.0, 1.5, 1.5, 1.0, 1.0, 1.0, 1.0)]
    assert history == [False, False, False, True, False, True, False, True]
    assert plateau.scale == pytest.approx(0.2)
    clone = PlateauScale(0.5, 2, 0.0, "max", 0.2)
    clone.load_state_dict(plateau.state_dict())
    assert clone.update(0.5) == plateau.update(0.5)


def _fails_with(capsys, main, argv, *needles) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_input_one_line_exit_2_nothing_written(
    tmp_path, photos, capsys, coarse_run
):
    logdir = tmp_path / "logs"
    _fails_with(
        capsys,
        train_reconstruct.main,
        coarse_args(
            photos,
            logdir,
            "vgg",
            "loss.perceptual=5",
            f"loss.vgg_weights={tmp_path}/vgg16-397923af.pth",
        ),
        "vgg16-397923af.pth",
        "loss.perceptual=0",
    )
    listing = tmp_path / "list.txt"
    listing.write_text("chelsea.png\nmissing.png\n")
    (tmp_path / "chelsea.png").write_bytes((Path(photos) / "chelsea.png").read_bytes())
    _fails_with(
        capsys,
        train_reconstruct.main,
        coarse_args(photos, logdir, "list", f"data.images={listing}"),
        "missing.png",
    )
    _fails_with(
        capsys,
        train_reconstruct.main,
        coarse_args(photos, logdir, "channels", "model.in_channels=99"),
        "model.in_channels",
        "128-D",
    )
    coarse = latest_checkpoint(coarse_run[1] / "straight")
    _fails_with(
        capsys,
        train_refine.main,
        refine_args(photos, logdir, "arch", coarse, "model.coarse.arch=unetpp"),
        "another architecture",
        "unetpp",
    )
    _fails_with(
        capsys,
        train_refine.main,
        refine_args(photos, logdir, "widths", coarse, "model.coarse.widths=[4,8,8]"),
        "another architecture",
    )
    assert not logdir.exists() or not any(logdir.iterdir())
