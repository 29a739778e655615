"""Training state helpers of the engine: seeding, optimisers, learning-rate schedules, and
finding, checking and matching checkpoints (random-state snapshots are in
``engine.reproducibility``). Everything here is task-agnostic and stateless; the
:class:`engine.trainer.Trainer` owns the state itself.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import UserError
from utils.io import load_checkpoint

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


SCHEDULES = ("constant", "cosine", "linear", "multistep", "cosine_restarts", "plateau")


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed torch (same on every rank, so initial weights agree) and NumPy/random per rank.

    Call it before building the model so a run's initial weights depend only on the seed.
    """
    torch.manual_seed(seed)
    np.random.seed(seed + rank)
    random.seed(seed + rank)


def build_optimizer(params, conf: dict[str, Any]) -> torch.optim.Optimizer:
    name, lr, wd = conf["optimizer"], conf["lr"], conf["weight_decay"]
    if name == "adam":
        return torch.optim.Adam(
            params, lr=lr, betas=tuple(conf["betas"]), weight_decay=wd
        )
    if name == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, betas=tuple(conf["betas"]), weight_decay=wd
        )
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=conf["momentum"], weight_decay=wd
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=lr, momentum=conf["momentum"], weight_decay=wd
        )
    raise UserError(
        f"config key 'train.optimizer': '{name}' is not one of {OPTIMIZERS}"
    )


def lr_factor(step: int, conf: dict[str, Any], max_steps: int) -> float:
    """Multiplier of the base learning rate at ``step`` (warm-up, then the schedule)."""
    sched = conf["lr_schedule"]
    kind, warmup = sched["type"], sched["warmup_steps"]
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    floor = sched["min_lr_ratio"]
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "linear":
        return floor + (1 - floor) * (1 - progress)
    if kind == "multistep":
        return sched["gamma"] ** sum(step >= m for m in sched["milestones"])
    if kind == "cosine_restarts":
        # SGDR (Loshchilov and Hutter 2017): cosine cycles of `period` steps, each
        # `period_mult` times longer than the last, restarting at the base rate.
        if sched["period"] < 1 or sched["period_mult"] < 1:
            raise UserError(
                "config keys 'train.lr_schedule.period' and 'period_mult' must be >= 1"
            )
        position, length = step - warmup, sched["period"]
        while position >= length:
            position -= length
            length *= sched["period_mult"]
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * position / length))
    if kind == "plateau":
        # Stateful: the Trainer multiplies this by its PlateauScale.
        return 1.0
    raise UserError(
        f"config key 'train.lr_schedule.type': '{kind}' is not one of {SCHEDULES}"
    )


class PlateauScale:
    """Learning-rate multiplier for ``lr_schedule.type: plateau`` (reduce on plateau).

    After every validation, :meth:`update` compares the monitored metric with the best so
    far; when it has not improved by more than ``threshold`` (relative) for ``patience``
    validations in a row, the scale is multiplied by ``gamma``, never going below
    ``floor``. Its state is saved in checkpoints so a resumed run continues exactly.
    """

    def __init__(
        self, gamma: float, patience: int, threshold: float, mode: str, floor: float
    ):
        self.gamma, self.patience, self.threshold = gamma, patience, threshold
        self.mode, self.floor = mode, floor
        self.scale, self.best, self.bad = 1.0, None, 0

    def update(self, value: float) -> bool:
        """Record a validation value; returns True when the scale was lowered."""
        if not math.isfinite(value):
            return False
        margin = abs(self.best) * self.threshold if self.best is not None else 0.0
        improved = self.best is None or (
            value < self.best - margin
            if self.mode == "min"
            else value > self.best + margin
        )
        if improved:
            self.best, self.bad = value, 0
            return False
        self.bad += 1
        if self.bad < self.patience:
            return False
        self.bad = 0
        lowered = max(self.floor, self.scale * self.gamma)
        changed = lowered < self.scale
        self.scale = lowered
        return changed

    def state_dict(self) -> dict[str, Any]:
        """Scale, best value and count of validations without improvement."""
        return {"scale": self.scale, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best, self.bad = state["scale"], state["best"], state["bad"]


def latest_checkpoint(exp_dir: str | Path) -> Path | None:
    """The newest ``last_*.pt`` of a run folder, or None."""
    found = sorted((Path(exp_dir) / "checkpoints").glob("last_*.pt"))
    return found[-1] if found else None


TRAINING_STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "rng")
"""What a checkpoint needs to continue a run (``Trainer._state`` writes more)."""


def check_training_checkpoint(ckpt: Any, path: str | Path) -> dict[str, Any]:
    """Return ``ckpt`` if it can continue a run, else raise one line naming the file.

    Raises:
        UserError: not a dict, or a key of :data:`TRAINING_STATE_KEYS` missing (a
            published weights file, or one saved by other code).
    """
    missing = (
        [k for k in TRAINING_STATE_KEYS if k not in ckpt]
        if isinstance(ckpt, dict)
        else list(TRAINING_STATE_KEYS)
    )
    if missing:
        raise UserError(
            f"{path}: not a train_*.py checkpoint (no '{missing[0]}' state), so it "
            "cannot continue a run; start from its weights with train.init_weights"
        )
    return ckpt


def first_state_mismatch(expected: dict[str, torch.Tensor], state: Any) -> str | None:
    """Describe the first tensor of ``state`` that does not fit ``expected``, or None.

    Args:
        expected: the model's ``state_dict()``.
        state: the checkpoint's ``model`` entry.
    """
    if not isinstance(state, dict):
        return f"'model' holds {type(state).__name__}, not a state dict"
    for key, value in state.items():
        if key not in expected:
            return f"unexpected tensor '{key}'"
        shape = tuple(getattr(value, "shape", ()))
        if shape != tuple(expected[key].shape):
            return (
                f"tensor '{key}' has shape {shape}, the model expects "
                f"{tuple(expected[key].shape)}"
            )
    missing = [k for k in expected if k not in state]
    return f"missing tensor '{missing[0]}'" if missing else None


def resumable_checkpoint(
    exp_dir: str | Path, warn: Callable[[str], None]
) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of a run that can be read, loaded.

    ``last_*.pt`` files newest first, then ``best.pt``; each unreadable one (truncated by a
    full disk or a kill during a copy, corrupt) is reported through ``warn`` and skipped, so
    a run is never stranded while an intact older checkpoint sits beside a broken one.

    Raises:
        UserError: the run has no checkpoint, or none is readable.
    """
    folder = Path(exp_dir) / "checkpoints"
    candidates = sorted(folder.glob("last_*.pt"), reverse=True)
    candidates += [p for p in [folder / "best.pt"] if p.is_file()]
    if not candidates:
        raise UserError(f"--resume: no checkpoint found in '{folder}'")
    skipped = []
    for path in candidates:
        try:
            ckpt = check_training_checkpoint(load_checkpoint(path), path)
        except UserError as err:
            skipped.append(path.name)
            warn(f"warning: {err}; trying an older checkpoint")
            continue
        return path, ckpt
    raise UserError(
        f"--resume: no readable checkpoint in '{folder}' "
        f"({', '.join(skipped)} all unreadable)"
    )
