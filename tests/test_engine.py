import pytest
import torch
import torch.multiprocessing as mp

from engine.data import ResumableSampler
from engine.distributed import DistInfo, cleanup_distributed, init_distributed
from engine.state import latest_checkpoint, lr_factor, seed_everything
from engine.trainer import Trainer
from models import build_model
from tests.helpers import (
    SquaresDataset,
    free_port,
    max_weight_difference,
    set_torchrun_env,
    tiny_conf,
)
from utils.errors import UserError
from utils.io import load_checkpoint


def make_trainer(tmp_path, name, resume=None, dist_info=None, **train):
    conf = tiny_conf(**train)
    seed_everything(conf["train"]["seed"])
    model = build_model(conf["model"])
    return Trainer(
        conf,
        model,
        SquaresDataset(48),
        SquaresDataset(8),
        tmp_path / name,
        dist_info or DistInfo(),
        torch.device("cpu"),
        resume=resume,
    )


def test_resume_continues_exactly(tmp_path):
    straight = make_trainer(tmp_path, "a", max_steps=4)
    straight.fit()
    first = make_trainer(tmp_path, "b", max_steps=2)
    first.fit()
    ckpt = latest_checkpoint(tmp_path / "b")
    assert ckpt.name == "last_00000002.pt"
    resumed = make_trainer(tmp_path, "b", resume=ckpt, max_steps=4)
    assert resumed.step == 2
    resumed.fit()
    assert resumed.step == 4
    assert max_weight_difference(straight.model, resumed.model) == 0.0
    saved = load_checkpoint(latest_checkpoint(tmp_path / "b"))
    assert saved["step"] == 4 and saved["config"]["train"]["max_steps"] == 4
    assert (tmp_path / "b" / "checkpoints" / "best.pt").is_file()
    assert any(
        p.name.startswith("events.out.tfevents") for p in (tmp_path / "b").iterdir()
    )


def test_keep_last_prunes_old_checkpoints(tmp_path):
    make_trainer(tmp_path, "k", max_steps=6, save_every=1, keep_last=2).fit()
    names = sorted(p.name for p in (tmp_path / "k" / "checkpoints").glob("last_*.pt"))
    assert names == ["last_00000005.pt", "last_00000006.pt"]


def test_nan_policy_skips_then_stops(tmp_path):
    trainer = make_trainer(tmp_path, "n", max_steps=3, max_nan_steps=1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    original = trainer.model.loss

    def nan_loss(pred, data):
        losses, metrics = original(pred, data)
        return {k: v * float("nan") for k, v in losses.items()}, metrics

    trainer.model.loss = nan_loss
    with pytest.raises(UserError, match="non-finite loss"):
        trainer.fit()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), (
        "NaN steps must not update"
    )
    assert trainer.step == 2 and trainer.nan_streak == 2


def test_mismatched_checkpoint_is_refused(tmp_path):
    make_trainer(tmp_path, "m", max_steps=2).fit()
    conf = tiny_conf(max_steps=2)
    conf["model"]["channels"] = [8, 8, 16, 32]
    model = build_model(conf["model"])
    with pytest.raises(UserError, match="does not match the model"):
        Trainer(
            conf,
            model,
            SquaresDataset(48),
            None,
            tmp_path / "m2",
            DistInfo(),
            torch.device("cpu"),
            resume=latest_checkpoint(tmp_path / "m"),
        )


def test_sampler_shards_and_resumes():
    full = list(ResumableSampler(20, 2, True, 0, DistInfo(0, 1)))
    ranks = [ResumableSampler(20, 2, True, 0, DistInfo(r, 2)) for r in range(2)]
    shards = [list(s) for s in ranks]
    assert sorted(shards[0] + shards[1]) == sorted(full[:20]) and not set(
        shards[0]
    ) & set(shards[1])
    late = ResumableSampler(20, 2, True, 0, DistInfo(0, 1))
    late.set_epoch(0, start_batch=3)
    assert list(late) == full[6:]


def test_lr_schedules():
    conf = {
        "lr_schedule": {
            "type": "cosine",
            "warmup_steps": 10,
            "min_lr_ratio": 0.1,
            "milestones": [],
            "gamma": 0.1,
        }
    }
    assert lr_factor(0, conf, 110) == pytest.approx(0.1)
    assert lr_factor(10, conf, 110) == pytest.approx(1.0)
    assert lr_factor(110, conf, 110) == pytest.approx(0.1)
    conf["lr_schedule"].update(type="multistep", milestones=[50, 80], warmup_steps=0)
    assert [lr_factor(s, conf, 100) for s in (49, 50, 80)] == pytest.approx(
        [1, 0.1, 0.01]
    )


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    set_torchrun_env(rank, port)
    dist_info, device = init_distributed("cpu")
    try:
        from pathlib import Path

        trainer = make_trainer(
            Path(out_dir), "ddp", dist_info=dist_info, max_steps=3, batch_size=2
        )
        trainer.fit()
        torch.save(trainer.model.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        cleanup_distributed()


def test_two_process_gloo_ddp_ranks_agree(tmp_path):
    port = free_port()
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    weights = [
        torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    init = make_trainer(tmp_path, "init", max_steps=3, batch_size=2).model.state_dict()
    assert any(not torch.equal(init[k], weights[0][k]) for k in init), (
        "training changed nothing"
    )
    ckpts = sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir())
    assert ckpts == ["best.pt", "last_00000002.pt", "last_00000003.pt"]
