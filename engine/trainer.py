"""The one training engine shared by every ``train_*.py``.

A task hands the :class:`Trainer` a model following ``models.base_model.BaseModel`` (``forward``
and ``loss``), a training and a validation dataset, and optionally a function drawing image
panels. The engine owns everything else:

* progress bar with ETA (tqdm) and TensorBoard scalars: every loss term, learning rate,
  images/s and the share of step time spent waiting for data; image panels;
* validation every ``val_every`` steps on a fixed stream (the validation set at epoch 0);
* checkpoints written atomically, the last ``keep_last`` kept plus ``best.pt`` by a metric;
* exact ``--resume``: model, optimiser, scheduler, gradient scaler, step, best value and every
  RNG state, with data order and augmentation fixed by (seed, epoch, index) so resuming replays
  exactly the batches an uninterrupted run would see;
* Ctrl-C finishes the current step, saves a checkpoint and exits (a second Ctrl-C aborts);
* NaN/inf policy (``nan_policy``): ``skip`` drops the update of a step whose loss or gradient
  is not finite and stops after ``max_nan_steps`` such steps in a row, without saving the
  broken state; ``stop`` stops at the first one;
* devices, autocast (bf16/fp16) and DistributedDataParallel through ``torchrun``.

Tasks needing a different step (e.g. a GAN alternating two optimisers) subclass
:class:`Trainer` and override :meth:`Trainer.train_step`, :meth:`Trainer.build_optimizers`
(more optimisers, each with :meth:`Trainer.make_scheduler`) and :meth:`Trainer.extra_state` /
:meth:`Trainer.load_extra_state` (what else a checkpoint holds).
"""

from __future__ import annotations

import gc
import math
import signal
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from engine.data import ResumableSampler, collate
from engine.devices import autocast, move_to_device, resolve_precision
from engine.distributed import DistInfo, all_reduce_sums
from engine.state import (
    PlateauScale,
    build_optimizer,
    check_training_checkpoint,
    first_state_mismatch,
    lr_factor,
    rng_state,
    seed_everything,
    set_rng_state,
)
from utils.config import save_config, to_plain
from utils.errors import UserError
from utils.io import atomic_torch_save, ensure_writable_dir, load_checkpoint

TRAIN_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "auto",
    "precision": "auto",
    "batch_size": 64,
    "num_workers": 2,
    "max_steps": 50000,
    # If > 0, training length in epochs: max_steps = epochs x batches per epoch.
    "epochs": 0,
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "momentum": 0.9,
    "lr_schedule": {
        # constant | cosine | linear | multistep | cosine_restarts | plateau
        "type": "constant",
        "warmup_steps": 0,
        "min_lr_ratio": 0.0,
        "milestones": [],
        # multistep: factor per milestone; plateau: factor per reduction.
        "gamma": 0.1,
        # cosine_restarts: first cycle length in steps, and growth of each next cycle.
        "period": 1000,
        "period_mult": 1,
        # plateau: validations without a relative improvement > threshold of
        # train.best_metric (in train.best_mode) before the rate is multiplied by gamma.
        "patience": 3,
        "threshold": 1e-4,
    },
    "grad_clip": 0.0,
    "log_every": 25,
    "image_every": 500,
    "val_every": 500,
    "val_batches": 10,
    "save_every": 1000,
    "keep_last": 3,
    "best_metric": "loss/total",
    "best_mode": "min",
    "nan_policy": "skip",
    "max_nan_steps": 20,
    "channels_last": False,
    # CPU/GPU speed switches (README, "Speed"): torch.compile of the network (inductor), and
    # the number of intra-op threads of the training process (0: PyTorch's default, one per
    # core).
    "compile": False,
    "num_threads": 0,
    # Weights to start a fresh run from (a train_*.py checkpoint or a published SuperPoint
    # file); parameters the file lacks keep their initialisation. Ignored by --resume.
    "init_weights": None,
}


class Trainer:
    """Runs training for one task (see module docstring).

    Args:
        conf: the full resolved config (its ``train`` section drives the engine).
        model: a ``BaseModel`` (``forward(batch) -> pred``, ``loss(pred, batch)``, optional
            ``metrics(pred, batch)``).
        train_set, val_set: map-style datasets returning sample dicts (``set_epoch`` is called
            when they have it).
        exp_dir: run folder (``logs/<experiment>``).
        dist_info, device: from :func:`engine.distributed.init_distributed`.
        panels: optional ``(batch, pred) -> {name: (3, H, W) tensor in [0, 1]}`` for TensorBoard.
        resume: path of a checkpoint to continue from, or None.
        overfit: train on the first batch only (debugging: the loss should go to ~0).
        collate_fn: batch collation.
    """

    def __init__(
        self,
        conf: dict[str, Any],
        model: torch.nn.Module,
        train_set: Dataset,
        val_set: Dataset | None,
        exp_dir: str | Path,
        dist_info: DistInfo,
        device: torch.device,
        panels: Callable[[dict, dict], dict[str, torch.Tensor]] | None = None,
        resume: str | Path | None = None,
        overfit: bool = False,
        collate_fn: Callable = collate,
    ):
        self.conf, self.tconf = conf, conf["train"]
        self.dist, self.device = dist_info, device
        self.exp_dir = Path(exp_dir)
        self.ckpt_dir = self.exp_dir / "checkpoints"
        self.precision = resolve_precision(self.tconf["precision"], device)
        self.panels, self.overfit, self.collate_fn = panels, overfit, collate_fn
        self.train_set, self.val_set = train_set, val_set
        if self.tconf["nan_policy"] not in ("skip", "stop"):
            raise UserError("config key 'train.nan_policy' must be 'skip' or 'stop'")
        if self.tconf["best_mode"] not in ("min", "max"):
            raise UserError("config key 'train.best_mode' must be 'min' or 'max'")

        seed_everything(self.tconf["seed"], dist_info.rank)
        self.model = model.to(device)
        if self.tconf["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.tconf["num_threads"] > 0:
            torch.set_num_threads(self.tconf["num_threads"])
        self.net: torch.nn.Module = self.model
        if dist_info.enabled:
            self.net = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if self.tconf["compile"]:
            # Only the network's forward is compiled; the parameters stay those of
            # self.model, so checkpoints and --resume are the same as without it.
            self.net = torch.compile(self.net)
        self.max_steps = self.tconf["max_steps"]
        if self.tconf["epochs"] > 0:
            per_epoch = len(train_set) // (
                self.tconf["batch_size"] * dist_info.world_size
            )
            self.max_steps = self.tconf["epochs"] * per_epoch
        sched = self.tconf["lr_schedule"]
        self.plateau: PlateauScale | None = None
        if sched["type"] == "plateau":
            self.plateau = PlateauScale(
                sched["gamma"],
                sched["patience"],
                sched["threshold"],
                self.tconf["best_mode"],
                sched["min_lr_ratio"],
            )
        self.build_optimizers()
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=self.precision == "fp16"
        )
        self.step, self.nan_streak = 0, 0
        self.best: float | None = None
        # Cumulative seconds of this process: waiting for batches / whole training steps.
        self.data_wait_s, self.step_time_s = 0.0, 0.0
        self._stop_requested = False

        if len(train_set) < self.tconf["batch_size"] * dist_info.world_size:
            raise UserError(
                f"training set has {len(train_set)} samples, fewer than one global batch "
                f"({self.tconf['batch_size']} x {dist_info.world_size} processes)"
            )
        self.sampler = ResumableSampler(
            len(train_set),
            self.tconf["batch_size"],
            True,
            self.tconf["seed"],
            dist_info,
        )
        self.resumed_from: int | None = None
        if resume is not None:
            self._load(resume)
        self.writer = None
        if dist_info.is_main:
            ensure_writable_dir(self.exp_dir, "log folder")
            from torch.utils.tensorboard import SummaryWriter

            save_config(conf, self.exp_dir / "config.yaml")
            # Events the interrupted run logged after its checkpoint's step are replayed
            # by the resumed run; purging them keeps one curve instead of two overlapping.
            purge = None if self.resumed_from is None else self.resumed_from + 1
            self.writer = SummaryWriter(log_dir=str(self.exp_dir), purge_step=purge)

    # ------------------------------------------------------------ optimisers
    def build_optimizers(self) -> None:
        """Create ``self.optimizer`` and ``self.scheduler`` (before any resume).

        A task with more optimisers (the GAN refiner) overrides this, builds the others
        with :meth:`make_scheduler` and saves them through :meth:`extra_state`.
        """
        self.optimizer = build_optimizer(self.model.parameters(), self.tconf)
        self.scheduler = self.make_scheduler(self.optimizer)

    def make_scheduler(
        self, optimizer: torch.optim.Optimizer
    ) -> torch.optim.lr_scheduler.LambdaLR:
        """The ``train.lr_schedule`` of this run for ``optimizer`` (one step per update)."""
        max_steps = self.max_steps

        def factor(step: int) -> float:
            scale = self.plateau.scale if self.plateau is not None else 1.0
            return lr_factor(step, self.tconf, max_steps) * scale

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def extra_state(self) -> dict[str, Any]:
        """Additional checkpoint entries of a subclass (saved under ``"extra"``)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved (``{}`` for checkpoints without it)."""

    # ------------------------------------------------------------------ data
    def _loader(
        self, dataset: Dataset, sampler: Sampler, workers: int, seed: int = 0
    ) -> DataLoader:
        # A private generator: creating a loader must not consume the global torch RNG, or a
        # resumed run (which creates its loader at another moment) would diverge.
        return DataLoader(
            dataset,
            batch_size=self.tconf["batch_size"],
            sampler=sampler,
            num_workers=workers,
            collate_fn=self.collate_fn,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator().manual_seed(seed),
        )

    def _train_batches(self) -> Iterator[dict[str, Any]]:
        """Endless stream of training batches, resumable at ``self.step``."""
        per_epoch = self.sampler.batches_per_epoch
        epoch, start = divmod(self.step, per_epoch)
        while True:
            if hasattr(self.train_set, "set_epoch"):
                self.train_set.set_epoch(epoch)
            self.sampler.set_epoch(epoch, start)
            loader = self._loader(
                self.train_set, self.sampler, self.tconf["num_workers"], seed=epoch
            )
            for batch in loader:
                yield batch
                if self.overfit:
                    while True:
                        yield batch
            epoch, start = epoch + 1, 0

    # ------------------------------------------------------------- training
    def memory_format(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with its image tensors (4-D) channels-last when ``train.channels_last``."""
        if not self.tconf["channels_last"]:
            return batch
        return {
            k: v.contiguous(memory_format=torch.channels_last)
            if isinstance(v, torch.Tensor) and v.dim() == 4
            else v
            for k, v in batch.items()
        }

    def forward_loss(self, batch: dict[str, Any]):
        """Forward pass and loss under autocast: ``(pred, losses, metrics)``."""
        batch = self.memory_format(batch)
        with autocast(self.device, self.precision):
            pred = self.net(batch)
        losses, metrics = self.model.loss(pred, batch)
        return pred, losses, metrics

    def train_step(
        self, batch: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict, bool]:
        """One optimisation step.

        Returns:
            ``(losses, pred, applied)``: detached loss terms, predictions (for panels) and
            whether the update was applied (False when skipped by the NaN policy).
        """
        self.optimizer.zero_grad(set_to_none=True)
        pred, losses, _ = self.forward_loss(batch)
        self.scaler.scale(losses["total"]).backward()
        self.scaler.unscale_(self.optimizer)
        clip = self.tconf["grad_clip"] if self.tconf["grad_clip"] > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        finite = bool(torch.isfinite(grad_norm)) and bool(
            torch.isfinite(losses["total"])
        )
        if finite or self.precision == "fp16":
            # With fp16 the scaler skips non-finite steps itself and lowers its scale.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        detached = {k: v.detach().float() for k, v in losses.items()}
        detached["grad_norm"] = grad_norm.detach().float()
        return detached, pred, finite

    def _handle_nan(self, applied: bool) -> None:
        if applied:
            self.nan_streak = 0
            return
        self.nan_streak += 1
        message = f"non-finite loss or gradient at step {self.step}; update skipped"
        if (
            self.tconf["nan_policy"] == "stop"
            or self.nan_streak > self.tconf["max_nan_steps"]
        ):
            raise UserError(
                f"{message}; stopping (nan_policy={self.tconf['nan_policy']}, "
                f"{self.nan_streak} in a row). The last checkpoint holds the last good state."
            )
        if self.dist.is_main:
            tqdm.write(f"warning: {message} ({self.nan_streak} in a row)")

    def fit(self) -> dict[str, float]:
        """Train for ``self.max_steps`` steps; returns the last validation metrics."""
        max_steps = self.max_steps
        previous_handler = signal.getsignal(signal.SIGINT)
        if self.dist.is_main:
            signal.signal(signal.SIGINT, self._on_sigint)
        sums: dict[str, float] = defaultdict(float)
        count, wait, t_start, last_val = 0, 0.0, time.perf_counter(), {}
        batches = self._train_batches()
        bar = tqdm(
            total=max_steps,
            initial=self.step,
            desc=self.exp_dir.name,
            disable=not self.dist.is_main,
            dynamic_ncols=True,
        )
        try:
            self.model.train()
            while self.step < max_steps:
                t0 = time.perf_counter()
                batch = next(batches)
                batch = move_to_device(batch, self.device)
                waited = time.perf_counter() - t0
                wait += waited
                self.data_wait_s += waited
                losses, pred, applied = self.train_step(batch)
                with warnings.catch_warnings():
                    # A skipped (NaN) update still advances the schedule, by design.
                    warnings.simplefilter("ignore", UserWarning)
                    self.scheduler.step()
                self.step += 1
                self._handle_nan(applied)
                for k, v in losses.items():
                    sums[k] += float(v)
                count += 1
                self.step_time_s += time.perf_counter() - t0
                bar.update(1)
                if self.step % self.tconf["log_every"] == 0 or self.step == max_steps:
                    elapsed = time.perf_counter() - t_start
                    self._log_train(sums, count, elapsed, wait, bar)
                    sums, count, wait, t_start = (
                        defaultdict(float),
                        0,
                        0.0,
                        time.perf_counter(),
                    )
                if (
                    self.writer is not None
                    and self.panels is not None
                    and (self.step % self.tconf["image_every"] == 0 or self.step == 1)
                ):
                    self._log_panels("train", batch, pred)
                if self.val_set is not None and (
                    self.step % self.tconf["val_every"] == 0 or self.step == max_steps
                ):
                    last_val = self.validate()
                    self._update_best(last_val)
                    self._update_plateau(last_val)
                    self.model.train()
                if self.step % self.tconf["save_every"] == 0 or self.step == max_steps:
                    self.save()
                if self._stop_requested:
                    self.save()
                    raise KeyboardInterrupt
        finally:
            bar.close()
            signal.signal(signal.SIGINT, previous_handler)
            if self.writer is not None:
                self.writer.flush()
            if self.dist.is_main and any(self.ckpt_dir.glob("*.pt")):
                print(f"checkpoints in {self.ckpt_dir}")
        return last_val

    def _on_sigint(self, signum, frame) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        tqdm.write(
            "Ctrl-C: finishing this step and saving a checkpoint (again to abort)"
        )

    def _log_train(self, sums, count, elapsed, wait, bar) -> None:
        reduced = all_reduce_sums({**sums, "_count": count}, self.device)
        n = max(reduced.pop("_count"), 1)
        images = count * self.tconf["batch_size"] * self.dist.world_size
        stats = {k: v / n for k, v in reduced.items()}
        bar.set_postfix(loss=f"{stats.get('total', float('nan')):.4f}", refresh=False)
        if self.writer is None:
            return
        for k, v in stats.items():
            group = "train" if k == "grad_norm" else "train/loss"
            self.writer.add_scalar(f"{group}/{k}", v, self.step)
        self.writer.add_scalar(
            "train/lr", self.optimizer.param_groups[0]["lr"], self.step
        )
        self.writer.add_scalar(
            "perf/images_per_s", images / max(elapsed, 1e-9), self.step
        )
        self.writer.add_scalar(
            "perf/data_wait_share", wait / max(elapsed, 1e-9), self.step
        )

    def _log_panels(self, split: str, batch, pred) -> None:
        with torch.no_grad():
            for name, image in self.panels(batch, pred).items():
                self.writer.add_image(
                    f"{split}/{name}", image.float().clamp(0, 1), self.step
                )

    # ----------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Average loss terms and model metrics over the fixed validation stream."""
        self.model.eval()
        if hasattr(self.val_set, "set_epoch"):
            self.val_set.set_epoch(0)
        n_val = len(self.val_set)
        bs = self.tconf["batch_size"]
        if self.tconf["val_batches"] > 0:
            n_val = min(n_val, self.tconf["val_batches"] * bs * self.dist.world_size)
        indices = list(range(self.dist.rank, n_val, self.dist.world_size))
        loader = self._loader(self.val_set, indices, min(self.tconf["num_workers"], 1))
        sums: dict[str, float] = defaultdict(float)
        batches = 0
        for i, batch in enumerate(loader):
            batch = move_to_device(batch, self.device)
            pred, losses, metrics = self.forward_loss(batch)
            if hasattr(self.model, "metrics"):
                metrics = {**metrics, **self.model.metrics(pred, batch)}
            for k, v in losses.items():
                sums[f"loss/{k}"] += float(v)
            for k, v in metrics.items():
                sums[k] += float(v)
            batches += 1
            if i == 0 and self.writer is not None and self.panels is not None:
                self._log_panels("val", batch, pred)
        reduced = all_reduce_sums({**sums, "_batches": batches}, self.device)
        total = max(reduced.pop("_batches"), 1)
        results = {k: v / total for k, v in reduced.items()}
        if self.writer is not None:
            for k, v in results.items():
                self.writer.add_scalar(f"val/{k}", v, self.step)
            summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(results.items()))
            tqdm.write(f"[step {self.step}] validation: {summary}")
        return results

    def _update_best(self, results: dict[str, float]) -> None:
        key = self.tconf["best_metric"]
        if key not in results:
            if self.dist.is_main:
                tqdm.write(f"warning: best_metric '{key}' not in {sorted(results)}")
            return
        value = results[key]
        better = (
            self.best is None
            or (self.tconf["best_mode"] == "min" and value < self.best)
            or (self.tconf["best_mode"] == "max" and value > self.best)
        )
        if better and math.isfinite(value):
            self.best = value
            if self.dist.is_main:
                atomic_torch_save(self._state(), self.ckpt_dir / "best.pt")

    def _update_plateau(self, results: dict[str, float]) -> None:
        key = self.tconf["best_metric"]
        if self.plateau is None or key not in results:
            return
        if self.plateau.update(results[key]) and self.dist.is_main:
            tqdm.write(
                f"[step {self.step}] {key} has not improved for "
                f"{self.plateau.patience} validations: learning rate x "
                f"{self.plateau.scale:.3g} of the schedule"
            )

    # ---------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        state = self._base_state()
        # Written only when used, so other runs' checkpoints keep their exact layout.
        if self.plateau is not None:
            state["plateau"] = self.plateau.state_dict()
        extra = self.extra_state()
        if extra:
            state["extra"] = extra
        return state

    def _base_state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best": self.best,
            "nan_streak": self.nan_streak,
            "rng": rng_state(),
            "config": to_plain(self.conf),
        }

    def release_distributed(self) -> None:
        """Drop the DDP wrapper and its process group now (see ``engine.cli.train``)."""
        if self.net is not self.model:
            self.net = self.model
            gc.collect()

    def save(self) -> Path | None:
        """Write ``last_<step>.pt`` atomically and prune to ``keep_last`` (rank 0 only)."""
        if not self.dist.is_main:
            return None
        path = self.ckpt_dir / f"last_{self.step:08d}.pt"
        atomic_torch_save(self._state(), path)
        for old in sorted(self.ckpt_dir.glob("last_*.pt"))[: -self.tconf["keep_last"]]:
            old.unlink()
        return path

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
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise UserError(
                f"checkpoint '{path}': its optimiser/scheduler/RNG state does not fit "
                f"this run ({first})"
            ) from None
        self.step, self.best = int(ckpt["step"]), ckpt.get("best")
        self.nan_streak = ckpt.get("nan_streak", 0)
        if self.plateau is not None and "plateau" in ckpt:
            self.plateau.load_state_dict(ckpt["plateau"])
        self.load_extra_state(ckpt.get("extra", {}))
        self.resumed_from = self.step
        if self.dist.is_main:
            print(f"resumed from step {self.step} ({path})")
        if self.dist.enabled:
            dist.barrier()
