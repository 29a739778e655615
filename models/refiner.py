"""GAN refiner of feature inversion (InvSfM's RefineNet stage) over a trained coarse model.

``model.name: refiner`` holds three networks:

* ``coarse``: the coarse network of a ``train_reconstruct.py`` checkpoint
  (``model.coarse_checkpoint``), whose architecture must match ``model.coarse``; frozen (eval
  mode, no gradients) unless ``model.finetune_coarse``;
* ``generator``: a network of :func:`models.inversion.build_network` reading the coarse image
  concatenated with the sparse input (``C_out_coarse + C_in`` channels). With
  ``model.residual`` (default) its output is added to the coarse network's logits and its
  output layer starts at zero, so training starts from the coarse image instead of from
  noise (a refiner trained for a few hundred steps otherwise stays below its input);
* ``discriminator``: ``invsfm`` conv blocks or ``patchgan`` (:mod:`models.discriminator`),
  seeing the image alone or, with ``discriminator.conditional``, the image concatenated
  with the sparse input.

``forward(data)`` returns ``image (B, C_out, H, W)`` (refined) and ``coarse``, both in
[0, 1]. ``loss(pred, data)`` is the generator's objective: ``loss.pixel`` x L1 +
``loss.perceptual`` x VGG16 perceptual + ``loss.ssim`` x (1 - SSIM) + ``loss.adversarial`` x
the GAN generator term (defaults 1 / 5 / 0 / 10; InvSfM's weights 1 / 1 / 1000 as a config).
:meth:`RefinerModel.discriminator_loss` is the discriminator's. The alternation of the two
optimisers lives in ``train_refine.py`` (the engine's ``train_step`` override).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from losses.inversion import GAN_MODES, GANLoss, PerceptualLoss, ReconstructionLoss
from models.base_model import BaseModel
from models.discriminator import DISCRIMINATORS, NORMS, build_discriminator
from models.inversion import (
    NETWORK_DEFAULTS,
    RECONSTRUCTION_LOSS_DEFAULTS,
    build_network,
    check_loss_conf,
    check_network_conf,
    image_metrics,
    load_perceptual,
    output_layer,
    run_padded,
)
from utils.errors import UserError
from utils.io import load_checkpoint

# The keys that define a network's tensors: a coarse checkpoint must agree on all of them.
ARCHITECTURE_KEYS = ("arch", "in_channels", "out_channels", "widths")


class RefinerModel(BaseModel):
    """Coarse network + GAN refiner + discriminator (see module docstring).

    Data keys: ``input (B, C_in, H, W)``, ``image (B, C_out, H, W)``. Prediction keys:
    ``image`` and ``coarse`` ``(B, C, H, W)`` in [0, 1].
    """

    default_conf: dict[str, Any] = {
        "name": "refiner",
        **NETWORK_DEFAULTS,
        # Architecture of the coarse network; must match the checkpoint's model section.
        "coarse": dict(NETWORK_DEFAULTS),
        # train_reconstruct.py checkpoint the coarse network starts from.
        "coarse_checkpoint": None,
        # Train the coarse network with the refiner (False: frozen, eval mode).
        "finetune_coarse": False,
        # Refine as a correction of the coarse logits, starting at zero (see docstring).
        "residual": True,
        "discriminator": {
            "type": "patchgan",
            "widths": [64, 128, 256, 512],
            "norm": "batch",
            # Also show the discriminator the sparse input (pix2pix's conditional GAN).
            "conditional": False,
        },
    }
    default_loss_conf: dict[str, Any] = {
        **{k: v for k, v in RECONSTRUCTION_LOSS_DEFAULTS.items() if k != "l1"},
        "pixel": 1.0,
        "adversarial": 10.0,
        "gan_mode": "vanilla",
        # The discriminator steps only while its loss is above this value...
        "d_threshold": 0.1,
        # ...and only every k-th step.
        "d_every": 1,
    }

    def _init(self, conf: dict[str, Any]) -> None:
        check_network_conf(conf)
        check_network_conf(conf["coarse"], prefix="model.coarse.")
        if conf["coarse"]["in_channels"] != conf["in_channels"]:
            raise UserError(
                f"config key 'model.coarse.in_channels' ({conf['coarse']['in_channels']}) "
                f"differs from 'model.in_channels' ({conf['in_channels']}): both read "
                "the same sparse input"
            )
        if conf["coarse"]["out_channels"] != conf["out_channels"]:
            raise UserError(
                f"config key 'model.out_channels' ({conf['out_channels']}) differs from "
                f"'model.coarse.out_channels' ({conf['coarse']['out_channels']}): both "
                "are compared with the same target image"
            )
        self._check_loss_conf()
        disc = conf["discriminator"]
        if disc["type"] not in DISCRIMINATORS:
            raise UserError(
                f"config key 'model.discriminator.type': {disc['type']!r} is not one "
                f"of {DISCRIMINATORS}"
            )
        if disc["norm"] not in NORMS:
            raise UserError(
                f"config key 'model.discriminator.norm': {disc['norm']!r} is not one "
                f"of {NORMS}"
            )
        self.coarse = build_network(conf["coarse"])
        self.generator = build_network(
            conf, conf["in_channels"] + conf["coarse"]["out_channels"]
        )
        d_channels = conf["out_channels"] + (
            conf["in_channels"] if disc["conditional"] else 0
        )
        self.discriminator = build_discriminator(
            disc["type"], d_channels, disc["widths"], disc["norm"]
        )
        self.gan = GANLoss(self.loss_conf["gan_mode"])
        self.criterion: ReconstructionLoss | None = None
        if self.loss_conf["perceptual"] <= 0:
            self.criterion = self._criterion(None)
        self.coarse.requires_grad_(conf["finetune_coarse"])
        if conf["residual"]:
            head = output_layer(self.generator)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def _check_loss_conf(self) -> None:
        conf = self.loss_conf
        check_loss_conf({**conf, "l1": conf["pixel"]})
        if conf["adversarial"] < 0:
            raise UserError("config key 'loss.adversarial' must be >= 0")
        if conf["gan_mode"] not in GAN_MODES:
            raise UserError(
                f"config key 'loss.gan_mode': {conf['gan_mode']!r} is not one of "
                f"{GAN_MODES}"
            )
        if conf["d_every"] < 1:
            raise UserError(
                f"config key 'loss.d_every' must be >= 1, got {conf['d_every']}"
            )

    def _criterion(self, perceptual: PerceptualLoss | None) -> ReconstructionLoss:
        conf = self.loss_conf
        return ReconstructionLoss(
            conf["pixel"], conf["perceptual"], conf["ssim"], perceptual
        )

    def load_loss_weights(self) -> None:
        """Read VGG16 for the perceptual term (no-op at weight 0); UserError if missing."""
        if self.criterion is None:
            self.criterion = self._criterion(load_perceptual(self.loss_conf))

    def load_coarse(self, path: str) -> None:
        """Load the coarse network from a ``train_reconstruct.py`` checkpoint.

        Raises:
            UserError: unreadable file, not an inversion checkpoint, or a network whose
                architecture (``arch``, channels, ``widths``) differs from ``model.coarse``.
        """
        ckpt = load_checkpoint(path)
        if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
            raise UserError(
                f"coarse checkpoint '{path}' is not a train_reconstruct.py checkpoint "
                "(no 'model'/'config' entries)"
            )
        saved = ckpt["config"].get("model", {})
        if saved.get("name") != "inversion":
            raise UserError(
                f"coarse checkpoint '{path}' holds a {saved.get('name')!r} model, not an "
                "inversion network from train_reconstruct.py"
            )
        expected = self.conf["coarse"]
        for key in ARCHITECTURE_KEYS:
            if saved.get(key) != expected[key]:
                raise UserError(
                    f"coarse checkpoint '{path}' is another architecture: its model.{key} "
                    f"is {saved.get(key)!r}, model.coarse.{key} is {expected[key]!r}"
                )
        state = {
            key[len("network.") :]: value
            for key, value in ckpt["model"].items()
            if key.startswith("network.")
        }
        try:
            self.coarse.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0][:200]
            raise UserError(
                f"coarse checkpoint '{path}' does not fit model.coarse: {first}"
            ) from None

    def train(self, mode: bool = True) -> RefinerModel:
        """``nn.Module.train``, keeping a frozen coarse network in eval mode."""
        super().train(mode)
        if not self.conf["finetune_coarse"]:
            # A frozen coarse network keeps its BatchNorm statistics and disables dropout.
            self.coarse.eval()
        return self

    def generator_parameters(self) -> list[nn.Parameter]:
        """What the generator's optimiser updates (the coarse network when fine-tuned)."""
        params = list(self.generator.parameters())
        if self.conf["finetune_coarse"]:
            params += list(self.coarse.parameters())
        return params

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """What the discriminator's optimiser updates."""
        return list(self.discriminator.parameters())

    def _forward(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        sparse = data["input"]
        with torch.set_grad_enabled(
            torch.is_grad_enabled() and self.conf["finetune_coarse"]
        ):
            coarse_logits = run_padded(self.coarse, sparse)
        coarse = torch.sigmoid(coarse_logits)
        refined = run_padded(
            self.generator, torch.cat([coarse.to(sparse.dtype), sparse], 1)
        )
        if self.conf["residual"]:
            refined = refined + coarse_logits
        return {"image": torch.sigmoid(refined), "coarse": coarse}

    def _discriminate(self, image: torch.Tensor, data: dict[str, Any]) -> torch.Tensor:
        # float32 in: under autocast the convolutions still run in bf16/fp16, and outside
        # it (validation computes the loss after an autocast forward) the dtypes agree.
        image = image.float()
        if self.conf["discriminator"]["conditional"]:
            image = torch.cat([image, data["input"].float()], 1)
        return self.discriminator(image)

    def discriminator_loss(
        self, pred: dict[str, Any], data: dict[str, Any]
    ) -> torch.Tensor:
        """GAN loss of the discriminator on the target (real) and ``pred['image']`` (fake,
        detached so no gradient reaches the generator). Scalar."""
        real = self._discriminate(data["image"], data)
        fake = self._discriminate(pred["image"].detach(), data)
        return self.gan.discriminator(real, fake)

    def loss(
        self, pred: dict[str, Any], data: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if self.criterion is None:
            raise RuntimeError(
                "RefinerModel.load_loss_weights() must run before loss() when "
                "loss.perceptual > 0"
            )
        losses = self.criterion(pred["image"], data["image"])
        if self.loss_conf["adversarial"] > 0:
            losses["adversarial"] = self.gan.generator(
                self._discriminate(pred["image"], data)
            )
            losses["total"] = (
                losses["total"] + self.loss_conf["adversarial"] * losses["adversarial"]
            )
        return losses, {}

    @torch.no_grad()
    def metrics(self, pred: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        refined = image_metrics(pred["image"], data["image"])
        coarse = image_metrics(pred["coarse"], data["image"])
        return {**refined, **{f"coarse_{k}": v for k, v in coarse.items()}}
