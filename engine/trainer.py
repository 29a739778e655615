"""The one training engine shared by every ``train_*.py``.

A task hands the :class:`Trainer` a model following ``models.base_model.BaseModel`` (``forward``
and ``loss``), a training and a validation dataset, and optionally a function drawing image
panels. The engine owns everything else:

* progress bar with ETA (tqdm) and TensorBoard scalars: every loss term, learning rate,
  images/s and the share of step time spent waiting for data; image panels;
* validation every ``val_every`` steps on a fixed stream (the validation set at epoch 0);
* checkpoints written atomically, the last ``keep_last`` kept plus ``best.pt`` by a metric;
* ``--resume``: model, optimiser, scheduler, gradient scaler, step, best value and the random
  state of every rank, with data order and augmentation fixed by (seed, epoch, index) so
  resuming replays the batches an uninterrupted run would see (bit-exact where
  ``engine.reproducibility`` says);
* Ctrl-C (on any rank: torchrun passes it to every process) finishes the current step on
  every rank, saves a checkpoint and exits (a second Ctrl-C aborts);
* NaN/inf policy (``nan_policy``, ``engine.step_policy``): ``skip`` drops the update of a
  step whose loss or gradient is not finite and stops after ``max_nan_steps`` such steps in
  a row, without saving the broken state; ``stop`` stops at the first one; fp16's ordinary
  gradient-scaler overflows are not such steps;
* devices, autocast (bf16/fp16), cuDNN autotuning for fixed-size batches, deterministic
  kernels (``deterministic``) and DistributedDataParallel through ``torchrun``
  (``find_unused_parameters``).

Tasks needing a different step (e.g. a GAN alternating two optimisers) subclass
:class:`Trainer` and override :meth:`Trainer.train_step`, :meth:`Trainer.build_optimizers`
(more optimisers, each with :meth:`Trainer.make_scheduler`) and :meth:`Trainer.extra_state` /
:meth:`Trainer.load_extra_state` (what else a checkpoint holds); a ``train_step`` judges its
update with :meth:`Trainer.judge_step` (which also carries Ctrl-C across ranks).
"""

from __future__ import annotations

import gc
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

from engine.checkpointing import CheckpointMixin
from engine.data import ResumableSampler, collate, make_loader
from engine.devices import autocast, move_to_device, resolve_precision
from engine.distributed import DistInfo, reduce_means
from engine.reproducibility import Autotuning, deterministic_error
from engine.state import PlateauScale, build_optimizer, lr_factor, seed_everything
from engine.step_policy import (
    NanPolicy,
    StepVerdict,
    apply_update,
    judge_step,
    step_outcome,
)
from utils.config import save_config
from utils.errors import UserError
from utils.io import ensure_writable_dir

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
    # Deterministic kernels and cuBLAS workspace, for bit-exact CUDA runs and resumes
    # (slower; an operation without a deterministic CUDA kernel stops the run).
    "deterministic": False,
    # cuDNN autotuning: auto = on for CUDA training while batches keep one size, off with
    # deterministic; true / false force it.
    "cudnn_benchmark": "auto",
    # DDP: auto = what the model declares (may_leave_parameters_unused, e.g. SuperPoint's
    # descriptor head on single images); true / false force it.
    "find_unused_parameters": "auto",
    "channels_last": False,
    # CPU/GPU speed switches (docs/speed.md): torch.compile of the network (inductor), and
    # the number of intra-op threads of the training process (0: PyTorch's default, one per
    # core).
    "compile": False,
    "num_threads": 0,
    # Weights to start a fresh run from (a train_*.py checkpoint or a published SuperPoint
    # file); parameters the file lacks keep their initialisation. Ignored by --resume.
    "init_weights": None,
}


class Trainer(CheckpointMixin):
    """Runs training for one task (see module docstring).

    Args:
        conf: the full resolved config (its ``train`` section drives the engine).
        model: a ``BaseModel`` (``forward(batch) -> pred``, ``loss(pred, batch)``, optional
            ``metrics(pred, batch)``, optional ``may_leave_parameters_unused(sample)``).
        train_set, val_set: map-style datasets returning sample dicts (``set_epoch`` is called
            when they have it; ``worker_start_method``, when set, is the start method of
            their loader workers).
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
        self.nan_policy = NanPolicy(
            self.tconf["nan_policy"], self.tconf["max_nan_steps"]
        )
        if self.tconf["best_mode"] not in ("min", "max"):
            raise UserError("config key 'train.best_mode' must be 'min' or 'max'")
        self.autotuning = Autotuning(
            self.tconf["deterministic"], self.tconf["cudnn_benchmark"], device
        )

        seed_everything(self.tconf["seed"], dist_info.rank)
        self.model = model.to(device)
        if self.tconf["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.tconf["num_threads"] > 0:
            torch.set_num_threads(self.tconf["num_threads"])
        self.net: torch.nn.Module = self.model
        find_unused = self._find_unused_parameters()
        if dist_info.enabled:
            self.net = DistributedDataParallel(
                self.model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=find_unused,
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
        self.step = 0
        self.best: float | None = None
        # Cumulative seconds of this process: waiting for batches / whole training steps.
        self.data_wait_s, self.step_time_s = 0.0, 0.0
        self._stop_requested = False
        self._stop_agreed: bool | None = None

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

    @property
    def nan_streak(self) -> int:
        """Non-finite steps in a row so far (``train.max_nan_steps`` bounds it)."""
        return self.nan_policy.streak

    def _find_unused_parameters(self) -> bool:
        """``train.find_unused_parameters`` for DDP; ``auto`` asks the model about the
        first training sample (a SuperPoint with a descriptor head on single images
        leaves that head without gradient, which DDP must be told)."""
        setting = self.tconf["find_unused_parameters"]
        if isinstance(setting, bool):
            return setting
        if setting != "auto":
            raise UserError(
                "config key 'train.find_unused_parameters' must be auto, true or false, "
                f"got {setting!r}"
            )
        declare = getattr(self.model, "may_leave_parameters_unused", None)
        if not self.dist.enabled or declare is None:
            return False
        return bool(declare(self.train_set[0]))

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
        return make_loader(
            dataset,
            sampler,
            self.tconf["batch_size"],
            workers,
            self.collate_fn,
            self.device,
            seed,
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

    def judge_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> StepVerdict:
        """:func:`engine.step_policy.judge_step` of this step, carrying this rank's Ctrl-C
        to every rank; a ``train_step`` calls it once, after unscaling and clipping."""
        verdict = judge_step(loss, grad_norm, self._stop_requested)
        self._stop_agreed = verdict.stop
        return verdict

    def train_step(
        self, batch: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict, str]:
        """One optimisation step.

        Returns:
            ``(losses, pred, outcome)``: detached loss terms (on the device), predictions
            (for panels) and the step's outcome (``engine.step_policy``: ``applied``,
            ``overflow`` or ``nonfinite``).
        """
        self.optimizer.zero_grad(set_to_none=True)
        pred, losses, _ = self.forward_loss(batch)
        self.scaler.scale(losses["total"]).backward()
        self.scaler.unscale_(self.optimizer)
        clip = self.tconf["grad_clip"] if self.tconf["grad_clip"] > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        verdict = self.judge_step(losses["total"], grad_norm)
        apply_update(self.optimizer, self.scaler, verdict)
        self.scaler.update()
        detached = {k: v.detach().float() for k, v in losses.items()}
        detached["grad_norm"] = grad_norm.detach().float()
        return detached, pred, step_outcome(verdict, self.scaler)

    def _agreed_stop(self) -> bool:
        """Whether any rank got Ctrl-C (agreed in :meth:`judge_step`, or reduced here for a
        ``train_step`` that did not call it)."""
        agreed, self._stop_agreed = self._stop_agreed, None
        if agreed is not None:
            return agreed
        if not self.dist.enabled:
            return self._stop_requested
        flag = torch.tensor([float(self._stop_requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def fit(self) -> dict[str, float]:
        """Train for ``self.max_steps`` steps; returns the last validation metrics."""
        previous_handler = signal.getsignal(signal.SIGINT)
        # Every rank: torchrun hands Ctrl-C to each process, and each must finish its step.
        signal.signal(signal.SIGINT, self._on_sigint)
        bar = tqdm(
            total=self.max_steps,
            initial=self.step,
            desc=self.exp_dir.name,
            disable=not self.dist.is_main,
            dynamic_ncols=True,
        )
        try:
            return self._fit(bar)
        except RuntimeError as err:
            error = deterministic_error(err, self.device)
            if error is None or not self.tconf["deterministic"]:
                raise
            raise error from None
        finally:
            bar.close()
            signal.signal(signal.SIGINT, previous_handler)
            if self.writer is not None:
                self.writer.flush()
            if self.dist.is_main and any(self.ckpt_dir.glob("*.pt")):
                print(f"checkpoints in {self.ckpt_dir}")

    def _fit(self, bar: tqdm) -> dict[str, float]:
        max_steps, tconf = self.max_steps, self.tconf
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = defaultdict(int)
        wait, t_start, last_val = 0.0, time.perf_counter(), {}
        batches = self._train_batches()
        self.model.train()
        while self.step < max_steps:
            t0 = time.perf_counter()
            batch = next(batches)
            batch = move_to_device(batch, self.device)
            waited = time.perf_counter() - t0
            wait += waited
            self.data_wait_s += waited
            note = self.autotuning.watch(batch)
            if note and self.dist.is_main:
                tqdm.write(note)
            losses, pred, outcome = self.train_step(batch)
            with warnings.catch_warnings():
                # A skipped (NaN) update still advances the schedule, by design.
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
            self.step += 1
            warning = self.nan_policy.record(outcome, self.step)
            if warning and self.dist.is_main:
                tqdm.write(warning)
            # Summed on the device: read back once per log_every steps, not per step.
            for k, v in losses.items():
                sums[k] = sums[k] + v.double() if k in sums else v.double()
                counts[k] += 1
            stop = self._agreed_stop()
            self.step_time_s += time.perf_counter() - t0
            bar.update(1)
            if self.step % tconf["log_every"] == 0 or self.step == max_steps:
                elapsed = time.perf_counter() - t_start
                self._log_train(sums, counts, elapsed, wait, bar)
                sums, counts, wait = {}, defaultdict(int), 0.0
                t_start = time.perf_counter()
            if (
                self.writer is not None
                and self.panels is not None
                and (self.step % tconf["image_every"] == 0 or self.step == 1)
            ):
                self._log_panels("train", batch, pred)
            if self.val_set is not None and (
                self.step % tconf["val_every"] == 0 or self.step == max_steps
            ):
                last_val = self.validate()
                self._update_best(last_val)
                self._update_plateau(last_val)
                self.model.train()
            if stop or self.step % tconf["save_every"] == 0 or self.step == max_steps:
                self.save()
            if stop:
                if self.dist.enabled:
                    # No rank leaves while rank 0 is still writing.
                    dist.barrier()
                raise KeyboardInterrupt
        return last_val

    def _on_sigint(self, signum, frame) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        if self.dist.is_main:
            tqdm.write(
                "Ctrl-C: finishing this step and saving a checkpoint (again to abort)"
            )

    def _log_train(self, sums, counts, elapsed, wait, bar) -> None:
        stats = reduce_means(sums, counts, self.device)
        steps = max(counts.values(), default=0)
        images = steps * self.tconf["batch_size"] * self.dist.world_size
        bar.set_postfix(loss=f"{stats.get('total', float('nan')):.4f}", refresh=False)
        overflows = self.nan_policy.take_overflows()
        if self.writer is None:
            return
        for k, v in stats.items():
            group = "train" if k == "grad_norm" else "train/loss"
            self.writer.add_scalar(f"{group}/{k}", v, self.step)
        self.writer.add_scalar(
            "train/lr", self.optimizer.param_groups[0]["lr"], self.step
        )
        if self.scaler.is_enabled():
            self.writer.add_scalar("train/fp16_overflow_skips", overflows, self.step)
            self.writer.add_scalar(
                "train/grad_scale", self.scaler.get_scale(), self.step
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
        """Average loss terms and model metrics over the fixed validation stream.

        Ranks share the stream; one with no batch of it (a stream shorter than the number
        of processes) still takes part in the reduction, with zero counts.
        """
        self.model.eval()
        if hasattr(self.val_set, "set_epoch"):
            self.val_set.set_epoch(0)
        n_val = len(self.val_set)
        bs = self.tconf["batch_size"]
        if self.tconf["val_batches"] > 0:
            n_val = min(n_val, self.tconf["val_batches"] * bs * self.dist.world_size)
        indices = list(range(self.dist.rank, n_val, self.dist.world_size))
        loader = self._loader(self.val_set, indices, min(self.tconf["num_workers"], 1))
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = defaultdict(int)

        def add(key: str, value: Any) -> None:
            value = torch.as_tensor(value, dtype=torch.float64, device=self.device)
            sums[key] = sums[key] + value if key in sums else value
            counts[key] += 1

        for i, batch in enumerate(loader):
            batch = move_to_device(batch, self.device)
            pred, losses, metrics = self.forward_loss(batch)
            if hasattr(self.model, "metrics"):
                metrics = {**metrics, **self.model.metrics(pred, batch)}
            for k, v in losses.items():
                add(f"loss/{k}", v.detach())
            for k, v in metrics.items():
                add(k, v.detach() if isinstance(v, torch.Tensor) else v)
            if i == 0 and self.writer is not None and self.panels is not None:
                self._log_panels("val", batch, pred)
        results = reduce_means(sums, counts, self.device)
        if self.writer is not None:
            for k, v in results.items():
                self.writer.add_scalar(f"val/{k}", v, self.step)
            summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(results.items()))
            tqdm.write(f"[step {self.step}] validation: {summary}")
        return results

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

    def release_distributed(self) -> None:
        """Drop the DDP wrapper and its process group now (see ``engine.cli.train``)."""
        if self.net is not self.model:
            self.net = self.model
            gc.collect()
