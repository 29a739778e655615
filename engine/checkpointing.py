"""The checkpoints of a :class:`engine.trainer.Trainer`: what they hold, writing and resuming.

A checkpoint holds the model, optimiser, scheduler, gradient scaler, step, best metric value,
NaN streak, the resolved config and the random state of every rank (``"rng"``: a list in rank
order, see ``engine.reproducibility``), plus the plateau schedule and a subclass's
``extra_state`` when used. Files are written atomically by rank 0; the last ``keep_last`` are
kept, and ``best.pt`` by ``train.best_metric``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch.distributed as dist
from tqdm import tqdm

from engine.reproducibility import gather_rng_states, restore_rank_rng
from engine.state import check_training_checkpoint, first_state_mismatch
from utils.config import to_plain
from utils.errors import UserError
from utils.io import atomic_torch_save, load_checkpoint


class CheckpointMixin:
    """Saving and ``--resume`` of the :class:`engine.trainer.Trainer` (its attributes)."""

    def _state(self, rng: list[dict[str, Any]] | None) -> dict[str, Any]:
        state = self._base_state(rng)
        # Written only when used, so other runs' checkpoints keep their exact layout.
        if self.plateau is not None:
            state["plateau"] = self.plateau.state_dict()
        extra = self.extra_state()
        if extra:
            state["extra"] = extra
        return state

    def _base_state(self, rng: list[dict[str, Any]] | None) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best": self.best,
            "nan_streak": self.nan_policy.streak,
            "rng": rng,
            "config": to_plain(self.conf),
        }

    def save(self) -> Path | None:
        """Write ``last_<step>.pt`` atomically and prune to ``keep_last``.

        Every rank must call it (the random states are gathered); rank 0 writes and
        returns the path, the others return None.
        """
        rng = gather_rng_states(self.device)
        if not self.dist.is_main:
            return None
        path = self.ckpt_dir / f"last_{self.step:08d}.pt"
        atomic_torch_save(self._state(rng), path)
        for old in sorted(self.ckpt_dir.glob("last_*.pt"))[: -self.tconf["keep_last"]]:
            old.unlink()
        return path

    def _update_best(self, results: dict[str, float]) -> None:
        """Write ``best.pt`` when ``best_metric`` improved (every rank calls it)."""
        key = self.tconf["best_metric"]
        if key not in results:
            if self.dist.is_main:
                tqdm.write(f"warning: best_metric '{key}' not in {sorted(results)}")
            return
        value = results[key]
        # The results are reduced over ranks, so every rank takes the same branch.
        better = (
            self.best is None
            or (self.tconf["best_mode"] == "min" and value < self.best)
            or (self.tconf["best_mode"] == "max" and value > self.best)
        )
        if better and math.isfinite(value):
            self.best = value
            rng = gather_rng_states(self.device)
            if self.dist.is_main:
                atomic_torch_save(self._state(rng), self.ckpt_dir / "best.pt")

    def _load(self, path: str | Path) -> None:
        """Restore the whole training state from a checkpoint (``--resume``).

        Raises:
            UserError: unreadable file, not a training checkpoint, or a model or
                optimiser that does not fit this run (naming the first bad tensor).
        """
        ckpt = check_training_checkpoint(load_checkpoint(path), path)
        problem = first_state_mismatch(self.model.state_dict(), ckpt["model"])
        if problem:
            raise UserError(f"checkpoint '{path}' does not match the model: {problem}")
        self.model.load_state_dict(ckpt["model"])
        step = int(ckpt["step"])
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            note = restore_rank_rng(
                ckpt["rng"],
                self.dist.rank,
                self.dist.world_size,
                self.tconf["seed"],
                step,
                self.device,
            )
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise UserError(
                f"checkpoint '{path}': its optimiser/scheduler/RNG state does not fit "
                f"this run ({first})"
            ) from None
        self.step, self.best = step, ckpt.get("best")
        self.nan_policy.streak = ckpt.get("nan_streak", 0)
        if self.plateau is not None and "plateau" in ckpt:
            self.plateau.load_state_dict(ckpt["plateau"])
        self.load_extra_state(ckpt.get("extra", {}))
        self.resumed_from = self.step
        if self.dist.is_main:
            print(f"resumed from step {self.step} ({path})")
            if note:
                print(f"note: {note}")
        if self.dist.enabled:
            dist.barrier()
