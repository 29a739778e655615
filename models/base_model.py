"""The contract every model follows (after glue-factory).

A model class declares ``default_conf`` (a plain dict), builds its layers in ``_init(conf)``,
computes predictions in ``_forward(data) -> dict`` and, when trainable, its training objective in
``loss(pred, data) -> (losses, metrics)`` where ``losses`` holds a scalar ``"total"`` and every
term, and ``metrics`` holds scalars to log. The ``model`` and ``loss`` sections of a config are
merged strictly with ``default_conf`` and ``default_loss_conf`` (unknown keys are errors).
Constructors never load weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from utils.config import merge_config


class BaseModel(nn.Module):
    """Base class: strict config merge, dict-in / dict-out forward, a ``loss`` hook."""

    default_conf: dict[str, Any] = {}
    default_loss_conf: dict[str, Any] = {}

    def __init__(
        self,
        conf: dict[str, Any] | None = None,
        loss_conf: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.conf = merge_config(self.defaults(), conf or {}, prefix="model.")
        self.loss_conf = merge_config(
            self.loss_defaults(), loss_conf or {}, prefix="loss."
        )
        self._init(self.conf)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``default_conf`` of the class and its parents, children overriding parents."""
        return cls._merged("default_conf")

    @classmethod
    def loss_defaults(cls) -> dict[str, Any]:
        """``default_loss_conf`` of the class and its parents (the config's ``loss`` section)."""
        return cls._merged("default_loss_conf")

    @classmethod
    def _merged(cls, attribute: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, attribute, {}) or {})
        return merged

    def _init(self, conf: dict[str, Any]) -> None:
        raise NotImplementedError

    def _forward(self, data: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def forward(self, data: dict[str, Any]) -> dict[str, Any]:
        return self._forward(data)

    def load_initial_weights(self, path: str) -> list[str]:
        """Load a weights file into this fresh model (``train.init_weights``).

        Accepts a ``train_*.py`` checkpoint or a published file that ``models.weights`` knows;
        returns the names of the parameters the file lacks (they keep their initialisation).
        """
        from models.weights import load_initial_weights

        return load_initial_weights(self, path)

    def may_leave_parameters_unused(self, sample: dict[str, Any]) -> bool:
        """Whether training on batches of samples like ``sample`` leaves some parameters
        without gradient; DDP must then look for them (``train.find_unused_parameters``)."""
        return False

    def loss(
        self, pred: dict[str, Any], data: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        raise NotImplementedError(f"{type(self).__name__} has no training loss")
