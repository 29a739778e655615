"""Train a LeReS point-cloud model (focal ratio, depth shift or scale) with the shared engine.

    python data_gen.py pointclouds --procedural 2000 --size 96,128 --out data/pointclouds/train
    python train_3d.py configs/pointcloud_focal.yaml --exp pointcloud_focal
    python train_3d.py configs/pointcloud_shift.yaml --exp pointcloud_shift
    python train_3d.py configs/pointcloud_focal.yaml --exp pointcloud_focal --resume
    torchrun --nproc_per_node=2 train_3d.py configs/pointcloud_shift.yaml

One target per model, as in Train-3D. Train-3D's options are config keys:

==================  ========================================================
Train-3D option     config key
==================  ========================================================
input channels      ``model.input_channels`` (3: xyz, 5: xyz + normalised uv, 6: xyz + normal)
target              ``model.target`` (shift | focal | scale)
distortions         ``data.distort_shift`` / ``data.shift_range``,
                    ``data.distort_focal`` / ``data.focal_range``
voxel size          ``model.voxel_size`` (``model.name: voxelnet``)
initial scale       ``model.initial_scale`` (the ratio an untrained model predicts)
train split         ``data.train_split`` (share of the samples; the rest validates)
linear lr decay     ``train.lr_schedule.type: linear`` (to ``min_lr_ratio``)
epochs              ``train.epochs`` (0: ``train.max_steps`` counts instead)
print interval      ``train.log_every``
workers             ``train.num_workers``
==================  ========================================================

``model.name`` picks the network: ``pointnet`` (points) or ``voxelnet`` (dense voxels).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from datasets.pointcloud import DEFAULT_CONF, PointCloudDataset, cloud_panels
from engine.cli import main_from, parse, resolve_run, train
from engine.trainer import TRAIN_DEFAULTS, Trainer
from models.pointcloud_nets import NETWORKS, build_cloud_model
from utils.config import merge_config
from utils.errors import UserError

# The model section says what it predicts and reads; the dataset takes both from there.
MODEL_OWNED = ("target", "input_channels")

TASK_TRAIN_DEFAULTS = merge_config(
    TRAIN_DEFAULTS,
    {
        "batch_size": 32,
        "lr_schedule": {"type": "linear"},
        "best_metric": "abs_error",
        "val_every": 250,
        "save_every": 250,
        "image_every": 250,
    },
)


def defaults(user: dict[str, Any]) -> dict[str, Any]:
    """Code defaults of every section; the model class follows the user's ``model.name``."""
    name = (user.get("model") or {}).get("name", "pointnet")
    if name not in NETWORKS:
        raise UserError(f"model.name '{name}' is not one of {sorted(NETWORKS)}")
    model_cls = NETWORKS[name]
    return {
        "data": {k: v for k, v in DEFAULT_CONF.items() if k not in MODEL_OWNED},
        "model": model_cls.defaults(),
        "loss": model_cls.loss_defaults(),
        "train": TASK_TRAIN_DEFAULTS,
    }


def build(conf: dict[str, Any]):
    """``(model, train_set, val_set)`` of a resolved config."""
    model = build_cloud_model(conf["model"], conf["loss"])
    data_conf = {**conf["data"], **{k: conf["model"][k] for k in MODEL_OWNED}}
    return (
        model,
        PointCloudDataset(data_conf, "train"),
        PointCloudDataset(data_conf, "val"),
    )


def run(argv: Sequence[str] | None = None) -> Trainer:
    """Parse, build and train; returns the finished :class:`Trainer` (tests inspect it)."""
    args = parse(argv, "train_3d.py", __doc__.split("\n")[0])
    conf, exp_dir, resume = resolve_run(args, defaults)
    return train(args, conf, exp_dir, resume, build, panels=cloud_panels)


def main(argv: Sequence[str] | None = None) -> int:
    return main_from(run, argv, "train_3d.py")


if __name__ == "__main__":
    sys.exit(main())
