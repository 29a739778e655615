"""Losses of feature inversion: reconstruction (L1, VGG16 perceptual, SSIM) and GAN terms.

Small named modules composed with weights, each returning a scalar:

* :class:`PerceptualLoss`: the sum over VGG16 layers (default ``relu1_2``, ``relu2_2``,
  ``relu3_3``) of the mean squared difference of activations, on ImageNet-normalised
  inputs. The VGG16 is frozen and *not* a submodule, so it is neither trained nor saved in
  checkpoints; it follows the input's device and dtype on first use.
* :class:`ReconstructionLoss`: ``l1 * L1 + perceptual * P + ssim * (1 - SSIM)``, the coarse
  stage's objective (defaults 1 / 5 / 0) and the refiner's pixel terms.
* :class:`GANLoss`: ``vanilla`` (binary cross-entropy on logits), ``lsgan`` (least squares)
  or ``hinge``. The discriminator loss is the mean of its real and fake terms, so a
  vanilla discriminator at chance scores log 2 ~ 0.69 (the refiner's update threshold of
  0.1 compares against this scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from losses.image_quality import ssim
from models.vgg import VGG16, imagenet_normalize

GAN_MODES = ("vanilla", "lsgan", "hinge")


class PerceptualLoss(nn.Module):
    """Sum over layers of the MSE between VGG16 activations (see module docstring).

    Args:
        vgg: a :class:`models.vgg.VGG16` with its weights loaded.
        layers: activation names (``models.vgg.LAYER_INDEX``).

    Shape:
        prediction, target: ``(B, 1|3, H, W)`` in [0, 1]. Returns a scalar.
    """

    def __init__(self, vgg: VGG16, layers: list[str]):
        super().__init__()
        vgg = vgg.eval().requires_grad_(False)
        # A list hides the network from state_dict() and parameters(): it is a fixed
        # measuring instrument, read from its own file, not part of the trained model.
        self._vgg = [vgg]
        self.layers = list(layers)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        vgg = self._vgg[0]
        reference = next(vgg.parameters())
        if reference.device != prediction.device:
            vgg.to(prediction.device)
        # float32 in (see RefinerModel._discriminate): autocast still picks the conv dtype.
        both = imagenet_normalize(torch.cat([prediction.float(), target.float()]))
        features = vgg(both, self.layers)
        total = prediction.new_zeros(())
        for name in self.layers:
            fake, real = features[name].chunk(2)
            total = total + F.mse_loss(fake.float(), real.float().detach())
        return total


class ReconstructionLoss(nn.Module):
    """Weighted L1 + perceptual + (1 - SSIM) (see module docstring).

    Args:
        l1, perceptual, ssim_weight: term weights (a term of weight 0 is not computed).
        perceptual_loss: required when ``perceptual > 0``.

    Shape:
        ``forward(prediction, target)`` with ``(B, C, H, W)`` in [0, 1]; returns
        ``{"total", "l1", "perceptual", "ssim"}`` scalars (only the weighted terms).
    """

    def __init__(
        self,
        l1: float = 1.0,
        perceptual: float = 5.0,
        ssim_weight: float = 0.0,
        perceptual_loss: PerceptualLoss | None = None,
    ):
        super().__init__()
        if perceptual > 0 and perceptual_loss is None:
            raise ValueError("a perceptual weight > 0 needs a PerceptualLoss")
        self.weights = {"l1": l1, "perceptual": perceptual, "ssim": ssim_weight}
        self.perceptual_loss = perceptual_loss

    def forward(
        self, prediction: torch.Tensor, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.weights["l1"] > 0:
            terms["l1"] = (prediction.float() - target.float()).abs().mean()
        if self.weights["perceptual"] > 0:
            terms["perceptual"] = self.perceptual_loss(prediction, target)
        if self.weights["ssim"] > 0:
            terms["ssim"] = 1.0 - ssim(prediction.float(), target.float()).mean()
        total = prediction.new_zeros((), dtype=torch.float32)
        for name, value in terms.items():
            total = total + self.weights[name] * value
        return {"total": total, **terms}


class GANLoss(nn.Module):
    """Adversarial losses for the generator and the discriminator.

    Args:
        mode: ``vanilla`` | ``lsgan`` | ``hinge``.

    Shape:
        logits of any shape (``(B, 1)`` per image or ``(B, 1, h, w)`` per patch); the
        losses are scalars averaged over every element.
    """

    def __init__(self, mode: str = "vanilla"):
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"GAN loss {mode!r} is not one of {GAN_MODES}")
        self.mode = mode

    def discriminator(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor
    ) -> torch.Tensor:
        """Mean of the real and fake terms (the discriminator minimises it)."""
        real, fake = real_logits.float(), fake_logits.float()
        if self.mode == "vanilla":
            real_term = F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            fake_term = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        elif self.mode == "lsgan":
            real_term = (real - 1).pow(2).mean()
            fake_term = fake.pow(2).mean()
        else:
            real_term = F.relu(1 - real).mean()
            fake_term = F.relu(1 + fake).mean()
        return 0.5 * (real_term + fake_term)

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """The generator's term: make the discriminator call its output real."""
        fake = fake_logits.float()
        if self.mode == "vanilla":
            return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
        if self.mode == "lsgan":
            return (fake - 1).pow(2).mean()
        return -fake.mean()
