"""Train R2D2 / Fast-R2D2 (or a loss-study variant) with the shared engine.

    python train_r2d2.py configs/r2d2_default.yaml --exp r2d2_WASF_N16
    python train_r2d2.py configs/r2d2_study_dice.yaml --resume
    python train_r2d2.py configs/r2d2_demo_builtin.yaml loss.similarity=jaccard --exp j
    torchrun --nproc_per_node=2 train_r2d2.py configs/r2d2_default.yaml

The ``data`` section configures :class:`datasets.r2d2_pairs.R2D2PairDataset` (pair
sources by name) plus two validation keys: ``val_use`` (source names for validation,
default: the training ones, drawn with another seed) and ``val_pairs`` (how many). The
``model`` section holds the network options (``fast: true`` is Fast-R2D2) and ``loss``
the R2D2 loss and its study variants (``similarity``, ``reliability``). ``train.epochs``
(> 0) sets the length in epochs, as the reference recipe does (25).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from datasets.r2d2_pairs import R2D2PairDataset
from engine.cli import main_from, parse, resolve_run, train
from engine.trainer import TRAIN_DEFAULTS, Trainer
from models import build_model
from models.r2d2 import R2D2, r2d2_panels
from utils.errors import UserError

DATA_DEFAULTS: dict[str, Any] = {
    "name": "r2d2_pairs",
    **R2D2PairDataset.default_conf,
    "val_use": None,
    "val_pairs": 64,
}


def defaults(user: dict[str, Any]) -> dict[str, Any]:
    """Code defaults of every section (R2D2 reference: crop 192, batch 8, Adam 1e-4,
    weight decay 5e-4, 25 epochs)."""
    train = {
        **TRAIN_DEFAULTS,
        "batch_size": 8,
        "lr": 1e-4,
        "weight_decay": 5e-4,
        "epochs": 25,
    }
    return {
        "data": DATA_DEFAULTS,
        "model": R2D2.defaults(),
        "loss": R2D2.loss_defaults(),
        "train": train,
    }


def build_datasets(conf: dict[str, Any]) -> tuple[R2D2PairDataset, R2D2PairDataset]:
    """Training pairs and a fixed validation stream (another seed, ``val_pairs`` long)."""
    if conf["name"] != "r2d2_pairs":
        raise UserError(
            f"config key 'data.name': expected 'r2d2_pairs', got {conf['name']!r}"
        )
    data = {k: v for k, v in conf.items() if k not in ("name", "val_use", "val_pairs")}
    train_set = R2D2PairDataset(data)
    val_conf = {
        **data,
        "use": conf["val_use"] or data["use"],
        "seed": data["seed"] + 1,
        "max_pairs": conf["val_pairs"],
    }
    return train_set, R2D2PairDataset(val_conf)


def run(argv: Sequence[str] | None = None) -> Trainer:
    """Parse, build and train; returns the finished :class:`Trainer` (tests inspect it)."""
    args = parse(argv, "train_r2d2.py", __doc__.split("\n")[0])
    if args.dry_run:
        # The dry run's 2 steps must not be overridden by an epoch count.
        args.overrides = [*args.overrides, "train.epochs=0"]
    conf, exp_dir, resume = resolve_run(args, defaults)
    if conf["model"]["name"] != "r2d2":
        raise UserError(
            f"config key 'model.name': train_r2d2.py trains 'r2d2', "
            f"got {conf['model']['name']!r}"
        )

    def build(conf: dict[str, Any]):
        train_set, val_set = build_datasets(conf["data"])
        return build_model(conf["model"], conf["loss"]), train_set, val_set

    return train(args, conf, exp_dir, resume, build, panels=r2d2_panels)


def main(argv: Sequence[str] | None = None) -> int:
    return main_from(run, argv, "train_r2d2.py")


if __name__ == "__main__":
    sys.exit(main())
