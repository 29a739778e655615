"""DistributedDataParallel on two Gloo processes (the CPU stand-in for NCCL on GPUs):
SuperPoint with a descriptor head on single images (parameters left unused), validation with
fewer batches than processes, Ctrl-C on one rank stopping every rank after the same step,
and each rank resuming its own random state, bit-exact against an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.distributed import DistInfo, cleanup_distributed, init_distributed
from engine.state import latest_checkpoint, seed_everything
from engine.trainer import Trainer
from models import build_model
from tests.helpers import SquaresDataset, free_port, set_torchrun_env, tiny_conf

SUPERPOINT = {
    "name": "superpoint",
    "channels": [8, 8, 16, 16],
    "head_channels": 16,
    "descriptor_dim": 16,
}


def _trainer(out: Path, name: str, dist_info: DistInfo, resume=None) -> Trainer:
    conf = tiny_conf(max_steps=4, batch_size=2, val_every=2, save_every=100)
    conf["model"] = dict(SUPERPOINT)
    seed_everything(0, dist_info.rank)
    model = build_model(conf["model"])
    # One validation sample for two processes: rank 1 validates nothing.
    trainer = Trainer(
        conf,
        model,
        SquaresDataset(8),
        SquaresDataset(1),
        out / name,
        dist_info,
        torch.device("cpu"),
        resume=resume,
    )
    original = model.loss

    def loss(pred, data):
        # Random draws that differ per rank, so each rank's state is its own.
        np.random.rand(dist_info.rank + 1)
        torch.rand(dist_info.rank + 1)
        random.random()
        if trainer.interrupt_at == (dist_info.rank, trainer.step + 1):
            os.kill(os.getpid(), signal.SIGINT)
        return original(pred, data)

    model.loss = loss
    trainer.interrupt_at = None
    return trainer


def _rng_fingerprint() -> list:
    return [
        torch.get_rng_state().tolist(),
        np.random.get_state()[1].tolist(),
        random.getstate()[1],
    ]


def _worker(rank: int, port: int, out_dir: str) -> None:
    set_torchrun_env(rank, port)
    # A broken collective fails the test within a minute instead of hanging it.
    dist.init_process_group(
        "gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    dist_info, _ = init_distributed("cpu")
    torch.set_num_threads(1)
    out = Path(out_dir)
    trainers = []
    try:
        straight = _trainer(out, "straight", dist_info)
        trainers.append(straight)
        straight.fit()

        trainer = _trainer(out, "run", dist_info)
        trainers.append(trainer)
        # Ctrl-C reaches rank 1 during step 3 only; rank 0 must stop with it.
        trainer.interrupt_at = (1, 3)
        try:
            trainer.fit()
            stopped = None
        except KeyboardInterrupt:
            stopped = trainer.step
        at_stop = _rng_fingerprint()

        resumed = _trainer(out, "run", dist_info, latest_checkpoint(out / "run"))
        trainers.append(resumed)
        restored = _rng_fingerprint() == at_stop
        resumed.fit()
        same = all(
            torch.equal(a, b)
            for a, b in zip(straight.model.parameters(), resumed.model.parameters())
        )
        torch.save(
            {"stopped": stopped, "restored": restored, "same": same},
            out / f"rank{rank}.pt",
        )
    finally:
        for t in trainers:
            t.release_distributed()
        cleanup_distributed()


def test_ddp_unused_head_short_validation_ctrl_c_and_resume(tmp_path, capsys):
    port = free_port()
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    results = [
        torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)
    ]
    assert [r["stopped"] for r in results] == [3, 3], "every rank stops after step 3"
    assert all(r["restored"] for r in results), "each rank resumes its own RNG state"
    assert all(r["same"] for r in results), "resumed weights differ from a straight run"
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("last_*"))
    assert ckpts == ["last_00000003.pt", "last_00000004.pt"]

    # The two-process checkpoint resumes in one process, with a notice.
    single = _trainer(
        tmp_path, "single", DistInfo(), tmp_path / "run/checkpoints/last_00000003.pt"
    )
    assert single.step == 3
    assert "holds the random states of 2 process(es), this run has 1" in (
        capsys.readouterr().out
    )
