"""End-to-end runs of train_3d.py on its real configs, shrunk by overrides."""

import pytest
import torch
import yaml

import train_3d
from engine.state import latest_checkpoint
from utils.io import load_checkpoint

SHRINK = [
    "data.root=null",
    "data.procedural.count=8",
    "data.procedural.size=[24,32]",
    "data.train_split=0.75",
    "data.num_points=64",
    "train.batch_size=2",
    "train.num_workers=0",
    "train.val_every=2",
    "train.val_batches=1",
    "train.save_every=1",
    "train.log_every=1",
    "train.image_every=2",
    "train.device=cpu",
    "train.precision=fp32",
]


POINTNET = ["model.widths=[8,16]", "model.head=[8]"]


def run(tmp_path, config, exp, steps, *extra):
    args = [config, "--exp", exp, "--logdir", str(tmp_path), *SHRINK]
    if "voxel" not in config:
        args += POINTNET
    return train_3d.run([*args, f"train.max_steps={steps}", *extra])


def voxel_config(tmp_path) -> str:
    """The shift recipe with the voxel network (its model keys replace PointNet's)."""
    conf = yaml.safe_load(open("configs/pointcloud_shift.yaml"))
    conf["model"] = {
        "name": "voxelnet",
        "target": "shift",
        "input_channels": 5,
        "voxel_size": 0.5,
        "widths": [4, 8],
    }
    path = tmp_path / "voxel_shift.yaml"
    path.write_text(yaml.safe_dump(conf))
    return str(path)


@pytest.mark.parametrize("network", ["pointnet", "voxelnet"])
def test_steps_write_checkpoint_events_and_resume_exactly(tmp_path, network):
    config, extra = "configs/pointcloud_focal.yaml", []
    if network == "voxelnet":
        config, extra = voxel_config(tmp_path), ["model.head=[8]"]
    straight = run(tmp_path, config, "straight", 3, *extra)
    run_dir = tmp_path / "straight"
    assert (run_dir / "config.yaml").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    assert ckpt["step"] == 3
    assert ckpt["config"]["model"]["target"] in ("focal", "shift")
    # An interruption after step 2 of the same 3-step run (the linear lr decay depends on
    # the run length): drop the last checkpoint and resume from step 2.
    run(tmp_path, config, "split", 3, *extra)
    (tmp_path / "split" / "checkpoints" / "last_00000003.pt").unlink()
    resumed = run(tmp_path, config, "split", 3, *extra, "--resume")
    assert resumed.step == 3
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values()
    ):
        assert torch.equal(a, b), f"{name} differs after resume"


def test_generated_folder_trains(tmp_path):
    import data_gen

    root = tmp_path / "pc"
    assert (
        data_gen.main(
            ["pointclouds", "--procedural", "6", "--size", "24,32", "--out", str(root)]
        )
        == 0
    )
    trainer = run(
        tmp_path, "configs/pointcloud_focal.yaml", "gen", 2, f"data.root={root}"
    )
    assert trainer.step == 2 and len(trainer.train_set) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train.epoch=3"],
            "unknown config key 'train.epoch'; did you mean 'train.epochs'",
        ),
        (["model.name=pointnt"], "model.name 'pointnt' is not one of"),
        (["model.target=depth"], "model.target 'depth' is not one of"),
        (["data.shift_range=[0.2,1.5]"], "data.shift_range [0.2, 1.5] must satisfy"),
        (
            ["data.root=/nonexistent/pc"],
            "data.root '/nonexistent/pc' has no depths/*.npz",
        ),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, args, message):
    code = train_3d.main(
        ["configs/pointcloud_focal.yaml", "--logdir", str(tmp_path), *SHRINK, *args]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not any((tmp_path / "pointcloud_focal").glob("checkpoints/*.pt"))
