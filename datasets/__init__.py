"""Dataset registry: ``data.name`` in a config selects a dataset class by name."""

from __future__ import annotations

import importlib

from utils.errors import UserError

DATASETS = {
    "synthetic_shapes": "datasets.synthetic_shapes:SyntheticShapes",
    "image_folder": "datasets.image_folder:ImageFolder",
    "superpoint_pairs": "datasets.superpoint_pairs:SuperPointPairs",
    "r2d2_pairs": "datasets.r2d2_pairs:R2D2PairDataset",
    "inversion": "datasets.inversion:InversionDataset",
}


def get_dataset(name: str):
    """The dataset class registered as ``name``."""
    if name not in DATASETS:
        raise UserError(
            f"unknown dataset name '{name}'; valid names: {sorted(DATASETS)}"
        )
    module, cls = DATASETS[name].split(":")
    return getattr(importlib.import_module(module), cls)
