"""Small deterministic data shared by engine tests (no files, no downloads)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from engine.trainer import TRAIN_DEFAULTS
from utils.config import merge_config

TINY_MODEL = {"name": "magicpoint", "channels": [8, 8, 16, 16], "head_channels": 16}


class SquaresDataset(Dataset):
    """Bright squares on black; a keypoint at each square's top-left corner."""

    def __init__(self, length: int, size: int = 64):
        self.length, self.size = length, size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(index)
        image = np.zeros((self.size, self.size), np.float32)
        keypoint_map = np.zeros_like(image)
        for _ in range(4):
            x, y = rng.integers(8, self.size - 16, 2)
            image[y : y + 7, x : x + 7] = 1.0
            keypoint_map[y, x] = 1.0
        return {
            "image": image[None],
            "keypoint_map": keypoint_map,
            "valid_mask": np.ones_like(image),
        }


def tiny_conf(**train) -> dict:
    base = {
        "batch_size": 4,
        "num_workers": 0,
        "precision": "fp32",
        "device": "cpu",
        "log_every": 1,
        "val_every": 2,
        "val_batches": 1,
        "save_every": 2,
    }
    return {
        "model": dict(TINY_MODEL),
        "train": merge_config(TRAIN_DEFAULTS, {**base, **train}),
    }


def max_weight_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        (p - q).abs().max().item()
        for p, q in zip(a.state_dict().values(), b.state_dict().values())
    )


def write_photos(folder, names=("chelsea", "coffee", "astronaut"), size=(128, 96)):
    """Small real photographs from scikit-image as ``<folder>/<name>.png`` (BGR PNGs).

    ``size`` is OpenCV's (width, height). Returns ``folder``."""
    from pathlib import Path

    import cv2
    import skimage.data

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        image = getattr(skimage.data, name)()
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{name}.png"), small[..., ::-1])
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a test's process group)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_torchrun_env(rank: int, port: int, world: int = 2) -> None:
    """The environment ``torchrun`` gives process ``rank`` of ``world`` on one machine."""
    import os

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
