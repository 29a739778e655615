"""Train the coarse feature-inversion network (sparse features -> image) with the shared engine.

    python train_reconstruct.py configs/inversion_sift.yaml
    python train_reconstruct.py configs/inversion_sift.yaml data.extractor=orb --exp inv_orb
    python train_reconstruct.py configs/inversion_demo.yaml loss.perceptual=0 --resume

The ``data`` section configures :class:`datasets.inversion.InversionDataset` (images, online
extractor or ``extract.py`` feature files, sparsity, optional colour/depth/mask channels,
augmentation) plus ``val_images``; ``model`` the network (``arch``: unet | unetpp | invnet,
``widths``, ``out_channels``; ``in_channels`` is taken from the data and recorded in the
saved config); ``loss`` the weights of L1, VGG16 perceptual (``vgg_weights``: torchvision's
``vgg16-397923af.pth``; weight 0 needs no file) and SSIM. Schedules include ``plateau``
(on ``train.best_metric``), ``cosine_restarts`` and ``multistep``; optimisers adam, adamw,
sgd and rmsprop.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from datasets.inversion import (
    TRAINING_DATA_DEFAULTS,
    build_datasets,
    fill_input_channels,
)
from engine.cli import main_from, parse, resolve_run, train
from engine.trainer import TRAIN_DEFAULTS, Trainer
from models.inversion import InversionModel, inversion_panels
from utils.errors import UserError


def defaults(user: dict[str, Any]) -> dict[str, Any]:
    """Code defaults of every section (batch 8, Adam 1e-4, PSNR picks ``best.pt``)."""
    train = {
        **TRAIN_DEFAULTS,
        "batch_size": 8,
        "lr": 1e-4,
        "max_steps": 100_000,
        "best_metric": "psnr",
        "best_mode": "max",
    }
    return {
        "data": dict(TRAINING_DATA_DEFAULTS),
        "model": InversionModel.defaults(),
        "loss": InversionModel.loss_defaults(),
        "train": train,
    }


def run(argv: Sequence[str] | None = None) -> Trainer:
    """Parse, build and train; returns the finished :class:`Trainer` (tests inspect it)."""
    args = parse(argv, "train_reconstruct.py", __doc__.split("\n")[0])
    conf, exp_dir, resume = resolve_run(args, defaults)
    if conf["model"]["name"] != "inversion":
        raise UserError(
            "config key 'model.name': train_reconstruct.py trains 'inversion', "
            f"got {conf['model']['name']!r}"
        )

    def build(conf: dict[str, Any]):
        train_set, val_set = build_datasets(conf["data"])
        fill_input_channels(conf["model"], train_set)
        model = InversionModel(conf["model"], conf["loss"])
        # Before the run folder is written: a missing VGG16 file stops here.
        model.load_loss_weights()
        return model, train_set, val_set

    return train(args, conf, exp_dir, resume, build, panels=inversion_panels)


def main(argv: Sequence[str] | None = None) -> int:
    return main_from(run, argv, "train_reconstruct.py")


if __name__ == "__main__":
    sys.exit(main())
