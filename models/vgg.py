"""VGG16 feature extractor for perceptual losses, reading torchvision's weight file layout.

The convolutional part of VGG16 (configuration "D", Simonyan and Zisserman 2015) is defined
here with the module indices of torchvision's ``vgg16().features`` so that its published
file ``vgg16-397923af.pth`` loads key for key (``features.0.weight`` ... ``features.28.bias``;
the ``classifier.*`` entries are not used and are skipped). Torchvision is not a dependency.
The constructor never loads weights: :func:`load_vgg16_weights` reads a local file, and
nothing is ever downloaded.

Named activations (``relu1_2`` = ``features.3``, ``relu2_2`` = 8, ``relu3_3`` = 15,
``relu4_3`` = 22, ``relu5_3`` = 29) are what perceptual losses read; the forward pass stops
at the deepest one requested. Inputs are expected ImageNet-normalised
(:func:`imagenet_normalize`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from utils.errors import UserError
from utils.io import load_checkpoint

VGG16_CONFIG: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
]  # fmt: skip
"""Channels per 3 x 3 convolution, ``M`` a 2 x 2 max pooling (torchvision's config "D")."""

LAYER_INDEX = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}
"""Index in ``features`` of the activations that perceptual losses use."""

VGG16_FILE = "vgg16-397923af.pth"
"""File name of torchvision's ImageNet VGG16 weights."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(image: torch.Tensor) -> torch.Tensor:
    """``(B, 1|3, H, W)`` in [0, 1] to ImageNet-normalised ``(B, 3, H, W)`` (grey repeated)."""
    if image.shape[1] == 1:
        image = image.expand(-1, 3, -1, -1)
    mean = image.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (image - mean) / std


class VGG16(nn.Module):
    """VGG16 convolutional features with torchvision's module indices.

    Shape:
        ``forward(x, layers)``: ``x (B, 3, H, W)`` ImageNet-normalised; returns
        ``{name: (B, C_name, H / s, W / s)}`` for the requested names of
        :data:`LAYER_INDEX` (``relu1_2``: 64 channels at s = 1, ``relu2_2``: 128 at 2,
        ``relu3_3``: 256 at 4, ``relu4_3``: 512 at 8, ``relu5_3``: 512 at 16).
    """

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG16_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)

    def forward(
        self, x: torch.Tensor, layers: tuple[str, ...] | list[str]
    ) -> dict[str, torch.Tensor]:
        unknown = [name for name in layers if name not in LAYER_INDEX]
        if unknown:
            raise ValueError(
                f"unknown VGG16 layer(s) {unknown}; valid: {list(LAYER_INDEX)}"
            )
        wanted = {LAYER_INDEX[name]: name for name in layers}
        last = max(wanted)
        out: dict[str, torch.Tensor] = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in wanted:
                out[wanted[index]] = x
            if index == last:
                break
        return out


def load_vgg16_weights(model: VGG16, path: str | Path) -> None:
    """Load torchvision's VGG16 state dict (``vgg16-397923af.pth`` layout) into ``model``.

    Every ``features.*`` tensor of the model must be in the file with the same shape, and the
    file may hold no other ``features.*`` key; ``classifier.*`` entries are ignored.

    Raises:
        UserError: missing file (saying where to put it and that ``loss.perceptual=0``
            trains without it), unreadable file, or a state dict of another layout (one line
            naming the first mismatching key).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"VGG16 weights '{path}' not found: put torchvision's {VGG16_FILE} there "
            "(or set loss.vgg_weights=PATH), or set loss.perceptual=0 to train without "
            "the perceptual term"
        )
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise UserError(
            f"VGG16 weights '{path}' are not a state dict of tensors "
            "(expected torchvision's vgg16 layout, features.N.weight/bias)"
        )
    expected = model.state_dict()
    for key, value in state.items():
        if key.startswith("classifier."):
            continue
        if key not in expected:
            raise UserError(
                f"VGG16 weights '{path}' do not match torchvision's vgg16 layout: "
                f"unexpected key '{key}'"
            )
        if tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(
                f"VGG16 weights '{path}' do not match torchvision's vgg16 layout: key "
                f"'{key}' has shape {tuple(value.shape)}, expected "
                f"{tuple(expected[key].shape)}"
            )
    missing = [key for key in expected if key not in state]
    if missing:
        raise UserError(
            f"VGG16 weights '{path}' do not match torchvision's vgg16 layout: "
            f"missing key '{missing[0]}'"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in expected})
