"""Train the GAN refiner of feature inversion over a coarse checkpoint (shared engine).

    python train_refine.py configs/refine_sift.yaml model.coarse_checkpoint=CKPT
    python train_refine.py configs/refine_demo.yaml --resume

The ``data`` section is ``train_reconstruct.py``'s (it must give the coarse network's input
channels). ``model`` configures :class:`models.refiner.RefinerModel`: the refiner network
(``arch``, ``widths``), ``coarse`` (the coarse network's architecture, checked against the
checkpoint's), ``coarse_checkpoint``, ``finetune_coarse`` and ``discriminator`` (``type``:
invsfm | patchgan, ``widths``, ``norm``, ``conditional``). ``loss`` holds the weights (pixel 1,
perceptual 5, adversarial 10 by default; InvSfM's 1 / 1 / 1000 as
``configs/refine_invsfm_weights.yaml``), ``gan_mode`` (vanilla | lsgan | hinge), the
discriminator's update threshold ``d_threshold`` (0.1) and period ``d_every``. ``train``
configures the generator's optimiser and ``train.discriminator`` the discriminator's.

Each step (:meth:`RefineTrainer.train_step`, the engine's override) runs the generator once,
updates the discriminator on real vs. generated images when its loss is above
``d_threshold`` and the step is a multiple of ``d_every``, then updates the generator with
the discriminator fixed. Both optimisers, both schedules and the count of discriminator
updates are in every checkpoint, so ``--resume`` continues exactly. The refiner runs in one
process (not under ``torchrun``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from datasets.inversion import (
    TRAINING_DATA_DEFAULTS,
    build_datasets,
    fill_input_channels,
)
from engine.cli import check_init_weights, main_from, parse, resolve_run, train
from engine.devices import autocast
from engine.state import build_optimizer
from engine.step_policy import StepVerdict, apply_update, step_outcome
from engine.trainer import TRAIN_DEFAULTS, Trainer
from models.inversion import inversion_panels
from models.refiner import RefinerModel
from utils.errors import UserError

DISCRIMINATOR_OPTIMIZER: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-4,
    "betas": [0.5, 0.999],
    "momentum": 0.9,
    "weight_decay": 0.0,
}


def defaults(user: dict[str, Any]) -> dict[str, Any]:
    """Code defaults of every section (batch 8, Adam 1e-4 with betas 0.5/0.999 for both)."""
    train = {
        **TRAIN_DEFAULTS,
        "batch_size": 8,
        "lr": 1e-4,
        "betas": [0.5, 0.999],
        "max_steps": 50_000,
        "best_metric": "psnr",
        "best_mode": "max",
        "discriminator": dict(DISCRIMINATOR_OPTIMIZER),
    }
    return {
        "data": dict(TRAINING_DATA_DEFAULTS),
        "model": RefinerModel.defaults(),
        "loss": RefinerModel.loss_defaults(),
        "train": train,
    }


class RefineTrainer(Trainer):
    """The engine with the GAN step: two optimisers, both saved (see module docstring)."""

    model: RefinerModel

    def build_optimizers(self) -> None:
        """Generator optimiser (``train``) and discriminator optimiser
        (``train.discriminator``), each with the run's learning-rate schedule."""
        if self.dist.enabled:
            raise UserError(
                "train_refine.py runs in one process: start it without torchrun"
            )
        self.optimizer = build_optimizer(self.model.generator_parameters(), self.tconf)
        self.scheduler = self.make_scheduler(self.optimizer)
        d_conf = {**self.tconf, **self.tconf["discriminator"]}
        self.d_optimizer = build_optimizer(
            self.model.discriminator_parameters(), d_conf
        )
        self.d_scheduler = self.make_scheduler(self.d_optimizer)
        self.d_updates = 0

    def extra_state(self) -> dict[str, Any]:
        """The discriminator's optimiser, schedule and update count."""
        return {
            "d_optimizer": self.d_optimizer.state_dict(),
            "d_scheduler": self.d_scheduler.state_dict(),
            "d_updates": self.d_updates,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`; a checkpoint without it is refused."""
        if "d_optimizer" not in state:
            raise UserError(
                "checkpoint has no discriminator optimiser state: resume a refiner "
                "run with a train_refine.py checkpoint"
            )
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.d_scheduler.load_state_dict(state["d_scheduler"])
        self.d_updates = state["d_updates"]

    def _clip(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        clip = self.tconf["grad_clip"] if self.tconf["grad_clip"] > 0 else float("inf")
        return torch.nn.utils.clip_grad_norm_(params, clip)

    def discriminator_update(
        self, batch: dict[str, Any], pred: dict[str, Any], allowed: bool = True
    ) -> tuple[torch.Tensor, bool]:
        """Discriminator loss on the batch; one optimiser step when ``allowed`` and the loss
        is above ``loss.d_threshold`` (and finite). The generator is not touched: the
        fake images are detached. Returns ``(loss, stepped)``."""
        self.d_optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            d_loss = self.model.discriminator_loss(pred, batch)
        step = allowed and bool(d_loss.detach() > self.model.loss_conf["d_threshold"])
        if step:
            self.scaler.scale(d_loss).backward()
            self.scaler.unscale_(self.d_optimizer)
            norm = self._clip(self.model.discriminator_parameters())
            step = bool(torch.isfinite(norm)) or self.precision == "fp16"
            if step:
                self.scaler.step(self.d_optimizer)
            self.d_optimizer.zero_grad(set_to_none=True)
        return d_loss.detach().float(), step

    def generator_update(
        self, batch: dict[str, Any], pred: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], StepVerdict]:
        """Generator loss (pixel, perceptual, adversarial) and one optimiser step when it
        and its gradients are finite; the discriminator's parameters get no gradient.
        Returns ``(losses, verdict)`` (``engine.step_policy``)."""
        self.optimizer.zero_grad(set_to_none=True)
        discriminator = self.model.discriminator
        discriminator.requires_grad_(False)
        try:
            with autocast(self.device, self.precision):
                losses, _ = self.model.loss(pred, batch)
            self.scaler.scale(losses["total"]).backward()
        finally:
            discriminator.requires_grad_(True)
        self.scaler.unscale_(self.optimizer)
        norm = self._clip(self.model.generator_parameters())
        verdict = self.judge_step(losses["total"], norm)
        apply_update(self.optimizer, self.scaler, verdict)
        detached = {k: v.detach().float() for k, v in losses.items()}
        detached["grad_norm"] = norm.detach().float()
        return detached, verdict

    def train_step(
        self, batch: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict, str]:
        """One GAN step (see module docstring); logs the discriminator's loss and
        whether it stepped (``d_step``) next to the generator's terms."""
        batch = self.memory_format(batch)
        with autocast(self.device, self.precision):
            pred = self.net(batch)
        allowed = self.step % self.model.loss_conf["d_every"] == 0
        d_loss, stepped = self.discriminator_update(batch, pred, allowed)
        losses, verdict = self.generator_update(batch, pred)
        self.scaler.update()
        self.d_scheduler.step()
        self.d_updates += int(stepped)
        losses["discriminator"] = d_loss
        losses["d_step"] = torch.tensor(float(stepped))
        return losses, pred, step_outcome(verdict, self.scaler)


def run(argv: Sequence[str] | None = None) -> Trainer:
    """Parse, build and train; returns the finished :class:`RefineTrainer`."""
    args = parse(argv, "train_refine.py", __doc__.split("\n")[0])
    conf, exp_dir, resume = resolve_run(args, defaults)
    if conf["model"]["name"] != "refiner":
        raise UserError(
            "config key 'model.name': train_refine.py trains 'refiner', "
            f"got {conf['model']['name']!r}"
        )
    check_init_weights(conf, resume)  # the files named on the command line first
    coarse = conf["model"]["coarse_checkpoint"]
    if not coarse and resume is None:
        raise UserError(
            "config key 'model.coarse_checkpoint' is not set: give a "
            "train_reconstruct.py checkpoint"
        )

    def build(conf: dict[str, Any]):
        train_set, val_set = build_datasets(conf["data"])
        fill_input_channels(conf["model"], train_set)
        fill_input_channels(
            conf["model"]["coarse"], train_set, "model.coarse.in_channels"
        )
        model = RefinerModel(conf["model"], conf["loss"])
        if resume is None:
            model.load_coarse(str(Path(coarse)))
        model.load_loss_weights()
        return model, train_set, val_set

    return train(
        args,
        conf,
        exp_dir,
        resume,
        build,
        panels=inversion_panels,
        trainer_cls=RefineTrainer,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return main_from(run, argv, "train_refine.py")


if __name__ == "__main__":
    sys.exit(main())
