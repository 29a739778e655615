"""End-to-end runs of train_superpoint.py on its real config, shrunk by overrides."""

import os
import stat

import pytest
import torch

import train_superpoint
from engine.state import latest_checkpoint
from utils.io import load_checkpoint

CONFIG = "configs/magicpoint_shapes.yaml"
SHRINK = [
    "data.image_size=[64,80]",
    "data.split_sizes={train: 4, val: 1, test: 1}",
    "model.channels=[8,8,16,16]",
    "model.head_channels=16",
    "train.batch_size=2",
    "train.num_workers=0",
    "train.val_every=2",
    "train.val_batches=1",
    "train.save_every=1",
    "train.log_every=1",
    "train.device=cpu",
    "train.precision=fp32",
]


def run(tmp_path, exp, steps, *extra):
    args = [
        CONFIG,
        "--exp",
        exp,
        "--logdir",
        str(tmp_path),
        *SHRINK,
        f"train.max_steps={steps}",
    ]
    return train_superpoint.run([*args, *extra])


def test_three_steps_write_checkpoint_events_and_resume_exactly(tmp_path):
    straight = run(tmp_path, "straight", 3)
    run_dir = tmp_path / "straight"
    assert (run_dir / "config.yaml").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    assert ckpt["step"] == 3 and ckpt["config"]["model"]["channels"] == [8, 8, 16, 16]

    run(tmp_path, "split", 2)
    resumed = run(tmp_path, "split", 3, "--resume")
    assert resumed.step == 3
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values()
    ):
        assert torch.equal(a, b), f"{name} differs after resume"


def test_existing_run_is_not_overwritten_silently(tmp_path, capsys):
    run(tmp_path, "once", 1)
    code = train_superpoint.main(
        [
            CONFIG,
            "--exp",
            "once",
            "--logdir",
            str(tmp_path),
            *SHRINK,
            "train.max_steps=1",
        ]
    )
    assert code == 2 and "--resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["configs/does_not_exist.yaml"],
            "config file 'configs/does_not_exist.yaml' not found",
        ),
        ([CONFIG, "train.learning_rate=1"], "unknown config key 'train.learning_rate'"),
        ([CONFIG, "train.batch_size=big"], "'train.batch_size' expects int"),
        ([CONFIG, "model.name=superpont"], "unknown model name 'superpont'"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, capsys, args, message):
    code = train_superpoint.main([*args, "--logdir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_log_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    code = train_superpoint.main([CONFIG, "--logdir", str(locked / "sub"), *SHRINK])
    assert code == 2 and "not writable" in capsys.readouterr().err


def test_log_folder_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = train_superpoint.main(
        [CONFIG, "--logdir", str(blocker), *SHRINK, "train.max_steps=1"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "not writable" in err and str(blocker) in err
