"""Model registry and loading of trained models for inference.

``get_model(name)`` returns the class registered under a config's ``model.name``;
``load_extractor(path)`` turns a checkpoint written by the training engine (or, for the formats
listed in ``models.weights``, a foreign weight file) into a callable keypoint extractor with the
contract used by ``extract.py`` and ``evaluation.py``.
"""

from __future__ import annotations

import importlib
from typing import Any

from utils.errors import UserError

# name -> "module:Class"; a model module is imported only when used.
MODELS = {
    "magicpoint": "models.superpoint:MagicPoint",
    "superpoint": "models.superpoint:SuperPoint",
    "r2d2": "models.r2d2:R2D2",
    "inversion": "models.inversion:InversionModel",
    "refiner": "models.refiner:RefinerModel",
}


def get_model(name: str):
    """The model class registered as ``name`` (``model.name`` in a config)."""
    if name not in MODELS:
        raise UserError(f"unknown model name '{name}'; valid names: {sorted(MODELS)}")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(conf: dict[str, Any], loss_conf: dict[str, Any] | None = None):
    """Instantiate ``conf['name']`` with ``conf`` (randomly initialised)."""
    return get_model(conf.get("name", ""))(conf, loss_conf)


def load_extractor(path: str, device: str = "cpu", conf: dict[str, Any] | None = None):
    """Load a keypoint extractor from a local weights file (see ``models.extractor``)."""
    from models.extractor import load_extractor as _load

    return _load(path, device=device, conf=conf)
