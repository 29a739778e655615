"""Command-line plumbing shared by every ``train_*.py``.

``train_x.py CONFIG [--exp NAME] [--resume [CKPT]] [--device ...] [--precision ...]
[--overfit] [--dry-run] [key.sub=value ...]``. This module parses that, resolves the config
(defaults in code < YAML file < overrides), picks the run folder ``<logdir>/<exp>`` and refuses to
silently overwrite a run that already has checkpoints.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from engine.devices import add_device_argument, add_precision_argument
from engine.distributed import cleanup_distributed, init_distributed
from engine.reproducibility import configure_determinism
from engine.state import (
    check_training_checkpoint,
    latest_checkpoint,
    resumable_checkpoint,
    seed_everything,
)
from engine.trainer import Trainer
from utils.arguments import OVERRIDE, ArgumentParser
from utils.config import load_config
from utils.errors import UserError, run_cli
from utils.io import load_checkpoint

LATEST = "latest"
"""``--resume`` without a file: the run's newest readable checkpoint."""


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=prog,
        description=description,
        epilog="Overrides use dotted keys, e.g. train.lr=1e-4 data.image_size=[120,160]. "
        "Run folder: <logdir>/<exp> (config.yaml, TensorBoard events, checkpoints/).",
    )
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_overrides("config overrides, e.g. train.lr=5e-4")
    parser.add_argument(
        "--exp", help="experiment name (default: the config file's stem)"
    )
    parser.add_argument("--logdir", default="logs", help="root folder of runs")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=LATEST,
        default=None,
        metavar="CKPT",
        help="continue a run: from its newest readable checkpoint (an unreadable one is "
        "reported and skipped), or from the given file",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh even if the run has checkpoints",
    )
    add_device_argument(parser, "train.device")
    add_precision_argument(parser, None, "train.precision", "autocast of training")
    parser.add_argument(
        "--overfit", action="store_true", help="train on one batch only (debugging)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="2 steps and 1 validation batch in a temporary folder, nothing kept",
    )
    return parser


def resolve_run(
    args: argparse.Namespace,
    defaults: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]],
) -> tuple[dict[str, Any], Path, Path | None]:
    """Resolve ``(config, run folder, checkpoint to resume from or None)``."""
    overrides: list[str] = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.precision:
        overrides.append(f"train.precision={args.precision}")
    if args.dry_run:
        overrides += [
            "train.max_steps=2",
            "train.val_batches=1",
            "train.val_every=2",
            "train.log_every=1",
        ]
    conf = load_config(args.config, overrides, defaults)
    exp = args.exp or Path(args.config).stem
    exp_dir = Path(args.logdir) / exp
    if args.dry_run:
        exp_dir = Path(tempfile.mkdtemp(prefix=f"dryrun_{exp}_"))
    resume: Path | None = None
    if args.resume == LATEST:
        resume, _ = resumable_checkpoint(exp_dir, _warn_rank0)
    elif args.resume is not None:
        # Checked now, before data and model are built, so a bad file costs nothing.
        resume = Path(args.resume)
        check_training_checkpoint(load_checkpoint(resume), resume)
    elif latest_checkpoint(exp_dir) is not None:
        if args.overwrite:
            # A fresh run: the old checkpoints and TensorBoard curves go (rank 0 deletes).
            if os.environ.get("RANK", "0") == "0":
                stale = [*(exp_dir / "checkpoints").glob("*.pt")]
                stale += exp_dir.glob("events.out.tfevents.*")
                for old in stale:
                    old.unlink(missing_ok=True)
            return conf, exp_dir, None
        raise UserError(
            f"run folder '{exp_dir}' already holds checkpoints; pass --resume to continue, "
            "--overwrite to start afresh, or --exp NAME for a new run"
        )
    return conf, exp_dir, resume


def _warn_rank0(message: str) -> None:
    # resolve_run runs before the process group exists; torchrun's RANK says who speaks.
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


def _resume_takes_no_file(token: str) -> bool:
    """Whether the word after ``--resume`` is not meant as its checkpoint file.

    ``--resume`` takes an optional file, so argparse would swallow the next word: an
    override (``train.max_steps=310``) or the config file must stay what they are.
    """
    if Path(token).is_file() and not token.endswith((".yaml", ".yml")):
        return False
    return bool(OVERRIDE.match(token)) or token.endswith((".yaml", ".yml"))


def parse(
    argv: Sequence[str] | None, prog: str, description: str
) -> argparse.Namespace:
    """Parse a ``train_*.py`` command line (see the module docstring).

    ``--resume`` followed by ``key=value`` or a YAML file resumes from the newest
    checkpoint and keeps that word as an override or the config; ``--resume FILE``
    resumes from FILE.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    for i, word in enumerate(words[:-1]):
        if word == "--resume" and _resume_takes_no_file(words[i + 1]):
            words[i] = f"--resume={LATEST}"
    return build_parser(prog, description).parse_intermixed_args(words)


def train(
    args: argparse.Namespace,
    conf: dict[str, Any],
    exp_dir: Path,
    resume: Path | None,
    build: Callable[[dict[str, Any]], tuple[Any, Any, Any]],
    panels: Callable | None = None,
    trainer_cls: type[Trainer] = Trainer,
) -> Trainer:
    """Join the process group, build ``(model, train_set, val_set)`` and train.

    ``build(conf)`` is the task's part; everything else is shared. The seed is set before it
    runs, so a run's initial weights depend only on ``train.seed``. ``trainer_cls`` is a
    :class:`Trainer` subclass for tasks with their own step (the GAN refiner).
    """
    # Before any CUDA work: cuBLAS reads its deterministic workspace setting when it starts.
    configure_determinism(conf["train"]["deterministic"])
    dist_info, device = init_distributed(conf["train"]["device"])
    trainer = None
    try:
        seed_everything(conf["train"]["seed"], dist_info.rank)
        init = check_init_weights(conf, resume)
        model, train_set, val_set = build(conf)
        if init:
            init_from(model, init, dist_info.rank)
        trainer = trainer_cls(
            conf,
            model,
            train_set,
            val_set,
            exp_dir,
            dist_info,
            device,
            panels=panels,
            resume=resume,
            overfit=args.overfit,
        )
        trainer.fit()
        if dist_info.enabled:
            # Ranks leave together: none tears its connections down while rank 0 still saves.
            dist.barrier()
        return trainer
    finally:
        if trainer is not None:
            # Freed at interpreter exit instead, a Gloo group can abort its rank after a
            # successful run ("terminate called without an active exception").
            trainer.release_distributed()
        cleanup_distributed()


def check_init_weights(conf: dict[str, Any], resume: Path | None) -> str | None:
    """The ``train.init_weights`` a fresh run starts from (None when resuming or unset),
    read once so that a missing or corrupt file fails before any data is built."""
    init = None if resume else conf["train"]["init_weights"]
    if init and not Path(init).is_file():
        raise UserError(f"train.init_weights: '{init}' does not exist")
    if init:
        load_checkpoint(init)
    return init


def init_from(model: Any, path: str, rank: int = 0) -> None:
    """Load ``train.init_weights`` into a fresh model and say what it covered.

    The model reads the file itself (``load_initial_weights``, see ``models.base_model``): the
    engine knows no weight format.
    """
    if not hasattr(model, "load_initial_weights"):
        raise UserError(
            f"train.init_weights: {type(model).__name__} cannot start from a weights file"
        )
    fresh = model.load_initial_weights(path)
    if rank == 0:
        total = len(model.state_dict())
        note = f"initialised {total - len(fresh)}/{total} tensors from {path}"
        if fresh:
            prefixes = sorted({k.rsplit(".", 1)[0] for k in fresh})
            note += f"; new: {', '.join(prefixes)}"
        print(note)


def main_from(run: Callable[[Sequence[str] | None], Any], argv, prog: str) -> int:
    """Exit code of ``run(argv)``: 0, or the one-line error handling of ``run_cli``."""

    def job() -> int:
        run(argv)
        return 0

    return run_cli(job, prog)
