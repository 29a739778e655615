"""Train MagicPoint (Synthetic Shapes) or SuperPoint with the shared engine.

    python train_superpoint.py configs/magicpoint_shapes.yaml --exp magicpoint_shapes
    python train_superpoint.py configs/magicpoint_shapes.yaml --resume
    python train_superpoint.py configs/superpoint_coco.yaml data.labels_dir=data/coco_ha
    torchrun --nproc_per_node=2 train_superpoint.py configs/magicpoint_shapes.yaml

The ``model.name`` of the config selects the network (``magicpoint`` or ``superpoint``) and
``data.name`` the dataset; see configs/ for the reference recipes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from datasets import get_dataset
from engine.cli import main_from, parse, resolve_run, train
from engine.trainer import TRAIN_DEFAULTS, Trainer
from models import build_model, get_model
from visualization.superpoint import superpoint_panels

EVAL_DEFAULTS = {"detection_threshold": 0.001, "nms_radius": 4, "correct_distance": 4.0}


def defaults(user: dict[str, Any]) -> dict[str, Any]:
    """Code defaults for the data/model/loss sections chosen by the user's config."""
    data_name = (user.get("data") or {}).get("name", "synthetic_shapes")
    model_cls = get_model((user.get("model") or {}).get("name", "magicpoint"))
    return {
        "data": {"name": data_name, **get_dataset(data_name).default_conf},
        "model": model_cls.defaults(),
        "loss": model_cls.loss_defaults(),
        "train": TRAIN_DEFAULTS,
        "eval": EVAL_DEFAULTS,
    }


def run(argv: Sequence[str] | None = None) -> Trainer:
    """Parse, build and train; returns the finished :class:`Trainer` (tests inspect it)."""
    args = parse(argv, "train_superpoint.py", __doc__.split("\n")[0])
    conf, exp_dir, resume = resolve_run(args, defaults)

    def build(conf: dict[str, Any]):
        data_conf = {k: v for k, v in conf["data"].items() if k != "name"}
        dataset_cls = get_dataset(conf["data"]["name"])
        model = build_model(conf["model"], conf["loss"])
        return model, dataset_cls(data_conf, "train"), dataset_cls(data_conf, "val")

    panels = superpoint_panels(conf["model"])
    return train(args, conf, exp_dir, resume, build, panels=panels)


def main(argv: Sequence[str] | None = None) -> int:
    return main_from(run, argv, "train_superpoint.py")


if __name__ == "__main__":
    sys.exit(main())
